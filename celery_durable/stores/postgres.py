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
So are :meth:`PostgresStore.create` (an instance with its first pass's events),
:meth:`PostgresStore.get` and :meth:`PostgresStore.beat_worker`. The statements live in
:mod:`celery_durable.stores.pg_sql`; they run on the pooled psycopg connection itself
(:meth:`PostgresStore._raw`), and a commit that ends an instance wakes the processes
waiting for its result (:mod:`celery_durable.stores.notify`). Everything else is
inherited from :class:`~celery_durable.stores.sqlalchemy.SQLAlchemyStore`, and the same
contract suite runs against both.
"""

from __future__ import annotations

import dataclasses
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
from celery_durable.stores.notify import EndListener
from celery_durable.stores.pg_sql import (
    BEAT_WORKER,
    CLAIM_DUE,
    EVENT_COLUMNS,
    EVENTS_AT,
    GET,
    GET_MANY,
    HEARTBEAT,
    LOAD,
    REQUEST_CANCEL,
    SEND_SIGNAL,
    SIGNALS,
    START_STEP,
    commit_sql,
    create_sql,
    event_params,
)
from celery_durable.stores.rows import (
    aware,
    check_restart,
    failure_text,
    instance_values,
    patches_from,
    patches_text,
    resent_seqs,
)
from celery_durable.stores.sqlalchemy import SQLAlchemyStore

try:
    import psycopg
except ImportError:  # psycopg2 only: the statements go through SQLAlchemy
    psycopg = None  # type: ignore[assignment]


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
            params.update(event_params(f"n{i}", e))
        with self._raw() as db:
            made = db.execute(create_sql(len(events)), params).fetchone()[0]
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
            rows = db.execute(LOAD, {"id": instance_id}).fetchall()
        if not rows or rows[0][0] is None:
            return None
        return _instance(rows[0]), [_event(row[EVENTS_AT:]) for row in rows[1:]]

    def commit(self, commit: Commit) -> bool:
        """Apply ``commit`` as one statement if the version still matches (a restart as
        ``SQLAlchemyStore.commit`` describes)."""
        check_restart(commit)
        if commit.rewind_from is not None:
            return super().commit(commit)  # a durable.retry of a failed instance: rare
        restart = commit.restart_input is not None
        params: dict[str, Any] = {
            "note": commit.note,
            "waiting_at": commit.waiting_at,
            "patches": None if commit.patches is None else patches_text(commit.patches),
            "code_version": commit.code_version,
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
            params.update(event_params(f"n{i}", e))
        status = Status(commit.status)
        sql = commit_sql(
            len(commit.outcomes),
            len(commit.new_events),
            bool(resent),
            len(commit.consumed),
            restart,
            status.is_terminal or status is Status.STUCK,
            commit.patches is not None,
            commit.code_version is not None,
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
            rows = db.execute(START_STEP, params).fetchall()
        if not rows:
            return StepStart(None, False)
        tail = len(EVENT_COLUMNS.split(","))
        if rows[0][0] is None:
            return StepStart(None, False)
        attempts, version, wake_at, locked = rows[0][EVENTS_AT + tail : EVENTS_AT + tail + 4]
        instance = _instance(rows[0])
        found = [_event(row[EVENTS_AT:]) for row in rows[1:]]
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
            beat = db.execute(HEARTBEAT, params).fetchone()[0]
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
            row = db.execute(SEND_SIGNAL, params).fetchone()
        return None if row is None else _instance(row)

    def request_cancel(self, instance_id: str, wake_by: datetime) -> Instance | None:
        """Flag an instance ``cancel_requested`` as one statement (see
        ``Store.request_cancel``)."""
        params = {"id": instance_id, "wake_by": aware(wake_by, "wake_by")}
        with self._raw() as db:
            row = db.execute(REQUEST_CANCEL, params).fetchone()
        return None if row is None else _instance(row)

    def get(self, instance_id: str) -> Instance | None:
        """The instance row alone, by one prepared statement (``handle.result()`` polls it)."""
        with self._raw() as db:
            row = db.execute(GET, {"id": instance_id}).fetchone()
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
            db.execute(BEAT_WORKER, params).fetchone()

    def get_many(self, instance_ids: Sequence[str]) -> list[Instance]:
        """The instances of these ids that exist, by one statement (none for no ids)."""
        ids = list(dict.fromkeys(instance_ids))
        if not ids:
            return []
        with self._raw() as db:
            rows = db.execute(GET_MANY, {"ids": ids}).fetchall()
        return [_instance(row) for row in rows]

    def signals(self, instance_id: str) -> list[Signal]:
        """The instance's unconsumed signals, oldest first."""
        with self._raw() as db:
            rows = db.execute(SIGNALS, {"id": instance_id}).fetchall()
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
            return [row[0] for row in db.execute(CLAIM_DUE, params).fetchall()]


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
        code_version=row[18],
        patches=patches_from(row[19]),
        waiting_at=row[20],
        trace_context=row[21],
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
