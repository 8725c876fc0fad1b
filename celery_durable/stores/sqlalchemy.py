"""The journal in a SQL database through SQLAlchemy Core: SQLite, PostgreSQL and others.

Compare-and-set
    :meth:`SQLAlchemyStore.commit` is one transaction that starts with
    ``UPDATE durable_instances SET version = version + 1, ... WHERE id = :id AND
    version = :expected``. The row lock that UPDATE takes (a whole-database write lock on
    SQLite) serializes two orchestrators committing for one instance: the second one's
    UPDATE matches no row once the first has committed, and it returns ``False`` having
    written nothing. Outcomes are then written with ``... WHERE state IN ('scheduled',
    'started')``; if any of them matches no row, the event already has an outcome (first
    writer wins) and the whole transaction is rolled back. Signals a commit consumes are
    marked the same way (``... WHERE consumed_seq IS NULL``): a signal is consumed once.

Signals
    :meth:`SQLAlchemyStore.send_signal` locks the instance row (``SELECT ... FOR UPDATE``;
    ``BEGIN IMMEDIATE`` on SQLite) before it inserts the signal, as a commit takes the
    instance row before the signals it consumes: the two never wait on each other in
    opposite orders, and the signals of one instance are numbered in the order their
    transactions commit.

Consistent reads
    :meth:`SQLAlchemyStore.load` reads the instance joined with its events in a single
    statement, which sees one snapshot on every database. So the events returned are
    never newer, nor older, than the version returned.

Connections, SQLite and processes: see :mod:`celery_durable.stores.connections`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Executable,
    bindparam,
    case,
    cast,
    delete,
    func,
    insert,
    literal,
    null,
    or_,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy import exc as sa_exc

from celery_durable import faults
from celery_durable.engine.journal import Event, Instance, Kind, Signal, State, Status
from celery_durable.errors import StoreError
from celery_durable.stores.base import Commit, Ending, Events, StepStart
from celery_durable.stores.listing import Filters, count_query, list_query, pending_query
from celery_durable.stores.rows import (
    aware,
    check_restart,
    event_from_row,
    event_values,
    failure_text,
    instance_from_row,
    instance_values,
    outcome_values,
    patches_text,
    resent_seqs,
)
from celery_durable.stores.schema import (
    ACTIVE,
    UTCDateTime,
    events,
    instances,
    signals,
)
from celery_durable.stores.schema import events as events_table
from celery_durable.stores.step_transactions import StepTransactions
from celery_durable.stores.workers import WorkerRegistry

__all__ = ["SQLAlchemyStore"]

_PENDING = (State.SCHEDULED.value, State.STARTED.value)
_SQLITE_DUE = (
    "SELECT id FROM durable_instances INDEXED BY ix_durable_instances_due"
    f" WHERE {ACTIVE} AND wake_at <= :now ORDER BY wake_at LIMIT :limit"
)


class _Abort(Exception):
    """Roll the current transaction back; the operation reports ``False``."""


class SQLAlchemyStore(StepTransactions, WorkerRegistry):
    """The :class:`~celery_durable.stores.base.Store` on any SQLAlchemy 2 database.

    Args:
        url: a SQLAlchemy URL: ``sqlite:///relative.db``, ``sqlite:////abs/path.db``,
            ``postgresql+psycopg://user:password@host/db`` (``postgresql://`` and
            ``postgres://`` mean psycopg 3 too), or another dialect's.

    Raises:
        ConfigurationError: the URL is malformed, names an unknown dialect or an async
            driver, or its driver is not installed. Nothing connects before first use.
    """

    # ------------------------------------------------------------------ Store protocol

    def create(self, instance: Instance, events: Sequence[Event] = ()) -> tuple[Instance, bool]:
        """Insert ``instance`` (and its first ``events``) unless one with its id exists
        (see ``Store.create``)."""
        values = instance_values(instance)
        rows = [event_values(instance.id, e) for e in events]
        try:
            with self._transaction(write=True) as conn:
                conn.execute(insert(instances).values(**values))
                if rows:
                    conn.execute(insert(events_table), rows)
                    faults.point(faults.MID_COMMIT)  # a first pass's commit
        except StoreError as exc:
            if not isinstance(exc.__cause__, sa_exc.IntegrityError):
                raise
            existing = self.get(instance.id)
            if existing is None:  # an integrity error of another kind
                raise
            return existing, False
        return instance, True

    def wait_ended(self, instance_id: str, timeout: float) -> Ending | None:
        """Sleep ``timeout`` seconds (no notifications here; see ``Store.wait_ended``)."""
        time.sleep(max(timeout, 0.0))
        return None

    def get(self, instance_id: str) -> Instance | None:
        """The instance row alone, or ``None``."""
        with self._read() as conn:
            row = conn.execute(select(instances).where(instances.c.id == instance_id))
            found = row.mappings().one_or_none()
        return None if found is None else instance_from_row(found)

    def load(self, instance_id: str) -> tuple[Instance, list[Event]] | None:
        """The instance and its events ordered by ``seq``, from one snapshot, or ``None``.

        One statement (the instance joined with its events) is one round trip and sees
        one snapshot on every database, so the events are never newer than the version.
        """
        with self._read() as conn:
            return self._load(conn, instance_id)

    @staticmethod
    def _load(conn: Connection, instance_id: str) -> tuple[Instance, list[Event]] | None:
        # The instance row once, then its events (a join would repeat the instance's
        # columns, its input included, on every event row): one statement, one snapshot.
        head = select(
            literal(0).label("part"),
            *instances.c,
            *(cast(null(), c.type).label(f"e_{c.name}") for c in events.c),
        ).where(instances.c.id == instance_id)
        tail = select(
            literal(1).label("part"),
            *(cast(null(), c.type).label(c.name) for c in instances.c),
            *(c.label(f"e_{c.name}") for c in events.c),
        ).where(events.c.instance_id == instance_id)
        query = union_all(head, tail).order_by(text("part"), text("e_seq"))
        rows = conn.execute(query).mappings().all()
        if not rows or rows[0]["part"] != 0:
            return None
        return instance_from_row(rows[0]), [event_from_row(row) for row in rows[1:]]

    def commit(self, commit: Commit) -> bool:
        """Apply ``commit`` in one transaction if the version still matches.

        Returns:
            ``True`` if applied; ``False`` if the version moved, an outcome's event was
            no longer pending or a consumed signal was consumed already (or is not the
            instance's), in which case nothing was written.

        A restart (``restart_input``) deletes the instance's events and its consumed
        signals (those of the run it ends, including the ones this commit consumes)
        before inserting ``new_events``; unconsumed signals stay in the inbox.

        Raises:
            ValueError: ``restart_input`` given with ``outcomes`` or ``resent``.
        """
        check_restart(commit)
        restart = commit.restart_input is not None
        instance_values: dict[str, Any] = {
            "version": instances.c.version + 1,
            "status": Status(commit.status).value,
            "output": commit.output,
            "failure": failure_text(commit.failure),
            "updated_at": aware(commit.updated_at, "updated_at"),
            "wake_at": aware(commit.wake_at, "wake_at"),
            "custom_status": commit.custom_status,
        }
        if commit.consumed:
            instance_values["inbox"] = instances.c.inbox - len(commit.consumed)
        instance_values["note"] = commit.note
        instance_values["waiting_at"] = commit.waiting_at
        if commit.patches is not None:
            instance_values["patches"] = patches_text(commit.patches)
        if commit.code_version is not None:
            instance_values["code_version"] = commit.code_version
        if restart:
            instance_values["input"] = commit.restart_input
            instance_values["cancel_requested"] = False
            instance_values["run"] = instances.c.run + 1
        outcomes = [outcome_values(outcome) for outcome in commit.outcomes]
        resent = resent_seqs(commit)
        new_events = [event_values(commit.instance_id, e) for e in commit.new_events]
        try:
            with self._transaction(write=True) as conn:
                moved = conn.execute(
                    update(instances)
                    .where(
                        instances.c.id == commit.instance_id,
                        instances.c.version == commit.expected_version,
                    )
                    .values(**instance_values)
                )
                if moved.rowcount != 1:
                    raise _Abort
                if commit.rewind_from is not None:
                    # First: the rest of the commit applies to the journal left, so its
                    # own new events may consume the signals the tail gives back.
                    self._rewind(conn, commit.instance_id, commit.rewind_from)
                for seq, values in outcomes:
                    written = conn.execute(
                        update(events)
                        .where(
                            events.c.instance_id == commit.instance_id,
                            events.c.seq == seq,
                            events.c.state.in_(_PENDING),
                        )
                        .values(**values)
                    )
                    if written.rowcount != 1:
                        raise _Abort
                if commit.consumed:
                    consumed = dict(commit.consumed)
                    marked = conn.execute(
                        update(signals)
                        .where(
                            signals.c.instance_id == commit.instance_id,
                            signals.c.id.in_(list(consumed)),
                            signals.c.consumed_seq.is_(None),
                        )
                        .values(consumed_seq=case(consumed, value=signals.c.id))
                    )
                    # Fewer rows: a signal consumed already, not the instance's, or listed twice.
                    if marked.rowcount != len(commit.consumed):
                        raise _Abort
                if resent:
                    conn.execute(
                        update(events)
                        .where(
                            events.c.instance_id == commit.instance_id,
                            events.c.seq.in_(resent),
                            events.c.state.in_(_PENDING),
                        )
                        .values(
                            heartbeat_at=instance_values["updated_at"],
                            started_at=None,
                            state=State.SCHEDULED.value,
                            # A started step sent again: its worker was lost.
                            resends=events.c.resends
                            + case((events.c.state == State.STARTED.value, 1), else_=0),
                        )
                    )
                if restart:
                    # The old run's journal and the signals it consumed go; the inbox stays.
                    conn.execute(delete(events).where(events.c.instance_id == commit.instance_id))
                    conn.execute(
                        delete(signals).where(
                            signals.c.instance_id == commit.instance_id,
                            signals.c.consumed_seq.is_not(None),
                        )
                    )
                if new_events:
                    conn.execute(insert(events), new_events)
                faults.point(faults.MID_COMMIT)
        except _Abort:
            return False
        return True

    @staticmethod
    def _rewind(conn: Connection, instance_id: str, seq: int) -> None:
        """Delete the events from ``seq`` on; the signals they consumed go back to the inbox."""
        returned = conn.execute(
            update(signals)
            .where(signals.c.instance_id == instance_id, signals.c.consumed_seq >= seq)
            .values(consumed_seq=None)
        ).rowcount
        if returned:
            conn.execute(
                update(instances)
                .where(instances.c.id == instance_id)
                .values(inbox=instances.c.inbox + returned)
            )
        conn.execute(delete(events).where(events.c.instance_id == instance_id, events.c.seq >= seq))

    def start_step(
        self, instance_id: str, run: int, seq: int, name: str, at: datetime, wake_by: datetime
    ) -> StepStart:
        """Mark a pending step started and read the journal (see ``Store.start_step``)."""
        at = aware(at, "at")
        wake_by = aware(wake_by, "wake_by")
        with self._transaction(write=True) as conn:
            marked = self._lock_and_mark(
                conn,
                instance_id,
                run,
                update(events)
                .where(
                    events.c.instance_id == instance_id,
                    events.c.seq == seq,
                    events.c.kind == Kind.STEP.value,
                    events.c.name == name,
                    events.c.state.in_(_PENDING),
                )
                .values(
                    state=State.STARTED.value,
                    started_at=literal(at, UTCDateTime),
                    heartbeat_at=literal(at, UTCDateTime),
                    attempts=events.c.attempts + 1,
                ),
                wake_by,
            )
            journal = self._load(conn, instance_id)
        return StepStart(journal, marked)

    def reschedule_step(
        self, instance_id: str, run: int, seq: int, due: datetime, wake_by: datetime
    ) -> bool:
        """Put a step Celery retries back to scheduled until ``due`` (see
        ``Store.reschedule_step``)."""
        due = aware(due, "due")
        wake_by = aware(wake_by, "wake_by")
        with self._transaction(write=True) as conn:
            return self._lock_and_mark(
                conn,
                instance_id,
                run,
                update(events)
                .where(
                    events.c.instance_id == instance_id,
                    events.c.seq == seq,
                    events.c.state.in_(_PENDING),
                )
                .values(
                    state=State.SCHEDULED.value,
                    started_at=None,
                    heartbeat_at=literal(due, UTCDateTime),
                ),
                wake_by,
            )

    @staticmethod
    def _lock_and_mark(
        conn: Connection, instance_id: str, run: int, mark: Executable, wake_by: datetime
    ) -> bool:
        """Lock the instance row (as a commit does), apply ``mark`` to one event if the
        instance is on run ``run``, then bump the version and pull ``wake_at``."""
        row = (
            conn.execute(
                select(instances.c.run, instances.c.status, instances.c.wake_at)
                .where(instances.c.id == instance_id)
                .with_for_update()
            )
            .mappings()
            .one_or_none()
        )
        if row is None or row["run"] != run or Status(row["status"]).is_terminal:
            return False
        if conn.execute(mark).rowcount != 1:
            return False
        values: dict[str, Any] = {"version": instances.c.version + 1}
        wake_at = row["wake_at"]
        if Status(row["status"]) in (Status.PENDING, Status.RUNNING) and (
            wake_at is None or aware(wake_at, "wake_at") > wake_by
        ):
            values["wake_at"] = wake_by
        conn.execute(update(instances).where(instances.c.id == instance_id).values(**values))
        return True

    def heartbeat(
        self, instance_id: str, run: int, seq: int, at: datetime, wake_by: datetime
    ) -> bool:
        """Record a running step's sign of life (see ``Store.heartbeat``).

        One transaction. The event row is written first; the instance row is then locked
        with ``SKIP LOCKED`` and its ``wake_at`` pulled only if no commit holds it: a commit
        locks the instance before its events, so waiting for it here could deadlock, and
        the commit writes a fresh ``wake_at`` anyway (the next beat pulls it again).

        On PostgreSQL the transaction commits without waiting for its WAL flush
        (``synchronous_commit = off``): a beat lost in a database crash is harmless, and
        every running step sends one every few seconds.
        """
        at = aware(at, "at")
        wake_by = aware(wake_by, "wake_by")
        with self._transaction(write=True) as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SET LOCAL synchronous_commit = off"))
            beat = conn.execute(
                update(events)
                .where(
                    events.c.instance_id == instance_id,
                    events.c.seq == seq,
                    events.c.state.in_(_PENDING),
                    # Not a step waiting for a Celery retry (its due time is ahead): a
                    # beat of the run that asked for the retry, late, must not revive it.
                    or_(
                        events.c.state == State.STARTED.value,
                        events.c.heartbeat_at.is_(None),
                        events.c.heartbeat_at <= at,
                    ),
                    select(instances.c.run).where(instances.c.id == instance_id).scalar_subquery()
                    == run,
                )
                .values(
                    # Typed, so that the value is stored as UTC like every other timestamp.
                    state=State.STARTED.value,
                    started_at=func.coalesce(events.c.started_at, literal(at, UTCDateTime)),
                    heartbeat_at=at,
                    # The first beat of a run (sent or sent again) counts an attempt.
                    attempts=events.c.attempts + case((events.c.started_at.is_(None), 1), else_=0),
                )
            )
            if beat.rowcount != 1:
                return False
            later = conn.execute(
                select(instances.c.id)
                .where(
                    instances.c.id == instance_id,
                    text(ACTIVE),
                    or_(instances.c.wake_at.is_(None), instances.c.wake_at > wake_by),
                )
                .with_for_update(skip_locked=True)
            ).scalar_one_or_none()
            if later is not None:
                conn.execute(
                    update(instances).where(instances.c.id == instance_id).values(wake_at=wake_by)
                )
        return True

    def send_signal(
        self, instance_id: str, name: str, payload: str | None, at: datetime, wake_by: datetime
    ) -> Instance | None:
        """Put a signal in an unfinished instance's inbox (see ``Store.send_signal``)."""
        at = aware(at, "at")

        def add_signal(conn: Connection) -> dict[str, Any]:
            conn.execute(
                insert(signals).values(
                    instance_id=instance_id, name=name, payload=payload, sent_at=at
                )
            )
            return {"inbox": instances.c.inbox + 1}

        return self._change_unfinished(instance_id, wake_by, add_signal)

    def request_cancel(self, instance_id: str, wake_by: datetime) -> Instance | None:
        """Flag an unfinished instance ``cancel_requested`` (see ``Store.request_cancel``)."""
        return self._change_unfinished(
            instance_id, wake_by, lambda _conn: {"cancel_requested": True}
        )

    def pull_wake_at(self, instance_id: str, wake_by: datetime) -> bool:
        """Pull a live instance's ``wake_at`` (see ``Store.pull_wake_at``)."""
        before = self._change_unfinished(instance_id, wake_by, lambda _conn: {}, live=True)
        return before is not None and before.status in (Status.PENDING, Status.RUNNING)

    def _change_unfinished(
        self,
        instance_id: str,
        wake_by: datetime,
        change: Callable[[Connection], dict[str, Any]],
        *,
        live: bool = False,
    ) -> Instance | None:
        """Change an unfinished instance from outside its orchestrator (a signal, a cancel
        request): one transaction that locks the instance row first, as a commit does
        (``FOR UPDATE``; SQLite's ``BEGIN IMMEDIATE`` locks the database), applies
        ``change`` (its column values are added to the instance's update), bumps the
        version so a pass that read the instance before re-reads, and pulls a live
        instance's ``wake_at`` to ``wake_by``. A finished instance is left as it is (with
        ``live``, a stuck one too).

        Returns:
            The instance as it was before, or ``None`` if there is none.
        """
        wake_by = aware(wake_by, "wake_by")
        with self._transaction(write=True) as conn:
            row = (
                conn.execute(
                    select(instances).where(instances.c.id == instance_id).with_for_update()
                )
                .mappings()
                .one_or_none()
            )
            if row is None:
                return None
            before = instance_from_row(row)
            if before.status.is_terminal or (live and before.status is Status.STUCK):
                return before
            values = {**change(conn), "version": instances.c.version + 1}
            if before.status in (Status.PENDING, Status.RUNNING) and (
                before.wake_at is None or before.wake_at > wake_by
            ):
                values["wake_at"] = wake_by
            conn.execute(update(instances).where(instances.c.id == instance_id).values(**values))
        return before

    def get_many(self, instance_ids: Sequence[str]) -> list[Instance]:
        """The instances of these ids that exist, by one statement (none for no ids)."""
        ids = list(dict.fromkeys(instance_ids))
        if not ids:
            return []
        with self._read() as conn:
            rows = conn.execute(select(instances).where(instances.c.id.in_(ids))).mappings().all()
        return [instance_from_row(row) for row in rows]

    def signals(self, instance_id: str) -> list[Signal]:
        """The instance's unconsumed signals, oldest first (one statement)."""
        query = (
            select(signals.c.id, signals.c.name, signals.c.payload, signals.c.sent_at)
            .where(signals.c.instance_id == instance_id, signals.c.consumed_seq.is_(None))
            .order_by(signals.c.id)
        )
        with self._read() as conn:
            rows = conn.execute(query).all()
        return [Signal(id=row[0], name=row[1], payload=row[2], sent_at=row[3]) for row in rows]

    def claim_due(self, now: datetime, lease_until: datetime, limit: int) -> list[str]:
        """Claim due instances, oldest ``wake_at`` first (see ``Store.claim_due``).

        One transaction selects the due ids and moves their ``wake_at`` to
        ``lease_until``. Claimers cannot take an id twice: SQLite's ``BEGIN IMMEDIATE``
        runs them one after the other; on a server database the ``SELECT`` locks the rows
        it returns (``FOR UPDATE SKIP LOCKED``: a concurrent claimer skips them, and once
        this transaction commits they are no longer due).
        """
        now = aware(now, "now")
        lease_until = aware(lease_until, "lease_until")
        if limit <= 0:
            return []
        due: Executable
        if self._sqlite:
            # Without statistics SQLite prefers the status index, which holds every live
            # instance, and sorts them all; the due index reads the due ones in order.
            due = text(_SQLITE_DUE).bindparams(
                bindparam("now", now, type_=UTCDateTime), bindparam("limit", limit)
            )
        else:
            due = (
                select(instances.c.id)
                .where(text(ACTIVE), instances.c.wake_at <= now)
                .order_by(instances.c.wake_at)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        with self._transaction(write=True) as conn:
            claimed = list(conn.execute(due).scalars())
            if claimed:
                conn.execute(
                    update(instances).where(instances.c.id.in_(claimed)).values(wake_at=lease_until)
                )
        return claimed

    def list(
        self,
        *,
        status: Status | None = None,
        workflow: str | None = None,
        limit: int = 100,
        parent_id: str | None = None,
        code_version: str | None = None,
        id_prefix: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        before: tuple[datetime, str] | None = None,
        statuses: Sequence[Status] | None = None,
    ) -> list[Instance]:
        """Instances, newest (``created_at``, then id) first, filtered (see ``Store.list``)."""
        filters = Filters(workflow, parent_id, code_version, id_prefix, since, until)
        if status is not None:
            statuses = [*(statuses or ()), Status(status)] if statuses else [Status(status)]
        query = list_query(filters, statuses, before, limit)
        with self._transaction() as conn:
            rows = conn.execute(query).mappings().all()
        return [instance_from_row(row) for row in rows]

    def count_by_status(
        self,
        *,
        workflow: str | None = None,
        id_prefix: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> dict[Status, int]:
        """How many instances each status has, filtered as :meth:`list` filters."""
        query = count_query(Filters(workflow, None, None, id_prefix, since, until))
        with self._transaction() as conn:
            return {Status(status): count for status, count in conn.execute(query).all()}

    def pending_events(self, instance_ids: Sequence[str]) -> dict[str, Events]:
        """The pending events of each instance, by seq, in one read."""
        found: dict[str, Events] = {}
        if not instance_ids:
            return found
        with self._transaction() as conn:
            rows = conn.execute(pending_query(instance_ids)).mappings().all()
        for row in rows:
            found.setdefault(row["e_instance_id"], []).append(event_from_row(row))
        return found
