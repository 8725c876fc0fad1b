"""Connections of the SQL stores: one engine per process, transactions, errors, schema.

SQLite
    SQLite allows one writer at a time. With the ``sqlite3`` module's default transaction
    handling, a transaction that reads first and writes later takes the write lock only at
    its first write, and a concurrent writer then fails at once with "database is locked"
    (the busy timeout cannot help a transaction that already holds a read snapshot). So
    the store takes over transaction control (the recipe in SQLAlchemy's SQLite docs):
    ``sqlite3``'s own BEGIN is disabled and every write transaction starts with
    ``BEGIN IMMEDIATE``, which takes the write lock up front and waits up to
    ``busy_timeout`` for it. Writers from many processes queue instead of failing. The
    database runs in WAL mode (readers never block the writer nor the reverse),
    ``synchronous=NORMAL`` (durable against process crashes; an OS crash may lose the
    last commits, never corrupt the file) and with foreign keys enforced.

    Each process keeps a small pool of connections: closing the last connection to a WAL
    database checkpoints and deletes the WAL file, which made every call several times
    slower without a pool. A relative path is resolved against the working directory when
    the store is created (a daemonized worker changes its directory later). ``sqlite://``
    (in memory) keeps one connection for the life of the store object, shared by its
    threads one call at a time.

Processes
    The engine is created in the process that first uses the store and created again if
    the process id changed: prefork workers fork after the app (and its store) is
    imported, and a connection pool must never be shared across a fork. The child neither
    uses nor closes the connections it inherited (closing them could end the parent's
    PostgreSQL sessions or drop its SQLite file locks); they stay referenced, idle.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext, suppress
from typing import Any

from sqlalchemy import Connection, Engine, event, insert, select, text
from sqlalchemy import exc as sa_exc

from celery_durable.errors import ConfigurationError, SchemaVersionError, StoreError
from celery_durable.stores.engines import (
    BEGIN_OPTION,
    create_server_engine,
    create_sqlite_engine,
)
from celery_durable.stores.migrate import upgrade
from celery_durable.stores.schema import SCHEMA_VERSION, meta, metadata
from celery_durable.stores.urls import mask, parse_url

_SCHEMA_LOCK_KEY = 0x6475_7261_626C  # pg_advisory_xact_lock key: "durabl"


class SQLConnections:
    """A store's way to its database: the URL, this process's engine, short transactions
    and single-statement reads, database errors as :class:`StoreError`, and the schema
    (created, checked and upgraded once per store object).

    Args:
        url: a SQLAlchemy URL (see :class:`~celery_durable.stores.sqlalchemy.SQLAlchemyStore`).

    Raises:
        ConfigurationError: the URL is malformed, names an unknown dialect or an async
            driver, or its driver is not installed. Nothing connects before first use.
    """

    def __init__(self, url: str) -> None:
        self._url = parse_url(url)
        self._display = mask(self._url)
        self._sqlite = self._url.get_backend_name() == "sqlite"
        self._memory = self._sqlite and self._url.database in (None, "", ":memory:")
        self._engine: Engine | None = None
        self._engine_pid = 0
        self._inherited: list[Engine] = []  # engines of the parent process, never touched
        self._schema_ready = False
        self._lock = threading.Lock()
        # One in-memory SQLite connection serves every thread: calls take turns.
        self._serial: threading.RLock | None = threading.RLock() if self._memory else None
        _reset_locks_after_fork(self)

    @property
    def url(self) -> str:
        """The store's URL with its password masked."""
        return self._display

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._display!r})"

    def close(self) -> None:
        """Close the connections; the next call reconnects.

        An in-memory SQLite database lives as long as the store object: closing it keeps
        its one connection.
        """
        if self._memory:
            return
        with self._lock:
            if self._engine is not None and self._engine_pid != os.getpid():
                self._forget_inherited_engine()
            engine, self._engine = self._engine, None
            if engine is not None:
                # A connection another thread still has out (a heartbeat, a late worker
                # thread) is not closed by dispose(): it is closed when it comes back.
                engine.retired = True  # type: ignore[attr-defined]
                engine.dispose()

    # ------------------------------------------------------------------ connections

    @contextmanager
    def _transaction(self, *, write: bool = False) -> Iterator[Connection]:
        """One short transaction; database errors become :class:`StoreError`."""
        with self._errors(), self._serial or nullcontext():
            engine = self._ready_engine()
            with engine.connect() as conn:
                if self._sqlite:
                    conn.execution_options(
                        **{BEGIN_OPTION: "BEGIN IMMEDIATE" if write else "BEGIN"}
                    )
                with conn.begin():
                    yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """A connection for one read-only statement.

        On a server database it runs in autocommit: one statement is its own snapshot,
        and BEGIN/COMMIT would triple the round trips of the hottest reads.
        """
        if self._sqlite:
            with self._transaction() as conn:
                yield conn
            return
        with self._errors():
            engine = self._ready_engine()
            with engine.connect() as conn:
                conn.execution_options(isolation_level="AUTOCOMMIT")
                yield conn

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sa_exc.DBAPIError as exc:
            unavailable = isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError))
            what = "is unavailable" if unavailable else "failed"
            detail = str(exc.orig).strip() if exc.orig is not None else str(exc)
            raise StoreError(f"store {self._display} {what}: {detail}") from exc
        except sa_exc.TimeoutError as exc:
            raise StoreError(f"store {self._display} is unavailable: {exc}") from exc

    def _ready_engine(self) -> Engine:
        """This process's engine, with the schema checked once per store object."""
        pid = os.getpid()
        with self._lock:
            if self._engine is not None and self._engine_pid != pid:
                self._forget_inherited_engine()
            if self._engine is None:
                self._engine = self._create_engine()
                self._engine_pid = pid
            engine = self._engine
            if not self._schema_ready:
                self._ensure_schema(engine)
                self._schema_ready = True
        return engine

    def _forget_inherited_engine(self) -> None:
        """Set aside the engine this process inherited from its parent across a fork.

        Its pooled connections are the parent's: they are neither used nor closed here.
        """
        assert self._engine is not None
        self._inherited.append(self._engine)
        self._engine = None

    def _create_engine(self) -> Engine:
        try:
            if self._sqlite:
                return create_sqlite_engine(self._url, memory=self._memory)
            engine = create_server_engine(self._url)
        except (sa_exc.ArgumentError, TypeError) as exc:
            raise ConfigurationError(f"store URL {self._display} cannot be used: {exc}") from exc

        def close_if_retired(dbapi_connection: Any, record: Any) -> None:
            if getattr(engine, "retired", False):
                with suppress(Exception):
                    dbapi_connection.close()

        event.listen(engine, "checkin", close_if_retired)
        return engine

    def _ensure_schema(self, engine: Engine) -> None:
        """Create the tables if missing and check the recorded schema version.

        Safe when several processes do it at once: PostgreSQL serializes them with an
        advisory lock, SQLite with ``BEGIN IMMEDIATE``; on other databases a loser's
        duplicate-table or duplicate-key error is retried (it then finds the tables).
        """
        for attempt in range(3):
            try:
                with engine.connect() as conn:
                    if self._sqlite:
                        conn.execution_options(**{BEGIN_OPTION: "BEGIN IMMEDIATE"})
                    with conn.begin():
                        self._create_schema(conn)
                return
            except (sa_exc.IntegrityError, sa_exc.ProgrammingError):
                if attempt == 2:
                    raise

    def _create_schema(self, conn: Connection) -> None:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK_KEY})
        metadata.create_all(conn, checkfirst=True)
        recorded = conn.execute(
            select(meta.c.value).where(meta.c.key == "schema_version")
        ).scalar_one_or_none()
        if recorded is None:
            conn.execute(insert(meta).values(key="schema_version", value=str(SCHEMA_VERSION)))
            return
        try:
            version = int(recorded)
        except ValueError:
            raise StoreError(
                f"store {self._display}: durable_meta.schema_version is {recorded!r}, not a number"
            ) from None
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"store {self._display} has schema version {version}, newer than the "
                f"version {SCHEMA_VERSION} this celery_durable knows: upgrade celery_durable "
                "(pip install -U celery-durable) in every process that uses this store"
            )
        upgrade(conn, version)


def _reset_locks_after_fork(store: SQLConnections) -> None:
    """Give a forked child fresh locks: another thread may have held them at the fork."""
    ref = weakref.ref(store)

    def reset() -> None:
        alive = ref()
        if alive is not None:
            alive._lock = threading.Lock()
            if alive._serial is not None:
                alive._serial = threading.RLock()

    os.register_at_fork(after_in_child=reset)
