"""Exactly-once database steps: the step's writes and its journaled outcome in one
transaction (``@durable.step(transactional=True)``).

The instance's row is locked first (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite's
``BEGIN IMMEDIATE`` holds the database's write lock): a copy of the step that comes
second waits, then finds the step journaled and runs nothing. Keep such steps short: the
instance (on SQLite, every writer) waits for them. The step's code then runs in a savepoint on that
connection; its outcome is written to the journal, and the instance's version is bumped
(a pass that read the journal before must read it again) with a wake-up time for
recovery, all before the one commit. A crash anywhere before that commit undoes the
step's writes with the rest: the step is sent again and its writes happen once. A step
that raises has its writes rolled back to the savepoint and its failure journaled.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, case, select, update

from celery_durable import faults
from celery_durable.engine.journal import Failure, Kind, State
from celery_durable.stores.connections import SQLConnections
from celery_durable.stores.rows import aware, failure_text
from celery_durable.stores.schema import events, instances

_PENDING = (State.SCHEDULED.value, State.STARTED.value)


@dataclass(frozen=True)
class StepTransaction:
    """What :meth:`StepTransactions.run_step_in_transaction` did.

    Attributes:
        ran: ``False`` if the step was not a pending step of that run and name (already
            journaled, another run's, missing): nothing ran, nothing was written.
        result: the step's return value, when it succeeded.
        failure: the step's failure (its writes were rolled back), when it raised.
        error: the exception it raised, when it did.
    """

    ran: bool
    result: Any = None
    failure: Failure | None = None
    error: BaseException | None = None


class RetryStep(Exception):
    """The step asked to be retried: nothing of its transaction is committed."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class StepTransactions(SQLConnections):
    """The SQL stores' exactly-once step runner (a mixin of ``SQLAlchemyStore``)."""

    def run_step_in_transaction(
        self,
        instance_id: str,
        run: int,
        seq: int,
        name: str,
        body: Callable[[Connection], Any],
        encode: Callable[[Any], str],
        *,
        at: datetime,
        wake_by: datetime,
        retry_on: Callable[[BaseException], bool] = lambda exc: False,
    ) -> StepTransaction:
        """Run ``body(connection)`` and journal its outcome in one transaction.

        Args:
            instance_id / run / seq / name: the step's journal record.
            body: the step's code, given the transaction's connection for its writes.
            encode: the instance's codec's ``dumps``; a result it cannot encode fails
                the step (its writes rolled back).
            at: the outcome's time.
            wake_by: the instance's wake-up time at the latest (recovery advances the
                workflow if the pass after this commit never happens).
            retry_on: exceptions of the body that mean "retry me" (Celery's ``Retry``
                and ``autoretry_for``): the whole transaction is rolled back and
                :class:`RetryStep` raised with the exception.

        Raises:
            RetryStep: the body asked to be retried; nothing was written.
            StoreError: the store failed; nothing was written (the step's writes
                included).
        """
        with self._transaction(write=True) as conn:
            if not self._lock_pending(conn, instance_id, run, seq, name):
                return StepTransaction(ran=False)
            savepoint = conn.begin_nested()
            result: Any = None
            output: str | None = None
            failure: Failure | None = None
            error: BaseException | None = None
            try:
                result = body(conn)
                output = encode(result)
            except Exception as exc:
                savepoint.rollback()
                if retry_on(exc):
                    raise RetryStep(exc) from exc
                failure, error = Failure.from_exception(exc), exc
            else:
                savepoint.commit()
            faults.point(faults.STEP_EFFECT)
            state = State.COMPLETED if failure is None else State.FAILED
            conn.execute(
                update(events)
                .where(events.c.instance_id == instance_id, events.c.seq == seq)
                .values(
                    state=state.value,
                    output=output,
                    failure=failure_text(failure),
                    completed_at=aware(at, "at"),
                )
            )
            due = aware(wake_by, "wake_by")
            conn.execute(
                update(instances)
                .where(instances.c.id == instance_id)
                .values(
                    version=instances.c.version + 1,
                    wake_at=case(
                        (instances.c.wake_at.is_(None), due),
                        (instances.c.wake_at > due, due),
                        else_=instances.c.wake_at,
                    ),
                )
            )
            faults.point(faults.MID_COMMIT)
        if failure is not None:
            return StepTransaction(ran=True, failure=failure, error=error)
        return StepTransaction(ran=True, result=result)

    def _lock_pending(
        self, conn: Connection, instance_id: str, run: int, seq: int, name: str
    ) -> bool:
        """Lock the step's record; ``True`` if it is a pending step of that run and name."""
        current_run = conn.execute(
            select(instances.c.run).where(instances.c.id == instance_id).with_for_update()
        ).scalar()
        if current_run != run:
            return False
        # The instance's lock is enough: every writer of this step's outcome (another copy
        # of the step, a pass sending it again) locks the instance first; the event row
        # stays free for heartbeats.
        row = conn.execute(
            select(events.c.kind, events.c.name, events.c.state).where(
                events.c.instance_id == instance_id, events.c.seq == seq
            )
        ).first()
        return (
            row is not None
            and row.kind == Kind.STEP.value
            and row.name == name
            and row.state in _PENDING
        )
