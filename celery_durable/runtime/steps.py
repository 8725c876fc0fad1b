"""The Celery task class behind ``@durable.step``.

A step is an ordinary Celery task (routable, rate-limited, retried with Celery's own
options). When it runs for a workflow, its task id is the deterministic
``"<workflow_id>:<seq>"``, which survives Celery's retries (custom message headers do not
reliably: celery#4875, #7523), so the id alone says which journal record it is. The task
then:

1. marks its journal record started, or, if the outcome is already journaled (a duplicate
   delivery), skips the user code and only makes sure the workflow moved on;
2. runs the user function (Celery's ``autoretry_for`` wraps it; a retry publishes a new
   message with the same id and journals nothing);
3. journals the outcome and advances the workflow in one commit, publishing the next
   step from this same worker: one broker hop per step, like a bare chain. While the
   store is out of reach it keeps trying (and beating) for ``durable_outcome_patience``
   seconds, so a database restart does not make the step run again.

Called outside a workflow (``my_step.delay(...)`` or ``my_step(...)``), it is a plain task;
task ids of the form ``"<anything>:<integer>"`` are reserved for workflow steps.
"""

from __future__ import annotations

import contextvars
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celery import Task
from celery.exceptions import Ignore, Retry

from celery_durable import faults
from celery_durable.engine.journal import Failure
from celery_durable.errors import StoreError, UnknownWorkflow, WorkflowNotFound
from celery_durable.runtime.orchestrator import Loaded, StepOutcome

if TYPE_CHECKING:
    from celery_durable.runtime.durable import Durable

logger = logging.getLogger("celery_durable")


@dataclass(frozen=True)
class StepInfo:
    """What a running step knows about its place in a workflow.

    Attributes:
        workflow_id: the instance the step belongs to.
        seq: its position in the workflow's commands.
        idempotency_key: ``"<workflow_id>:<seq>"``, also the Celery task id; the same on
            every retry and redelivery, so pass it to external services to make the step
            exactly-once in effect.
        attempt: 1 on the first run, then 2, 3, ... on retries and redeliveries.
    """

    workflow_id: str
    seq: int
    idempotency_key: str
    attempt: int


_current: contextvars.ContextVar[StepInfo | None] = contextvars.ContextVar(
    "celery_durable_step", default=None
)


def current_step() -> StepInfo | None:
    """The :class:`StepInfo` of the step running in this thread, or ``None`` outside one."""
    return _current.get()


def step_task_id(workflow_id: str, seq: int) -> str:
    """The deterministic Celery task id (and idempotency key) of a workflow's step."""
    return f"{workflow_id}:{seq}"


def parse_step_task_id(task_id: str | None) -> tuple[str, int] | None:
    """Inverse of :func:`step_task_id`; ``None`` for an ordinary task id."""
    if not task_id:
        return None
    workflow_id, sep, seq = task_id.rpartition(":")
    if not sep or not workflow_id or not seq.isdigit():
        return None
    return workflow_id, int(seq)


class DurableStep(Task):  # type: ignore[misc]
    """Base class of ``@durable.step`` tasks."""

    #: Set by ``Durable.step`` on each task class.
    durable: Durable
    acks_late = True
    reject_on_worker_lost = True
    ignore_result = True

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.request.called_directly:
            return super().__call__(*args, **kwargs)
        identity = parse_step_task_id(self.request.id)
        if identity is None:
            return self.run(*args, **kwargs)
        workflow_id, seq = identity
        durable = self.durable
        try:
            # Read once before running: the journal says whether this step is already
            # done (a duplicate delivery), and the same read seeds the commit afterwards.
            journal = durable.store.load(workflow_id)
        except StoreError as exc:
            raise self._retry_later(exc) from exc
        event = None
        if journal is not None and seq < len(journal[1]):
            event = journal[1][seq]
        if event is None:
            logger.error(
                "step %s: workflow %s has no journal record %d; message dropped",
                self.name,
                workflow_id,
                seq,
            )
            raise Ignore()
        if event.state.is_final:
            logger.info("step %s of %s already journaled; not run again", seq, workflow_id)
            self._advance(workflow_id, None, journal)
            return None

        # Celery counts its retries; the journal counts runs it saw start (a step sent
        # again after its worker died is a new message with retries = 0).
        attempt = max(int(self.request.retries or 0), event.attempts) + 1
        started_at = durable.now()
        token = _current.set(
            StepInfo(
                workflow_id=workflow_id,
                seq=seq,
                idempotency_key=step_task_id(workflow_id, seq),
                attempt=attempt,
            )
        )
        failed: BaseException | None = None
        result: Any = None
        # The beats go on until the outcome is journaled: a step waiting for the store
        # to come back must not look dead and be sent again.
        with durable.heartbeats.track(workflow_id, seq):
            try:
                result = self.run(*args, **kwargs)
            except Retry:
                raise
            except Exception as exc:
                failed = exc
            finally:
                _current.reset(token)
            faults.point(faults.STEP_RAN)
            outcome = StepOutcome(
                seq,
                result=result if failed is None else None,
                failure=None if failed is None else Failure.from_exception(failed),
                attempts=attempt,
                started_at=started_at,
            )
            self._advance(workflow_id, outcome, journal, durable.settings.outcome_patience)
        if failed is not None:
            # Journaled; re-raise so Celery (and Flower) show the task as failed.
            raise failed
        return result

    def _advance(
        self,
        workflow_id: str,
        outcome: StepOutcome | None,
        journal: Loaded | None,
        patience: float = 0.0,
    ) -> None:
        """Journal ``outcome`` (if any) and advance the workflow.

        A store out of reach is retried here for up to ``patience`` seconds (a step that
        has run waits out a database restart rather than running again); past it, the
        task is retried by Celery.
        """
        durable = self.durable
        deadline = time.monotonic() + patience
        pause = 0.1
        while True:
            try:
                durable.advance(workflow_id, outcome, journal)
                return
            except UnknownWorkflow:
                # The outcome is journaled; a worker that has the workflow's code goes on.
                durable.send_resume(workflow_id)
                return
            except WorkflowNotFound:
                logger.error("step %s: workflow %s vanished from the store", self.name, workflow_id)
                return
            except StoreError as exc:
                if time.monotonic() + pause > deadline:
                    raise self._retry_later(exc) from exc
                logger.warning(
                    "step %s: store unavailable (%s); journaling its outcome again in %.1f s",
                    self.request.id,
                    exc,
                    pause,
                )
                time.sleep(pause)
                pause = min(pause * 2, 5.0)
                journal = None  # read afresh: the failed commit may have been applied

    def _retry_later(self, exc: Exception) -> Retry:
        """Send this step again later: the store is out of reach, nothing was journaled."""
        retries = int(self.request.retries or 0)
        logger.warning("step %s: store unavailable (%s); retrying", self.request.id, exc)
        retry: Retry = self.retry(exc=exc, countdown=min(2**retries, 60), max_retries=retries + 1)
        return retry
