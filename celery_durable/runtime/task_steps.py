"""Existing Celery tasks as workflow steps: ``await ctx.step(existing_task, ...)``.

A plain ``@app.task`` / ``@shared_task`` was never written for this library, and its
class is the project's own; it is sent like a ``@durable.step``, with the deterministic
task id ``"<workflow_id>:<seq>"``, and journaled from the worker that runs it through
Celery's task signals, with nothing to change in the task:

* ``task_prerun``: the start mark (``Store.start_step``), the step's heartbeats and
  :func:`~celery_durable.current_step` for the run;
* ``task_success`` / ``task_failure``: the outcome journaled and the workflow advanced,
  from that worker (no result backend involved);
* ``task_retry``: the retry's due time journaled, so recovery waits for Celery's retry;
* a pool process that dies (``WorkerLostError``, a hard time limit): the main process's
  ``task_failure`` counts the loss as for a ``@durable.step`` — sent again, and past
  ``durable_max_resends`` failed with ``StepFailed`` of type ``"StepLost"``;
* ``task_postrun``: the heartbeats stop.

What differs from ``@durable.step``: the task's own options apply (Celery's default is
early ack, so a message lost with its worker is sent again by recovery rather than
redelivered by the broker), and signals cannot stop a task from running, so a copy
delivered again after the outcome was journaled runs again (its outcome is not journaled
twice). Make such tasks idempotent with ``current_step().idempotency_key``.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from celery import Task
from celery.exceptions import Retry, TimeLimitExceeded, WorkerLostError
from celery.signals import task_failure, task_postrun, task_prerun, task_retry, task_success

from celery_durable.engine.journal import Failure
from celery_durable.errors import StoreError
from celery_durable.runtime.ids import parse_step_task_id
from celery_durable.runtime.losses import record_loss
from celery_durable.runtime.orchestrator import StepOutcome
from celery_durable.runtime.steps import (
    DurableStep,
    StepInfo,
    advance_patiently,
    enter_step,
    leave_step,
)

if TYPE_CHECKING:
    from celery_durable.runtime.durable import Durable

logger = logging.getLogger("celery_durable")


@dataclass
class _Running:
    workflow_id: str
    run: int
    seq: int
    started_at: datetime
    attempts: int
    beats: contextlib.ExitStack
    token: contextvars.Token[StepInfo | None]
    outcome_done: bool = False


class PlainTaskSteps:
    """Journals plain Celery tasks run as workflow steps, through Celery's task signals.

    One per :class:`~celery_durable.Durable`; it acts only on tasks of its app whose task
    id is a step id and that are not ``@durable.step`` tasks (those journal themselves).
    """

    def __init__(self, durable: Durable) -> None:
        self._durable = durable
        self._running: dict[str, _Running] = {}
        self._lock = threading.Lock()
        task_prerun.connect(self._prerun, weak=False)
        task_success.connect(self._success, weak=False)
        task_failure.connect(self._failure, weak=False)
        task_retry.connect(self._retry, weak=False)
        task_postrun.connect(self._postrun, weak=False)

    def _ours(self, task: Any, task_id: str | None) -> tuple[str, int, int] | None:
        if (
            not isinstance(task, Task)
            or isinstance(task, DurableStep)
            or task.app is not self._durable.app
            or task_id is None
        ):
            return None
        return parse_step_task_id(task_id)

    # -- the run -------------------------------------------------------------------------
    def _prerun(self, sender: Any = None, task_id: str | None = None, **_: Any) -> None:
        identity = self._ours(sender, task_id)
        if identity is None or task_id is None:
            return
        workflow_id, run, seq = identity
        durable = self._durable
        now = durable.now()
        marked, attempts = False, 1
        try:
            start = durable.store.start_step(
                workflow_id, run, seq, sender.name, now, now + durable.silence_limit
            )
        except StoreError as exc:
            # Not marked: recovery sends it again if this run is never journaled.
            logger.warning("step %s: cannot mark it started (%s)", task_id, exc)
        else:
            marked = start.marked and start.journal is not None
            if start.journal is not None and seq < len(start.journal[1]):
                attempts = max(start.journal[1][seq].attempts, 1)
        if not marked:
            # A copy of a step journaled already, another run's, or not this step: it
            # runs all the same (a signal cannot stop it) and nothing is journaled; its
            # idempotency key lets it find out that it ran before.
            logger.info(
                "step %s (%s): not a pending step of its workflow; its outcome will not be "
                "journaled",
                task_id,
                sender.name,
            )
        beats = contextlib.ExitStack()
        if marked:
            beats.enter_context(durable.heartbeats.track(workflow_id, run, seq))
        token = enter_step(StepInfo(workflow_id, seq, task_id, attempts, run))
        with self._lock:
            self._running[task_id] = _Running(
                workflow_id, run, seq, now, attempts, beats, token, outcome_done=not marked
            )

    def _success(self, sender: Any = None, result: Any = None, **_: Any) -> None:
        task_id = getattr(getattr(sender, "request", None), "id", None)
        self._journal(sender, task_id, result=result)

    def _failure(
        self,
        sender: Any = None,
        task_id: str | None = None,
        exception: BaseException | None = None,
        args: Any = None,
        kwargs: Any = None,
        **_: Any,
    ) -> None:
        identity = self._ours(sender, task_id)
        if identity is None or task_id is None:
            return
        if isinstance(exception, (WorkerLostError, TimeLimitExceeded)):
            # Reported by the worker's main process: the run died with its process.
            try:
                record_loss(
                    self._durable,
                    task_id,
                    sender.name,
                    tuple(args or ()),
                    dict(kwargs or {}),
                    why=f"{type(exception).__name__}: {exception}",
                )
            except Exception:  # never let the bookkeeping break Celery's own handling
                logger.exception("step %s: could not journal its lost run", task_id)
            return
        if exception is None or isinstance(exception, Retry):
            return
        self._journal(sender, task_id, failure=Failure.from_exception(exception))

    def _retry(self, sender: Any = None, request: Any = None, reason: Any = None, **_: Any) -> None:
        task_id = getattr(request, "id", None)
        identity = self._ours(sender, task_id)
        if identity is None:
            return
        workflow_id, run, seq = identity
        durable = self._durable
        when = getattr(reason, "when", None)  # Retry's eta (datetime) or countdown (s)
        now = durable.now()
        due: datetime
        if isinstance(when, datetime):
            due = when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)
        else:
            due = now + timedelta(seconds=float(when or sender.default_retry_delay or 0))
        try:
            durable.store.reschedule_step(workflow_id, run, seq, due, due + durable.redrive_after)
        except StoreError as exc:
            logger.warning("step %s: cannot journal its retry (%s)", task_id, exc)
        with self._lock:
            running = self._running.get(str(task_id))
        if running is not None:
            running.outcome_done = True  # a retry, not an outcome

    def _postrun(self, sender: Any = None, task_id: str | None = None, **_: Any) -> None:
        if task_id is None:
            return
        with self._lock:
            running = self._running.pop(task_id, None)
        if running is not None:
            leave_step(running.token)
            running.beats.close()

    # -- journaling ----------------------------------------------------------------------
    def _journal(
        self,
        sender: Any,
        task_id: str | None,
        *,
        result: Any = None,
        failure: Failure | None = None,
    ) -> None:
        if task_id is None or self._ours(sender, task_id) is None:
            return
        with self._lock:
            running = self._running.get(task_id)
        if running is None or running.outcome_done:
            return  # not marked by this run: nothing to journal
        running.outcome_done = True
        outcome = StepOutcome(
            running.seq,
            result=result if failure is None else None,
            failure=failure,
            attempts=running.attempts,
            started_at=running.started_at,
            run=running.run,
            name=sender.name,
        )
        durable = self._durable
        failed = advance_patiently(
            durable,
            running.workflow_id,
            outcome,
            None,
            durable.settings.outcome_patience,
            None,
            task_id,
        )
        if failed is not None:
            # Recovery sends it again once its beats stop: at least once.
            logger.error("step %s: outcome not journaled (%s)", task_id, failed)
