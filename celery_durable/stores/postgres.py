"""The SQL store's PostgreSQL fast path: the hot calls as one round trip each.

Every step of every workflow reads its journal once (:meth:`PostgresStore.load`) and
commits once (:meth:`PostgresStore.commit`). Through SQLAlchemy's expression layer each
cost several milliseconds of Python and five round trips (BEGIN, three writes, COMMIT).
Here each is a single SQL statement, sent as-is to psycopg: the commit's writes are
data-modifying CTEs hanging off the compare-and-set ``UPDATE``, so the statement is its
own transaction and writes nothing unless the version (and, for outcomes, every event's
pending state) still matched. The statements are cached by shape, so psycopg prepares
them on the server after a few uses. The calls recovery makes often are single statements
too: :meth:`PostgresStore.start_step` (once per step run) and
:meth:`PostgresStore.heartbeat` (every few seconds per running step; neither transaction
waits for the WAL flush), :meth:`PostgresStore.claim_due` (the tick),
:meth:`PostgresStore.send_signal`, :meth:`PostgresStore.request_cancel`,
:meth:`PostgresStore.get_many` and :meth:`PostgresStore.signals`.
Everything else is inherited from
:class:`~celery_durable.stores.sqlalchemy.SQLAlchemyStore`, and the same contract suite
runs against both.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Connection

from celery_durable import faults
from celery_durable.engine.journal import Event, Failure, Instance, Kind, Signal, State, Status
from celery_durable.errors import StoreError
from celery_durable.stores.base import Commit, Ending, StepStart
from celery_durable.stores.notify import CHANNEL, ENDING_INLINE, EndListener
from celery_durable.stores.rows import (
    aware,
    check_restart,
    failure_text,
    instance_values,
    resent_seqs,
)
from celery_durable.stores.schema import ACTIVE
from celery_durable.stores.sqlalchemy import SQLAlchemyStore

try:
    import psycopg
except ImportError:  # psycopg2 only: the statements go through SQLAlchemy
    psycopg = None  # type: ignore[assignment]

_INSTANCE_COLUMNS = (
    "id, workflow, status, input, serializer, version, created_at, updated_at, output, "
    "failure, wake_at, custom_status, parent_id, inbox, cancel_requested, run, note, parent_close"
)
_EVENT_COLUMNS = (
    "seq, kind, name, input, state, output, failure, scheduled_at, started_at, "
    "completed_at, attempts, heartbeat_at, resends"
)
_EVENTS_AT = len(_INSTANCE_COLUMNS.split(","))
"""Where a :data:`_LOAD` row's event columns start."""
_PENDING = "('scheduled', 'started')"
_UNFINISHED = "status NOT IN ('completed', 'failed', 'cancelled')"

_INSTANCE_NULLS = ", ".join(["NULL"] * _EVENTS_AT)
_EVENT_NULLS = ", ".join(f"NULL AS {c.strip()}" for c in _EVENT_COLUMNS.split(","))

# The instance row once, then its events (never the instance's columns, its input
# included, repeated on every event row): one statement, one snapshot. PostgreSQL types
# each NULL column of the first branch from the second.
_LOAD = (
    f"SELECT {_INSTANCE_COLUMNS}, {_EVENT_NULLS} FROM durable_instances WHERE id = %(id)s"
    f" UNION ALL SELECT {_INSTANCE_NULLS}, {_EVENT_COLUMNS} FROM durable_events"
    " WHERE instance_id = %(id)s ORDER BY seq NULLS FIRST"
)


_HEARTBEAT = (
    "WITH beat AS (UPDATE durable_events"
    " SET state = 'started', started_at = COALESCE(started_at, %(at)s),"
    " heartbeat_at = %(at)s,"
    # The first beat of a run (sent or sent again: started_at unset) counts an attempt.
    " attempts = attempts + CASE WHEN started_at IS NULL THEN 1 ELSE 0 END"
    " WHERE instance_id = %(id)s AND seq = %(seq)s"
    f" AND state IN {_PENDING}"
    " AND (SELECT run FROM durable_instances WHERE id = %(id)s) = %(run)s"
    " RETURNING instance_id),"
    # Writes only if `beat` did, and skips an instance row a commit holds: commits lock
    # the instance before its events, so waiting for it here could deadlock.
    " pulled AS (UPDATE durable_instances SET wake_at = %(wake_by)s WHERE id ="
    " (SELECT id FROM durable_instances WHERE id = %(id)s"
    f" AND {ACTIVE} AND (wake_at IS NULL OR wake_at > %(wake_by)s)"
    " AND EXISTS (SELECT 1 FROM beat) FOR UPDATE SKIP LOCKED))"
    # SET LOCAL, for the statement's own transaction: commit without the WAL flush.
    " SELECT (SELECT count(*) FROM beat), set_config('synchronous_commit', 'off', true)"
)

# The instance row is locked first (as a commit does) and read as it is before the signal;
# the signal is inserted after the lock, so one instance's signals are numbered in the
# order their statements commit. The UPDATE finds the row this statement locked (and, as
# READ COMMITTED re-reads a row that changed, computes from its latest version).
_SEND_SIGNAL = (
    f"WITH before AS (SELECT {_INSTANCE_COLUMNS} FROM durable_instances"
    " WHERE id = %(id)s FOR UPDATE),"
    " sent AS (INSERT INTO durable_signals (instance_id, name, payload, sent_at)"
    f" SELECT id, %(name)s, %(payload)s, %(at)s FROM before WHERE {_UNFINISHED}"
    " RETURNING instance_id),"
    " bumped AS (UPDATE durable_instances i SET inbox = i.inbox + 1,"
    " version = i.version + 1, wake_at = CASE"
    f" WHEN i.{ACTIVE} AND (i.wake_at IS NULL"
    " OR i.wake_at > %(wake_by)s) THEN %(wake_by)s ELSE i.wake_at END"
    " FROM sent WHERE i.id = sent.instance_id)"
    f" SELECT {_INSTANCE_COLUMNS} FROM before"
)

# As _SEND_SIGNAL: the row locked and read first, then flagged unless finished.
_REQUEST_CANCEL = (
    f"WITH before AS (SELECT {_INSTANCE_COLUMNS} FROM durable_instances"
    " WHERE id = %(id)s FOR UPDATE),"
    " flagged AS (UPDATE durable_instances i SET cancel_requested = true,"
    " version = i.version + 1, wake_at = CASE"
    f" WHEN i.{ACTIVE} AND (i.wake_at IS NULL"
    " OR i.wake_at > %(wake_by)s) THEN %(wake_by)s ELSE i.wake_at END"
    f" FROM before WHERE i.id = before.id AND i.{_UNFINISHED})"
    f" SELECT {_INSTANCE_COLUMNS} FROM before"
)

# The instance row is locked first (as a commit does); the step is marked started only if
# the instance is on that run and the event is a pending step of that name; only then is
# the version bumped and wake_at pulled. The journal is read in the same statement (from
# its snapshot: before the mark, which the caller applies from the last columns). The
# snapshot predates a commit the lock waited for; the version of the row locked (the
# latest: READ COMMITTED re-reads a row that changed) tells the caller to read again.
_START_STEP = (
    "WITH inst AS (SELECT id, version FROM durable_instances WHERE id = %(id)s AND run = %(run)s"
    f" AND {_UNFINISHED} FOR UPDATE),"
    " mark AS (UPDATE durable_events e SET state = 'started', started_at = %(at)s,"
    " heartbeat_at = %(at)s, attempts = e.attempts + 1 FROM inst"
    " WHERE e.instance_id = inst.id AND e.seq = %(seq)s AND e.kind = 'step'"
    f" AND e.name = %(name)s AND e.state IN {_PENDING} RETURNING e.attempts),"
    " bump AS (UPDATE durable_instances i SET version = i.version + 1, wake_at = CASE"
    f" WHEN i.{ACTIVE} AND (i.wake_at IS NULL OR i.wake_at > %(wake_by)s)"
    " THEN %(wake_by)s ELSE i.wake_at END FROM inst"
    " WHERE i.id = inst.id AND EXISTS (SELECT 1 FROM mark) RETURNING i.version, i.wake_at)"
    f" SELECT {_INSTANCE_COLUMNS}, {_EVENT_NULLS},"
    " (SELECT attempts FROM mark), (SELECT version FROM bump), (SELECT wake_at FROM bump),"
    " (SELECT version FROM inst),"
    # A lost start mark (a database crash) only delays recovery: no WAL flush wait.
    " set_config('synchronous_commit', 'off', true)"
    " FROM durable_instances WHERE id = %(id)s"
    # The events after the instance row, which is not repeated on each of them.
    f" UNION ALL SELECT {_INSTANCE_NULLS}, {_EVENT_COLUMNS}, NULL, NULL, NULL, NULL, NULL"
    " FROM durable_events WHERE instance_id = %(id)s ORDER BY seq NULLS FIRST"
)

_GET_MANY = f"SELECT {_INSTANCE_COLUMNS} FROM durable_instances WHERE id = ANY(%(ids)s::text[])"
_GET = f"SELECT {_INSTANCE_COLUMNS} FROM durable_instances WHERE id = %(id)s"

# One statement; a beat lost in a database crash is harmless (the next one comes within a
# heartbeat interval): no WAL flush wait, as for a step's heartbeat.
_BEAT_WORKER = (
    "WITH beat AS (INSERT INTO durable_workers (worker_id, beat_at, reserved)"
    " VALUES (%(id)s, %(at)s, %(reserved)s) ON CONFLICT (worker_id) DO UPDATE"
    " SET beat_at = EXCLUDED.beat_at, reserved = EXCLUDED.reserved RETURNING 1)"
    " SELECT (SELECT count(*) FROM beat), set_config('synchronous_commit', 'off', true)"
)

_SIGNALS = (
    "SELECT id, name, payload, sent_at FROM durable_signals"
    " WHERE instance_id = %(id)s AND consumed_seq IS NULL ORDER BY id"
)

_CLAIM_DUE = (
    "WITH due AS (SELECT id, wake_at FROM durable_instances"
    f" WHERE {ACTIVE} AND wake_at <= %(now)s"
    " ORDER BY wake_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED),"
    " claimed AS (UPDATE durable_instances i SET wake_at = %(lease_until)s FROM due"
    " WHERE i.id = due.id RETURNING i.id, due.wake_at)"
    " SELECT id FROM claimed ORDER BY wake_at"
)


def _event_rows(count: int) -> str:
    """``VALUES`` rows for ``count`` new events, parameters ``n<i>_<column>``."""
    return ", ".join(
        f"(%(n{i}_seq)s::int, %(n{i}_kind)s::text, %(n{i}_name)s::text,"
        f" %(n{i}_input)s::text, %(n{i}_state)s::text, %(n{i}_output)s::text,"
        f" %(n{i}_failure)s::text, %(n{i}_scheduled_at)s::timestamptz,"
        f" %(n{i}_started_at)s::timestamptz, %(n{i}_completed_at)s::timestamptz,"
        f" %(n{i}_attempts)s::int, %(n{i}_heartbeat_at)s::timestamptz,"
        f" %(n{i}_resends)s::int)"
        for i in range(count)
    )


@functools.lru_cache(maxsize=64)
def _commit_sql(
    outcomes: int,
    new_events: int,
    resent: bool,
    consumed: int = 0,
    restart: bool = False,
    ends: bool = False,
) -> str:
    """The commit statement for this many outcomes, new events and consumed signals (and
    resent steps, and a restart)."""
    check = (
        f" AND (SELECT count(*) FROM durable_events WHERE instance_id = %(id)s"
        f" AND seq = ANY(%(outcome_seqs)s) AND state IN {_PENDING}) = {outcomes}"
        if outcomes
        else ""
    )
    inbox = ""
    if consumed:
        # Every consumed signal must still be the instance's and unconsumed (a repeated id
        # counts once, so it fails the check too), or nothing is written.
        check += (
            " AND (SELECT count(*) FROM durable_signals WHERE instance_id = %(id)s"
            " AND id = ANY(%(signal_ids)s::bigint[]) AND consumed_seq IS NULL)"
            f" = {consumed}"
        )
        inbox = f", inbox = inbox - {consumed}"
    if restart:
        inbox += ", input = %(restart_input)s, cancel_requested = false, run = run + 1"
    parts = [
        "WITH moved AS (UPDATE durable_instances SET version = version + 1,"
        " status = %(status)s, output = %(output)s, failure = %(failure)s,"
        " updated_at = %(updated_at)s, wake_at = %(wake_at)s, note = %(note)s,"
        f" custom_status = %(custom_status)s{inbox}"
        f" WHERE id = %(id)s AND version = %(expected)s{check} RETURNING id, version)"
    ]
    if restart:
        # The old run's journal and the signals it consumed go (those this commit consumes
        # too: checked unconsumed above, deleted rather than marked); the inbox stays.
        consumed_now = " OR s.id = ANY(%(signal_ids)s::bigint[])" if consumed else ""
        parts.append(
            "wiped AS (DELETE FROM durable_events e USING moved"
            " WHERE e.instance_id = moved.id RETURNING e.seq)"
        )
        parts.append(
            "dropped AS (DELETE FROM durable_signals s USING moved"
            f" WHERE s.instance_id = moved.id AND (s.consumed_seq IS NOT NULL{consumed_now}))"
        )
    elif consumed:
        parts.append(
            "consumed AS (UPDATE durable_signals AS s SET consumed_seq = v.seq"
            " FROM moved, unnest(%(signal_ids)s::bigint[], %(signal_seqs)s::int[])"
            " AS v(id, seq)"
            " WHERE s.instance_id = moved.id AND s.id = v.id AND s.consumed_seq IS NULL)"
        )
    if outcomes:
        rows = ", ".join(
            f"(%(o{i}_seq)s::int, %(o{i}_state)s::text, %(o{i}_output)s::text,"
            f" %(o{i}_failure)s::text, %(o{i}_completed_at)s::timestamptz,"
            f" %(o{i}_attempts)s::int, %(o{i}_started_at)s::timestamptz)"
            for i in range(outcomes)
        )
        parts.append(
            "outcome AS (UPDATE durable_events AS e SET state = v.state, output = v.output,"
            " failure = v.failure, completed_at = v.completed_at,"
            " attempts = GREATEST(e.attempts, v.attempts),"
            " started_at = COALESCE(v.started_at, e.started_at)"
            f" FROM moved, (VALUES {rows}) AS v(seq, state, output, failure, completed_at,"
            " attempts, started_at)"
            f" WHERE e.instance_id = moved.id AND e.seq = v.seq AND e.state IN {_PENDING})"
        )
    if resent:
        parts.append(
            "resent AS (UPDATE durable_events AS e SET heartbeat_at = %(updated_at)s,"
            " started_at = NULL, state = 'scheduled',"
            # A started step sent again: its worker was lost.
            " resends = e.resends + CASE WHEN e.state = 'started' THEN 1 ELSE 0 END"
            " FROM moved WHERE e.instance_id = moved.id"
            f" AND e.seq = ANY(%(resent)s::int[]) AND e.state IN {_PENDING})"
        )
    if new_events:
        rows = _event_rows(new_events)
        # After a restart's DELETE has run to its end (the count is computed before the
        # first row is inserted), so the new seqs do not collide with the old run's.
        after_wipe = " WHERE (SELECT count(*) FROM wiped) >= 0" if restart else ""
        parts.append(
            f"inserted AS (INSERT INTO durable_events (instance_id, {_EVENT_COLUMNS})"
            f" SELECT moved.id, v.* FROM moved, (VALUES {rows}) AS v({_EVENT_COLUMNS})"
            f"{after_wipe})"
        )
    if ends:
        # Wakes handle.result() waiters (stores/notify.py) when the transaction commits.
        # The ending itself rides along when it fits in a notification (8000 bytes).
        parts.append(
            f"ended AS (SELECT pg_notify('{CHANNEL}', CASE WHEN"
            " coalesce(octet_length(%(output)s::text), 0)"
            f" + coalesce(octet_length(%(failure)s::text), 0) < {ENDING_INLINE}"
            " THEN json_build_array(id, version, %(status)s::text, %(output)s::text,"
            " %(failure)s::text)::text ELSE json_build_array(id)::text END) FROM moved)"
        )
        return (
            ", ".join(parts) + " SELECT (SELECT count(*) FROM moved), (SELECT count(*) FROM ended)"
        )
    return ", ".join(parts) + " SELECT count(*) FROM moved"


@functools.lru_cache(maxsize=16)
def _create_sql(new_events: int) -> str:
    """Insert an instance (nothing on a duplicate id) and its first events, one statement."""
    columns = [c.strip() for c in _INSTANCE_COLUMNS.split(",")]
    sql = (
        f"WITH made AS (INSERT INTO durable_instances ({', '.join(columns)})"
        f" VALUES ({', '.join(f'%(i_{c})s' for c in columns)})"
        " ON CONFLICT (id) DO NOTHING RETURNING id)"
    )
    if new_events:
        rows = _event_rows(new_events)
        sql += (
            f", inserted AS (INSERT INTO durable_events (instance_id, {_EVENT_COLUMNS})"
            f" SELECT made.id, v.* FROM made, (VALUES {rows}) AS v({_EVENT_COLUMNS}))"
        )
    return sql + " SELECT count(*) FROM made"


def _event_params(prefix: str, e: Event) -> dict[str, Any]:
    return {
        f"{prefix}_seq": e.seq,
        f"{prefix}_kind": Kind(e.kind).value,
        f"{prefix}_name": e.name,
        f"{prefix}_input": e.input,
        f"{prefix}_state": State(e.state).value,
        f"{prefix}_output": e.output,
        f"{prefix}_failure": failure_text(e.failure),
        f"{prefix}_scheduled_at": aware(e.scheduled_at, "scheduled_at"),
        f"{prefix}_started_at": aware(e.started_at, "started_at"),
        f"{prefix}_completed_at": aware(e.completed_at, "completed_at"),
        f"{prefix}_attempts": e.attempts,
        f"{prefix}_heartbeat_at": aware(e.heartbeat_at, "heartbeat_at"),
        f"{prefix}_resends": e.resends,
    }


class PostgresStore(SQLAlchemyStore):
    """The SQL store on PostgreSQL, with single-statement :meth:`load` and :meth:`commit`."""

    _listener: EndListener | None = None

    @contextmanager
    def _raw(self) -> Iterator[Any]:
        """A pooled psycopg 3 connection, in autocommit, for one statement.

        The hot calls are single statements; going through SQLAlchemy's ``Connection``
        cost ~0.3 ms each in result metadata and isolation-level bookkeeping (more than
        the round trip). The connection still comes from (and goes back to) the engine's
        pool, pinged there when idle; it is back in transaction mode when returned. A
        connection found broken is discarded from the pool. Another driver (psycopg2)
        goes through SQLAlchemy, whose results answer ``fetchone``/``fetchall`` alike.
        """
        with self._errors():
            engine = self._ready_engine()
            try:
                fairy = engine.raw_connection()
            except Exception as exc:  # the pool raises the driver's own errors
                if psycopg is not None and isinstance(exc, psycopg.Error):
                    raise _store_error(self.url, exc) from exc
                raise
        driver = fairy.driver_connection
        if psycopg is None or not isinstance(driver, psycopg.Connection):
            fairy.close()
            with self._read() as conn:
                yield _Statements(conn)
            return
        try:
            driver.autocommit = True
            try:
                dispatch = engine.dispatch
                if dispatch.before_cursor_execute or dispatch.after_cursor_execute:
                    yield _Reported(driver, engine)  # instrumentation sees these too
                else:
                    yield driver
            finally:
                if not driver.broken:
                    driver.autocommit = False
        except psycopg.Error as exc:
            if driver.broken or driver.closed:
                fairy.invalidate(exc)
            raise _store_error(self.url, exc) from exc
        finally:
            fairy.close()

    def create(self, instance: Instance, events: Sequence[Event] = ()) -> tuple[Instance, bool]:
        """Insert ``instance`` and its first ``events`` as one statement unless the id
        exists (see ``Store.create``)."""
        params = {f"i_{key}": value for key, value in instance_values(instance).items()}
        for i, e in enumerate(events):
            params.update(_event_params(f"n{i}", e))
        with self._raw() as db:
            made = db.execute(_create_sql(len(events)), params).fetchone()[0]
            if events:
                faults.point(faults.MID_COMMIT)  # a first pass's commit
        if made == 1:
            return instance, True
        existing = self.get(instance.id)
        if existing is None:  # deleted between the two statements: try again
            return self.create(instance, events)
        return existing, False

    def load(self, instance_id: str) -> tuple[Instance, list[Event]] | None:
        """The instance and its events, by one statement (one snapshot, one round trip)."""
        with self._raw() as db:
            rows = db.execute(_LOAD, {"id": instance_id}).fetchall()
        if not rows or rows[0][0] is None:
            return None
        return _instance(rows[0]), [_event(row[_EVENTS_AT:]) for row in rows[1:]]

    def commit(self, commit: Commit) -> bool:
        """Apply ``commit`` as one statement if the version still matches (a restart as
        ``SQLAlchemyStore.commit`` describes)."""
        check_restart(commit)
        if commit.rewind_from is not None:
            return super().commit(commit)  # a durable.retry of a failed instance: rare
        restart = commit.restart_input is not None
        params: dict[str, Any] = {
            "note": commit.note,
            "id": commit.instance_id,
            "expected": commit.expected_version,
            "status": Status(commit.status).value,
            "output": commit.output,
            "failure": failure_text(commit.failure),
            "updated_at": aware(commit.updated_at, "updated_at"),
            "wake_at": aware(commit.wake_at, "wake_at"),
            "custom_status": commit.custom_status,
        }
        if restart:
            params["restart_input"] = commit.restart_input
        if commit.outcomes:
            params["outcome_seqs"] = [e.seq for e in commit.outcomes]
        resent = resent_seqs(commit)
        if resent:
            params["resent"] = resent
        if commit.consumed:
            params["signal_ids"] = [signal_id for signal_id, _ in commit.consumed]
            params["signal_seqs"] = [seq for _, seq in commit.consumed]
        for i, e in enumerate(commit.outcomes):
            if not State(e.state).is_final:
                raise ValueError(f"outcome for event {e.seq} has state {e.state!r}, not final")
            params.update(
                {
                    f"o{i}_seq": e.seq,
                    f"o{i}_state": State(e.state).value,
                    f"o{i}_output": e.output,
                    f"o{i}_failure": failure_text(e.failure),
                    f"o{i}_completed_at": aware(e.completed_at, "completed_at"),
                    f"o{i}_attempts": e.attempts,
                    f"o{i}_started_at": aware(e.started_at, "started_at"),
                }
            )
        for i, e in enumerate(commit.new_events):
            params.update(_event_params(f"n{i}", e))
        status = Status(commit.status)
        sql = _commit_sql(
            len(commit.outcomes),
            len(commit.new_events),
            bool(resent),
            len(commit.consumed),
            restart,
            status.is_terminal or status is Status.STUCK,
        )
        with self._raw() as db:
            moved = db.execute(sql, params).fetchone()
            faults.point(faults.MID_COMMIT)
        return moved is not None and moved[0] == 1

    def wait_ended(self, instance_id: str, timeout: float) -> Ending | None:
        """Block up to ``timeout`` seconds or until a commit ends the instance (PostgreSQL
        NOTIFY, heard by one listening connection per process: ``stores/notify.py``)."""
        listener = self._listener
        if listener is None:
            with self._lock:
                listener = self._listener
                if listener is None:
                    listener = self._listener = EndListener(self._listen_connection)
        return listener.wait(instance_id, timeout)

    def _listen_connection(self) -> Any:
        import psycopg

        engine = self._ready_engine()
        args, kwargs = engine.dialect.create_connect_args(engine.url)
        return psycopg.connect(*args, **{**kwargs, "autocommit": True})

    def close(self) -> None:
        """Release connections, and stop listening for ended instances."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        super().close()

    def start_step(
        self, instance_id: str, run: int, seq: int, name: str, at: datetime, wake_by: datetime
    ) -> StepStart:
        """Mark a pending step started and read the journal, as one statement (see
        ``Store.start_step``); its transaction does not wait for the WAL flush."""
        at = aware(at, "at")
        params = {
            "id": instance_id,
            "run": run,
            "seq": seq,
            "name": name,
            "at": at,
            "wake_by": aware(wake_by, "wake_by"),
        }
        with self._raw() as db:
            rows = db.execute(_START_STEP, params).fetchall()
        if not rows:
            return StepStart(None, False)
        tail = len(_EVENT_COLUMNS.split(","))
        if rows[0][0] is None:
            return StepStart(None, False)
        attempts, version, wake_at, locked = rows[0][_EVENTS_AT + tail : _EVENTS_AT + tail + 4]
        instance = _instance(rows[0])
        found = [_event(row[_EVENTS_AT:]) for row in rows[1:]]
        if attempts is None:
            if locked != instance.version and (
                locked is not None or (instance.run == run and not instance.status.is_terminal)
            ):
                # The lock waited for a commit (which may have journaled the step, or
                # restarted or finished the instance): the snapshot is older than it.
                return StepStart(self.load(instance_id), False)
            return StepStart((instance, found), False)
        index = next((i for i, e in enumerate(found) if e.seq == seq), None)
        if version != instance.version + 1 or index is None:
            # The snapshot predates a commit the mark waited for: read again.
            return StepStart(self.load(instance_id), True)
        instance.version = version
        instance.wake_at = _utc(wake_at)
        found[index] = dataclasses.replace(
            found[index],
            state=State.STARTED,
            started_at=_utc(at),
            heartbeat_at=_utc(at),
            attempts=attempts,
        )
        return StepStart((instance, found), True)

    def heartbeat(
        self, instance_id: str, run: int, seq: int, at: datetime, wake_by: datetime
    ) -> bool:
        """Record a running step's sign of life as one statement (see ``Store.heartbeat``).

        Its transaction commits without waiting for the WAL flush: a beat lost in a
        database crash is harmless, and every running step sends one every few seconds.
        """
        params = {
            "id": instance_id,
            "run": run,
            "seq": seq,
            "at": aware(at, "at"),
            "wake_by": aware(wake_by, "wake_by"),
        }
        with self._raw() as db:
            beat = db.execute(_HEARTBEAT, params).fetchone()[0]
        return bool(beat == 1)

    def send_signal(
        self, instance_id: str, name: str, payload: str | None, at: datetime, wake_by: datetime
    ) -> Instance | None:
        """Put a signal in an instance's inbox as one statement (see ``Store.send_signal``)."""
        params = {
            "id": instance_id,
            "name": name,
            "payload": payload,
            "at": aware(at, "at"),
            "wake_by": aware(wake_by, "wake_by"),
        }
        with self._raw() as db:
            row = db.execute(_SEND_SIGNAL, params).fetchone()
        return None if row is None else _instance(row)

    def request_cancel(self, instance_id: str, wake_by: datetime) -> Instance | None:
        """Flag an instance ``cancel_requested`` as one statement (see
        ``Store.request_cancel``)."""
        params = {"id": instance_id, "wake_by": aware(wake_by, "wake_by")}
        with self._raw() as db:
            row = db.execute(_REQUEST_CANCEL, params).fetchone()
        return None if row is None else _instance(row)

    def get(self, instance_id: str) -> Instance | None:
        """The instance row alone, by one prepared statement (``handle.result()`` polls it)."""
        with self._raw() as db:
            row = db.execute(_GET, {"id": instance_id}).fetchone()
        return None if row is None else _instance(row)

    def beat_worker(
        self, worker_id: str, at: datetime, held: Sequence[tuple[str, int, int]]
    ) -> None:
        """Record a worker main process's beat as one statement (see
        ``Store.beat_worker``), without waiting for the WAL flush."""
        params = {
            "id": worker_id,
            "at": aware(at, "at"),
            "reserved": json.dumps([list(step) for step in held]),
        }
        with self._raw() as db:
            db.execute(_BEAT_WORKER, params).fetchone()

    def get_many(self, instance_ids: Sequence[str]) -> list[Instance]:
        """The instances of these ids that exist, by one statement (none for no ids)."""
        ids = list(dict.fromkeys(instance_ids))
        if not ids:
            return []
        with self._raw() as db:
            rows = db.execute(_GET_MANY, {"ids": ids}).fetchall()
        return [_instance(row) for row in rows]

    def signals(self, instance_id: str) -> list[Signal]:
        """The instance's unconsumed signals, oldest first."""
        with self._raw() as db:
            rows = db.execute(_SIGNALS, {"id": instance_id}).fetchall()
        return [
            Signal(id=row[0], name=row[1], payload=row[2], sent_at=row[3].astimezone(timezone.utc))
            for row in rows
        ]

    def claim_due(self, now: datetime, lease_until: datetime, limit: int) -> list[str]:
        """Claim due instances as one statement (see ``Store.claim_due``)."""
        params = {
            "now": aware(now, "now"),
            "lease_until": aware(lease_until, "lease_until"),
            "limit": limit,
        }
        if limit <= 0:
            return []
        with self._raw() as db:
            return [row[0] for row in db.execute(_CLAIM_DUE, params).fetchall()]


def _store_error(url: str, exc: Exception) -> StoreError:
    """A psycopg error as the store's error (as ``SQLConnections._errors`` words them)."""
    assert psycopg is not None
    unavailable = isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError))
    what = "is unavailable" if unavailable else "failed"
    return StoreError(f"store {url} {what}: {str(exc).strip()}")


class _Reported:
    """A psycopg connection whose statements are reported to the engine's
    ``before_cursor_execute`` / ``after_cursor_execute`` listeners (SQL instrumentation,
    such as OpenTelemetry's for SQLAlchemy, and the tests' statement counts), as
    SQLAlchemy reports its own."""

    def __init__(self, driver: Any, engine: Any) -> None:
        self._driver = driver
        self._dispatch = engine.dispatch

    def execute(self, sql: str, params: Any) -> Any:
        cursor = self._driver.cursor()
        for listener in self._dispatch.before_cursor_execute:
            listener(None, cursor, sql, params, None, False)
        cursor.execute(sql, params)
        for listener in self._dispatch.after_cursor_execute:
            listener(None, cursor, sql, params, None, False)
        return cursor


class _Statements:
    """``execute(sql, params)`` on a SQLAlchemy connection, for drivers other than psycopg 3."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Any) -> Any:
        return self._conn.exec_driver_sql(sql, params)


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else value.astimezone(timezone.utc)


def _failure(value: str | None) -> Failure | None:
    return None if value is None else Failure.from_dict(json.loads(value))


def _instance(row: Sequence[Any]) -> Instance:
    return Instance(
        id=row[0],
        workflow=row[1],
        status=Status(row[2]),
        input=row[3],
        serializer=row[4],
        version=row[5],
        created_at=row[6].astimezone(timezone.utc),
        updated_at=row[7].astimezone(timezone.utc),
        output=row[8],
        failure=_failure(row[9]),
        wake_at=_utc(row[10]),
        custom_status=row[11],
        parent_id=row[12],
        inbox=row[13],
        cancel_requested=row[14],
        run=row[15],
        note=row[16],
        parent_close=row[17],
    )


def _event(row: Sequence[Any]) -> Event:
    return Event(
        seq=row[0],
        kind=Kind(row[1]),
        name=row[2],
        input=row[3],
        state=State(row[4]),
        output=row[5],
        failure=_failure(row[6]),
        scheduled_at=row[7].astimezone(timezone.utc),
        started_at=_utc(row[8]),
        completed_at=_utc(row[9]),
        attempts=row[10],
        heartbeat_at=_utc(row[11]),
        resends=row[12],
    )
