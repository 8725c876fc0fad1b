"""Deaths only the worker's main process sees: a pool process killed under a task.

When a prefork pool process dies while it runs a task (the OOM killer, a segfault, a
``time_limit`` that kills it), the step's own code never reports: the worker's main
process gets ``WorkerLostError`` (Celery then requeues the message, since steps run with
``reject_on_worker_lost``) or ``TimeLimitExceeded`` (Celery acks it). The Request classes
here are Celery's own, extended to journal that loss from the main process — a write
only when a process died, nothing while tasks succeed:

* a step lost once more after ``durable_max_resends`` re-sends fails for good with
  ``StepFailed`` of type ``"StepLost"`` (the workflow's ``except`` blocks and compensations
  run) instead of killing worker after worker for ever;
* below that, the loss is counted and the step is sent again here, as a new message,
  and the lost copy is acked: never by Celery's requeue, whose redelivery counts toward a
  RabbitMQ quorum queue's ``x-delivery-limit`` (after which the broker drops the message
  and the step would wait ``durable_step_timeout``); the journal's count is the bound
  (a run that died before its start mark, which the journal cannot count, is counted by
  the worker's main process, to the same bound);
* an orchestrator pass killed by its hard time limit (workflow code that blocks and
  swallowed the soft limit), or one that killed its process more than
  ``durable_max_resends`` times in a row, parks its instance as ``stuck``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from billiard.einfo import ExceptionWithTraceback
from billiard.exceptions import TimeLimitExceeded, WorkerLostError
from celery.worker.request import Request

from celery_durable.engine.commands import ScheduleStep
from celery_durable.engine.journal import Event, Failure, Kind, State, Status
from celery_durable.runtime.orchestrator import commit_beside
from celery_durable.runtime.steps import parse_step_task_id

if TYPE_CHECKING:
    from celery_durable.runtime.durable import Durable

logger = logging.getLogger("celery_durable")

#: How many times one loss is tried against a moving journal before giving up (the
#: heartbeat-based recovery then handles it).
_ROUNDS = 20


def _died(exc_info: Any) -> BaseException | None:
    """The process-death exception in ``exc_info``, or ``None`` for any other failure."""
    exc = getattr(exc_info, "exception", None)
    if isinstance(exc, ExceptionWithTraceback):
        exc = exc.exc
    return exc if isinstance(exc, (WorkerLostError, TimeLimitExceeded)) else None


class DurableStepRequest(Request):  # type: ignore[misc]
    """The Request of ``@durable.step`` tasks: journals a step lost with its process."""

    def on_failure(
        self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False
    ) -> Any:
        died = _died(exc_info)
        if died is not None:
            durable = self.task.durable
            accepted_at = None
            if self.time_start:  # wall-clock time the pool accepted it, in the runtime's clock
                accepted_at = durable.now() - timedelta(seconds=time.time() - self.time_start)
            handled = False
            try:
                handled = record_loss(
                    durable,
                    self.id,
                    self.task.name,
                    tuple(self.args or ()),
                    dict(self.kwargs or {}),
                    why=f"{type(died).__name__}: {died}",
                    accepted_at=accepted_at,
                )
            except Exception:  # never let the bookkeeping break Celery's own handling
                logger.exception("step %s: could not journal its lost run", self.id)
            if handled:
                # Journaled, failed for good, or sent again as a new message: Celery must
                # not requeue this copy too (its reject is then a no-op). Unhandled (the
                # store is down), Celery's requeue brings the step back.
                self.acknowledge()
        elif _UNMARKED_LOSSES:
            _UNMARKED_LOSSES.pop(self.id, None)
        return super().on_failure(exc_info, send_failed_event, return_ok)

    def on_success(self, failed__retval__runtime: Any, **kwargs: Any) -> Any:
        if _UNMARKED_LOSSES:  # (empty but after a process died under a step)
            _UNMARKED_LOSSES.pop(self.id, None)
        return super().on_success(failed__retval__runtime, **kwargs)


#: Orchestrator passes of each instance that died with their pool process, as this
#: worker's main process saw them (workflow code that crashes the interpreter).
_PASS_LOSSES: Counter[str] = Counter()
#: Runs of each step (task id) that died with their pool process before the start mark,
#: as this worker's main process saw them: the journal cannot count those.
_UNMARKED_LOSSES: Counter[str] = Counter()


class ResumeRequest(Request):  # type: ignore[misc]
    """The Request of the orchestrator task: parks an instance whose pass was killed by
    its hard time limit (workflow code that blocks), or whose passes killed their pool
    process more than ``durable_max_resends`` times in a row on this worker (a requeued
    pass would lose a process for ever); below that, sends the pass again."""

    def on_failure(
        self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False
    ) -> Any:
        died = _died(exc_info)
        if died is not None and self.args:
            try:
                if _pass_died(self.task.durable, str(self.args[0]), died):
                    self.acknowledge()  # sent again as a new message, or parked
            except Exception:  # Celery's requeue (or, after a time limit, the tick) then
                logger.exception("resume %s: could not park its instance", self.id)
        elif self.args:
            _PASS_LOSSES.pop(str(self.args[0]), None)
        return super().on_failure(exc_info, send_failed_event, return_ok)

    def on_success(self, failed__retval__runtime: Any, **kwargs: Any) -> Any:
        if self.args:
            _PASS_LOSSES.pop(str(self.args[0]), None)
        return super().on_success(failed__retval__runtime, **kwargs)


def _pass_died(durable: Durable, workflow_id: str, died: BaseException) -> bool:
    """An orchestrator pass of ``workflow_id`` died with its process: park the instance if
    a hard time limit killed it, or if its passes keep killing their process; otherwise
    send the pass again as a new message (as a lost step is: a broker's redelivery count
    never decides). ``True`` once dealt with (the lost copy is then dropped)."""
    if isinstance(died, TimeLimitExceeded):
        limit = durable.settings.resume_time_limit
        message = (
            "the orchestrator pass was killed after running longer than "
            f"durable_resume_time_limit ({limit:g} s) and its grace: workflow code must not "
            "block (no I/O, sleeps or long loops outside ctx commands); move slow work into "
            "a step, deploy, then retry the instance"
        )
        park(durable, workflow_id, Failure("TimeLimitExceeded", message))
        return True
    _PASS_LOSSES[workflow_id] += 1
    if _PASS_LOSSES[workflow_id] <= durable.settings.max_resends:
        durable.send_resume(workflow_id)  # the process may have died for another reason
        return True
    del _PASS_LOSSES[workflow_id]
    message = (
        f"its orchestrator pass killed the worker process running it "
        f"{durable.settings.max_resends + 1} times in a row ({died}): workflow code must "
        "not crash the interpreter; fix it, deploy, then retry the instance"
    )
    park(durable, workflow_id, Failure("WorkerLostError", message))
    return True


def record_loss(
    durable: Durable,
    task_id: str,
    name: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    why: str,
    accepted_at: datetime | None = None,
) -> bool:
    """Journal that the run of step ``task_id`` died with its process.

    The loss counts only if the journal's start mark is this run's: a death the main
    process reports late (Celery finds dead pool processes every few seconds) may come
    after recovery took the silent step for lost, counted it and sent it again, or after
    a newer run marked it; then nothing more is counted. A run that died before its start
    mark is counted here, in this process, per task id: more than ``durable_max_resends``
    of those fail the step too.

    A step that must go again is sent here as a new message (the caller then drops the
    lost copy): a broker's own redelivery count (a quorum queue's ``x-delivery-limit``)
    never decides, the journal's ``resends`` against ``durable_max_resends`` does.

    Args:
        why: the exception the main process saw, for the log.
        accepted_at: when the pool accepted this run (the runtime's clock), if known.

    Returns:
        ``True`` if the loss is dealt with and the lost copy must be dropped: the step is
        journaled, failed for good (``StepLost``), or sent again (here or before);
        ``False`` if it could not be recorded (a journal moving under every try, or not
        a step's task id): then the message's own redelivery, if any, brings it back.
    """
    identity = parse_step_task_id(task_id)
    if identity is None:
        return False
    workflow_id, run, seq = identity
    counted = False
    for _ in range(_ROUNDS):
        loaded = durable.store.load(workflow_id)
        if loaded is None:
            return True
        instance, events = loaded
        event = events[seq] if seq < len(events) else None
        if (
            instance.run != run
            or instance.status.is_terminal
            or event is None
            or event.kind is not Kind.STEP
            or event.name != name
            or event.state.is_final
        ):
            return True  # journaled meanwhile, or not this run's: nothing was lost
        whose = _whose_mark(durable, event, accepted_at)
        unmarked = 0
        if whose == "unmarked":
            # It died before its start mark, so the journal has no run to count: this
            # worker counts it (a step that kills its process before it can start, on
            # its arguments or in a task_prerun handler, must not loop for ever either).
            if not counted:  # (once, however many rounds the commit below takes)
                _UNMARKED_LOSSES[task_id] += 1
                counted = True
            unmarked = _UNMARKED_LOSSES[task_id]
            if unmarked <= durable.settings.max_resends:
                durable.send_step(workflow_id, ScheduleStep(seq, name, args, kwargs), run)
                return True
        if whose == "newer":
            logger.info(
                "workflow %s: step %s (seq %d) lost its process (%s), but it was already "
                "sent again; not counted twice",
                workflow_id,
                name,
                seq,
                why,
            )
            return True
        now = durable.now()
        if unmarked or event.resends >= durable.settings.max_resends:
            lost = unmarked or event.resends + 1
            before = " before it could start" if unmarked else ""
            failure = Failure(
                "StepLost",
                f"step {name!r} (seq {seq}) was lost {lost} times{before} ({why}): it was "
                f"sent again {lost - 1} times (durable_max_resends="
                f"{durable.settings.max_resends})",
            )
            failed = replace(event, state=State.FAILED, failure=failure, completed_at=now)
            if commit_beside(durable, instance, outcomes=[failed], wake_at=durable.redrive_at()):
                _UNMARKED_LOSSES.pop(task_id, None)
                logger.error("workflow %s: %s", workflow_id, failure.message)
                durable.send_resume(workflow_id)  # the workflow handles the failure
                return True
            continue
        wake_at = now + durable.redrive_after
        if instance.wake_at is not None:
            wake_at = min(wake_at, instance.wake_at)
        if commit_beside(durable, instance, resent=[seq], wake_at=wake_at, note=instance.note):
            logger.warning(
                "workflow %s: step %s (seq %d) lost its process (%s); sending it again "
                "(loss %d of %d allowed)",
                workflow_id,
                name,
                seq,
                why,
                event.resends + 1,
                durable.settings.max_resends,
            )
            durable.send_step(workflow_id, ScheduleStep(seq, name, args, kwargs), run)
            return True
    return False


def _whose_mark(durable: Durable, event: Event, accepted_at: datetime | None) -> str:
    """Whose start mark ``event`` carries, for the run accepted at ``accepted_at``:
    ``"ours"`` (its mark follows its acceptance within moments), ``"unmarked"`` (it died
    before marking the step), or ``"newer"``: recovery took the silent step for lost and
    sent it again since (clearing the mark), or a newer run marked it — which can only
    happen a silence limit after this run's last sign of life."""
    margin = durable.silence_limit / 2
    if event.state is State.STARTED and event.started_at is not None:
        if accepted_at is None or event.started_at <= accepted_at + margin:
            return "ours"
        return "newer"
    sent_since = (
        accepted_at is not None
        and event.heartbeat_at is not None
        and event.heartbeat_at > accepted_at + margin
    )
    return "newer" if sent_since else "unmarked"


def park(durable: Durable, workflow_id: str, failure: Failure) -> None:
    """Park a live instance as ``stuck`` with ``failure`` (a retry resumes it)."""
    for _ in range(_ROUNDS):
        instance = durable.store.get(workflow_id)
        if instance is None or instance.status not in (Status.PENDING, Status.RUNNING):
            return
        parked = replace(instance, status=Status.STUCK, failure=failure)
        if commit_beside(durable, parked, wake_at=None):
            logger.error("workflow %s is stuck: %s", workflow_id, failure.message)
            return
