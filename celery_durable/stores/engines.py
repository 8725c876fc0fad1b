"""The SQLAlchemy engines the SQL store runs on: a server database's, or SQLite's.

SQLite gets WAL (readers never wait for the writer), a busy timeout, and transactions the
store begins itself (``BEGIN IMMEDIATE`` for writes, through :data:`BEGIN_OPTION`), since
sqlite3's own implicit BEGIN would take the write lock too late.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL
from sqlalchemy.pool import QueuePool, StaticPool

SQLITE_BUSY_TIMEOUT = 30.0
"""Seconds a SQLite writer waits for the write lock before failing."""

CONNECT_TIMEOUT = 10
"""Seconds to wait for a server database to accept a connection."""

BEGIN_OPTION = "celery_durable_begin"
"""Execution option naming the statement a SQLite transaction begins with."""


IDLE_PING = 1.0
"""Seconds a pooled server connection may sit idle before it is pinged at checkout."""


def create_server_engine(url: URL) -> Engine:
    """A pooled engine for a server database.

    A connection that sat in the pool for more than :data:`IDLE_PING` seconds is pinged
    when checked out, and replaced if the server is gone (a restarted or failed-over
    database is survived without an error). SQLAlchemy's ``pool_pre_ping`` pings at every
    checkout, which cost a round trip per store call (131 pings for 122 statements on a
    busy worker); a connection used within the last second is not pinged. The rare call
    that meets a server that died within that second fails with ``StoreError``, which
    every caller already handles (a step keeps journaling its outcome, a pass is
    retried, the tick tries again), and SQLAlchemy then discards every connection the
    pool held, so the next call reconnects.
    """
    connect_args: dict[str, Any] = {}
    if url.get_driver_name() == "psycopg" and "connect_timeout" not in url.query:
        connect_args["connect_timeout"] = CONNECT_TIMEOUT
    engine = create_engine(url, pool_size=5, max_overflow=10, connect_args=connect_args)
    event.listen(engine, "checkin", _note_checkin)
    event.listen(engine, "checkout", _ping_if_idle)
    return engine


def _note_checkin(_dbapi_connection: Any, record: Any) -> None:
    if record is not None:
        record.info["checked_in_at"] = time.monotonic()


def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    """Ping a connection that was idle: SQLAlchemy's documented custom pre-ping (raising
    ``DisconnectionError`` makes the pool replace the connection and check out again)."""
    since = record.info.get("checked_in_at")
    if since is not None and time.monotonic() - since < IDLE_PING:
        return
    try:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("SELECT 1")
        finally:
            cursor.close()
        if not getattr(dbapi_connection, "autocommit", True):
            dbapi_connection.rollback()  # end the transaction the ping began
    except Exception as exc:
        raise sa_exc.DisconnectionError(f"pooled connection is gone: {exc}") from exc


def create_sqlite_engine(url: URL, *, memory: bool) -> Engine:
    """A SQLite engine: one shared connection in memory, a pool of WAL connections on a file."""
    if memory:
        engine = create_engine(url, poolclass=StaticPool, connect_args={"check_same_thread": False})
    else:
        engine = create_engine(url, poolclass=QueuePool, pool_size=5, max_overflow=10)

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Disable sqlite3's own BEGIN; on_begin emits ours.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT * 1000)}")
            if not memory:
                _use_wal(cursor)
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    def on_begin(conn: Connection) -> None:
        conn.exec_driver_sql(conn.get_execution_options().get(BEGIN_OPTION, "BEGIN"))

    event.listen(engine, "connect", on_connect)
    event.listen(engine, "begin", on_begin)
    return engine


def _use_wal(cursor: Any) -> None:
    """Switch the file to WAL (a lasting property of the file) unless it is already.

    The switch needs the file to itself, and SQLite answers "database is locked" at once,
    without its busy handler, while another process opens the new file at the same
    moment: retry within the busy timeout.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT
    while True:
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
