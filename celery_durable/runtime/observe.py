"""Where the runtime calls telemetry: one call per place, nothing done when it is off.

The runtime's modules call these functions at a few points (a pass's commit, a step's
run, a tick, a start); each asks the :class:`~celery_durable.runtime.durable.Durable`
for its tracing and metrics hooks (``None`` when off: ``durable_tracing`` /
``durable_metrics``) and returns at once when there are none, so an app without
telemetry pays an attribute read per call.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from celery.exceptions import Retry
from celery.signals import task_postrun, task_prerun

from celery_durable.engine.commands import Decision
from celery_durable.engine.journal import Event, Instance, Kind, Status
from celery_durable.runtime.ids import parse_step_task_id
from celery_durable.telemetry import logs
from celery_durable.telemetry.logs import log_context

if TYPE_CHECKING:
    from celery_durable.runtime.durable import Durable
    from celery_durable.stores.base import Commit

__all__ = ["committed", "first_committed", "log_context", "publishing", "step_attempt", "ticked"]

_ENDED = {
    Status.COMPLETED: "completed",
    Status.FAILED: "failed",
    Status.STUCK: "stuck",
    Status.CANCELLED: "cancelled",
}


def committed(
    durable: Durable,
    instance: Instance,
    events: Sequence[Event],
    commit: Commit,
    decision: Decision,
    resent: Sequence[Event],
    now: datetime,
) -> None:
    """A pass's commit won: export the spans it completes and count what it did.

    Args:
        instance: the instance as the pass read it.
        events: the journal as the pass saw it (outcomes written in).
        commit: what was committed.
        decision: the pass's decision.
        resent: the steps this pass sends again.
        now: the pass's time.
    """
    metrics = durable.metrics
    if metrics is not None:
        if instance.status is Status.PENDING and decision.status is not Status.PENDING:
            metrics.started(instance.workflow)
        ending = _ENDED.get(decision.status)
        if ending is not None and decision.status is not instance.status:
            metrics.ended(instance.workflow, ending)
        for event in resent:
            metrics.resent("dead_worker" if event.started_at is not None else "lost_message")
        lost = sum(
            1
            for e in commit.outcomes
            if e.kind is Kind.STEP and e.failure is not None and e.failure.type == "StepLost"
        )
        metrics.resent("step_lost", lost)
    tracing = durable.tracing
    if tracing is not None and instance.trace_context is not None:
        journal = [*events, *(e for e in commit.new_events if e.seq >= len(events))]
        tracing.committed(
            instance,
            journal,
            [*commit.new_events, *commit.outcomes],
            decision.status,
            decision.failure,
            decision.restart_input is not None,
            now,
        )


def first_committed(durable: Durable, instance: Instance) -> None:
    """A new instance was stored with its first pass (``durable_start_in_caller``)."""
    metrics = durable.metrics
    if metrics is not None:
        metrics.started(instance.workflow)


def publishing(durable: Durable, instance: Instance) -> Any:
    """A context in which a pass publishes its messages: the run's span is current (so
    ``opentelemetry-instrumentation-celery``'s ``apply_async`` spans join its trace)."""
    tracing = durable.tracing
    if tracing is None or instance.trace_context is None:
        return _NOTHING
    return tracing.attached(instance)


@contextmanager
def step_attempt(
    durable: Durable,
    journal: tuple[Instance, list[Event]],
    seq: int,
    name: str,
    started_at: datetime,
    request: Any = None,
) -> Iterator[None]:
    """Around one attempt of a step's code: its log context, its span, its metrics.

    Args:
        journal: the instance and its journal as the step's start mark read them.
        seq: the step's record.
        name: the step's task name.
        started_at: when this attempt started.
        request: the Celery request (a retried attempt's queue delay counts from its
            message's ETA, not from when the step was first scheduled).
    """
    instance, events = journal
    event = events[seq]
    with log_context(instance.id, instance.run, seq):
        tracing, metrics = durable.tracing, durable.metrics
        if tracing is None and metrics is None:
            yield
            return
        began = time.perf_counter()
        queued_from = _due(request) or event.scheduled_at
        attempt = max(event.attempts, 1)
        if tracing is None:
            yield
        else:
            with tracing.step(instance, event, name, attempt, started_at, queued_from) as span:
                try:
                    yield
                except Retry as exc:
                    tracing.retried(span, exc)
                    raise
                except BaseException as exc:
                    tracing.failed(span, exc)
                    raise
        if metrics is not None:
            delay = (started_at - queued_from).total_seconds()
            metrics.step(name, time.perf_counter() - began, delay)


def _due(request: Any) -> datetime | None:
    """A retried message's ETA (when the attempt was due), if it has one."""
    if request is None or not getattr(request, "retries", 0):
        return None
    eta = getattr(request, "eta", None)
    if isinstance(eta, str):
        try:
            eta = datetime.fromisoformat(eta)
        except ValueError:
            return None
    if not isinstance(eta, datetime):
        return None
    return eta if eta.tzinfo is not None else eta.replace(tzinfo=timezone.utc)


def ticked(durable: Durable, oldest_due: datetime | None, now: datetime, claimed: int) -> None:
    """A tick ran: how late its oldest due instance was, and how many it claimed."""
    metrics = durable.metrics
    if metrics is not None:
        lag = (now - oldest_due).total_seconds() if oldest_due is not None else 0.0
        metrics.tick(lag, claimed)


_RESUME_TASK = "celery_durable.resume"
_tagging = False


def tag_task_logs() -> None:
    """Tag the library's log records with the workflow id (and run, seq) of the durable
    task running in the thread: a step (its task id names them) or an orchestrator pass
    (its argument), from Celery's ``task_prerun`` to ``task_postrun``. Idempotent."""
    global _tagging
    if _tagging:
        return
    _tagging = True
    logs.install()
    task_prerun.connect(_task_started, weak=False)
    task_postrun.connect(_task_ended, weak=False)


def _task_started(task_id: str | None = None, task: Any = None, args: Any = None, **_: Any) -> None:
    if getattr(task, "name", None) == _RESUME_TASK:
        logs.tag(str(args[0]) if args else None)
        return
    identity = parse_step_task_id(task_id)
    if identity is None:
        logs.tag(None)
    else:
        logs.tag(*identity)


def _task_ended(**_: Any) -> None:
    logs.tag(None)


class _Nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_NOTHING = _Nothing()
