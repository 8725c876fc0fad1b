"""The Celery task class behind ``@durable.step``.

A step is an ordinary Celery task (routable, rate-limited, retried with Celery's own
options). When it runs for a workflow, its task id is the deterministic
``"<workflow_id>:<seq>"`` (``"<workflow_id>:<seq>~<run>"`` from the second run of an
instance that continued as new), which survives Celery's retries (custom message headers
do not reliably: celery#4875, #7523), so the id alone says which journal record of which
run it is. The task then:

1. marks its journal record started (``Store.start_step``, one round trip that also reads
   the journal), so that recovery knows within seconds if the worker dies, even in the
   step's first milliseconds. A record that is already journaled (a duplicate delivery),
   belongs to another run (a straggler from before a ``continue_as_new``) or is not a
   step of this name is not run: a duplicate only makes sure the workflow moved on;
2. runs the user function (Celery's ``autoretry_for`` wraps it; a retry publishes a new
   message with the same id, and its due time is journaled first so that recovery waits
   for it rather than sending the step again);
3. journals the outcome and advances the workflow in one commit, publishing the next
   step from this same worker: one broker hop per step, like a bare chain. While the
   store is out of reach it keeps trying (and beating) for ``durable_outcome_patience``
   seconds, so a database restart does not make the step run again.

Deaths that only the worker's main process sees (a pool process killed: OOM, segfault,
``time_limit``) are counted by :class:`DurableStepRequest`, without any write while
things go well: a step lost more than ``durable_max_resends`` times fails with
``StepFailed`` of type ``"StepLost"``.

Called outside a workflow (``my_step.delay(...)`` or ``my_step(...)``), it is a plain task;
task ids of the form ``"<anything>:<integer>"`` (or ``...:<integer>~<integer>``) are
reserved for workflow steps.
"""

from __future__ import annotations

import contextvars
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from celery import Task
from celery.exceptions import Ignore, Retry

from celery_durable import faults
from celery_durable.engine.journal import Failure, Kind
from celery_durable.errors import StoreError, WorkflowNotFound
from celery_durable.runtime import observe
from celery_durable.runtime.eager import EagerChain
from celery_durable.runtime.ids import parse_step_task_id, step_task_id
from celery_durable.runtime.orchestrator import Loaded, StepOutcome
from celery_durable.runtime.transactional import in_transaction, run_transactional

if TYPE_CHECKING:
    from celery_durable.runtime.durable import Durable

__all__ = ["DurableStep", "StepInfo", "current_step", "parse_step_task_id", "step_task_id"]

logger = logging.getLogger("celery_durable")


@dataclass(frozen=True)
class StepInfo:
    """What a running step knows about its place in a workflow.

    Attributes:
        workflow_id: the instance the step belongs to.
        seq: its position in the workflow's commands.
        idempotency_key: the Celery task id, ``"<workflow_id>:<seq>"`` (with ``~<run>``
            appended from the second run on); the same on every retry and redelivery and
            unique across runs, so pass it to external services to make the step
            exactly-once in effect.
        attempt: 1 on the first run of the step, then 2, 3, ... on every retry,
            redelivery and re-send (each run counts, as the journal's ``attempts``).
        run: the workflow run the step belongs to (1, then +1 per continue_as_new).
    """

    workflow_id: str
    seq: int
    idempotency_key: str
    attempt: int
    run: int = 1


_current: contextvars.ContextVar[StepInfo | None] = contextvars.ContextVar(
    "celery_durable_step", default=None
)


def current_step() -> StepInfo | None:
    """The :class:`StepInfo` of the step running in this thread, or ``None`` outside one."""
    return _current.get()


def enter_step(info: StepInfo) -> contextvars.Token[StepInfo | None]:
    """Make ``info`` what :func:`current_step` returns until :func:`leave_step`."""
    return _current.set(info)


def leave_step(token: contextvars.Token[StepInfo | None]) -> None:
    """Undo the :func:`enter_step` that gave ``token``."""
    _current.reset(token)


def advance_patiently(
    durable: Durable,
    workflow_id: str,
    outcome: StepOutcome | None,
    journal: Loaded | None,
    patience: float,
    chain: EagerChain | None,
    label: str,
) -> StoreError | None:
    """Journal a step's ``outcome`` (if any) and advance the workflow, trying again while
    the store is out of reach for up to ``patience`` seconds (a step that has run waits
    out a database restart rather than running again).

    Returns:
        ``None`` once done (or the workflow is gone); the last ``StoreError`` when the
        patience ran out, for the caller to retry the step or leave it to recovery.
    """
    deadline = time.monotonic() + patience
    pause = 0.1
    while True:
        try:
            durable.advance(workflow_id, outcome, journal, chain)
            return None
        except WorkflowNotFound:
            logger.error("step %s: workflow %s vanished from the store", label, workflow_id)
            return None
        except StoreError as exc:
            if time.monotonic() + pause > deadline:
                return exc
            logger.warning(
                "step %s: store unavailable (%s); journaling its outcome again in %.1f s",
                label,
                exc,
                pause,
            )
            time.sleep(pause)
            pause = min(pause * 2, 5.0)
            journal = None  # read afresh: the failed commit may have been applied


class DurableStep(Task):  # type: ignore[misc]
    """Base class of ``@durable.step`` tasks."""

    #: Set by ``Durable.step`` on each task class.
    durable: Durable
    acks_late = True
    reject_on_worker_lost = True
    ignore_result = True
    transactional: bool | str = False
    """``@durable.step(transactional=True)``: the step's function takes a SQLAlchemy
    ``Connection`` to the store's database first, and its writes commit in the one
    transaction that journals its outcome (:mod:`.transactional`).
    ``transactional="django"``: the step writes with Django's ORM, in the
    ``transaction.atomic()`` that journals its outcome (the journal in Django's
    ``default`` database)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.request.called_directly:
            return super().__call__(*args, **kwargs)
        identity = parse_step_task_id(self.request.id)
        if identity is None:
            return self.run(*args, **kwargs)
        workflow_id, run, seq = identity
        durable = self.durable
        chain = EagerChain.current()
        handoff = chain.claim(self.request.id) if chain is not None else None
        if handoff is not None:
            # Handed over by the step before, whose commit marked this one started.
            journal: Loaded | None = handoff.journal
            assert journal is not None
            event = journal[1][seq]
            started_at = event.started_at or durable.now()
        else:
            chain = EagerChain.begin(durable, self)
            started_at = durable.now()
            try:
                # One round trip: mark the step started (recovery then knows within
                # seconds if this worker dies) and read the journal, which seeds the
                # commit after.
                start = durable.store.start_step(
                    workflow_id,
                    run,
                    seq,
                    self.name,
                    started_at,
                    started_at + durable.silence_limit,
                )
            except StoreError as exc:
                raise self._retry_later(exc) from exc
            journal = start.journal
            if not start.marked:
                return self._not_ours(workflow_id, run, seq, journal)
            assert journal is not None
            event = journal[1][seq]
        token = _current.set(
            StepInfo(
                workflow_id=workflow_id,
                seq=seq,
                idempotency_key=self.request.id,
                attempt=max(event.attempts, 1),
                run=run,
            )
        )
        if self.transactional:
            try:
                with durable.heartbeats.track(workflow_id, run, seq):
                    error, value = run_transactional(self, identity, journal, args, kwargs)
            finally:
                _current.reset(token)
            # Journaled (or found journaled): the workflow goes on from the store.
            self._advance(workflow_id, None, None, durable.settings.outcome_patience, chain)
            if chain is not None and handoff is None:
                chain.run_handed()
            if error is not None:
                raise error
            return value
        failed: BaseException | None = None
        result: Any = None
        # The beats go on until the outcome is journaled: a step waiting for the store
        # to come back must not look dead and be sent again.
        with durable.heartbeats.track(workflow_id, run, seq):
            try:
                with observe.step_attempt(
                    durable, journal, seq, self.name, started_at, self.request
                ):
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
                attempts=event.attempts,
                started_at=started_at,
                run=run,
                name=self.name,
            )
            self._advance(workflow_id, outcome, journal, durable.settings.outcome_patience, chain)
        if chain is not None and handoff is None:
            chain.run_handed()  # the steps handed over after this one, one by one
        if failed is not None:
            # Journaled; re-raise so Celery (and Flower) show the task as failed.
            raise failed
        return result

    def _not_ours(self, workflow_id: str, run: int, seq: int, journal: Loaded | None) -> None:
        """The step could not be marked started: say why, and never run its code."""
        event = None
        if journal is not None and seq < len(journal[1]):
            event = journal[1][seq]
        if journal is None:
            logger.error(
                "step %s: no workflow instance %s; message dropped", self.name, workflow_id
            )
        elif journal[0].run != run:
            logger.info(
                "step %s: %s belongs to run %d of workflow %s, which is now on run %d; "
                "not run (a straggler from before continue_as_new)",
                self.name,
                self.request.id,
                run,
                workflow_id,
                journal[0].run,
            )
        elif event is None or event.kind is not Kind.STEP or event.name != self.name:
            logger.error(
                "step %s: workflow %s has no step %r at seq %d; message dropped",
                self.name,
                workflow_id,
                self.name,
                seq,
            )
        elif event.state.is_final:
            logger.info("step %s of %s already journaled; not run again", seq, workflow_id)
            self._advance(workflow_id, None, journal)
            return
        else:
            logger.info(
                "step %s: workflow %s is %s; step %d not run",
                self.name,
                workflow_id,
                journal[0].status.value,
                seq,
            )
        raise Ignore()

    def retry(
        self,
        args: Any = None,
        kwargs: Any = None,
        exc: BaseException | None = None,
        throw: bool = True,
        eta: datetime | None = None,
        countdown: float | None = None,
        max_retries: int | None = None,
        **options: Any,
    ) -> Any:
        """Celery's ``Task.retry``, with the retry's due time journaled first.

        The step goes back to scheduled until the retry is due, so recovery waits for the
        retry's own message (its due time plus ``durable_step_timeout``) instead of
        taking the silent step for a dead one and sending it again alongside.
        """
        identity = parse_step_task_id(self.request.id)
        if identity is not None and not self.request.called_directly:
            workflow_id, run, seq = identity
            now = self.durable.now()
            if eta is not None:
                due = eta if eta.tzinfo is not None else eta.replace(tzinfo=timezone.utc)
            else:
                delay = countdown if countdown is not None else self.default_retry_delay
                due = now + timedelta(seconds=float(delay or 0))
            # As a countdown the broker can carry (whole seconds on RabbitMQ quorum
            # queues, where a fraction below 1 s raises).
            countdown = self.durable.broker_countdown((due - now).total_seconds())
            eta = None
            due = now + timedelta(seconds=max(countdown, 0.0))
            if in_transaction(self, (workflow_id, run, seq, due)):
                pass  # journaled once the step's transaction is rolled back
            else:
                try:
                    self.durable.store.reschedule_step(
                        workflow_id, run, seq, due, due + self.durable.redrive_after
                    )
                except StoreError as error:
                    logger.warning("step %s: cannot journal its retry (%s)", self.request.id, error)
        return super().retry(args, kwargs, exc, throw, eta, countdown, max_retries, **options)

    def _advance(
        self,
        workflow_id: str,
        outcome: StepOutcome | None,
        journal: Loaded | None,
        patience: float = 0.0,
        chain: EagerChain | None = None,
    ) -> None:
        """Journal ``outcome`` (if any) and advance the workflow.

        A store out of reach is retried here for up to ``patience`` seconds (a step that
        has run waits out a database restart rather than running again); past it, the
        task is retried by Celery.
        """
        failed = advance_patiently(
            self.durable, workflow_id, outcome, journal, patience, chain, self.request.id
        )
        if failed is not None:
            raise self._retry_later(failed) from failed

    def _retry_later(self, exc: Exception) -> Retry:
        """Send this step again later: the store is out of reach, nothing was journaled."""
        retries = int(self.request.retries or 0)
        logger.warning("step %s: store unavailable (%s); retrying", self.request.id, exc)
        try:
            retry: Retry = self.retry(
                exc=exc, countdown=min(2**retries, 60), max_retries=retries + 1
            )
        finally:
            # Celery keeps an explicit max_retries on the task object
            # (``override_max_retries``), and autoretry_for would apply it to every later
            # request of this process: a step allowed 20 retries would fail for good at
            # its second. This retry's limit is for this retry only.
            self.__dict__.pop("override_max_retries", None)
        return retry
