"""The restartable servers of ``servers.py``: crash, restart on the same URL, what survives."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

import psycopg
import pytest
import redis
from servers import (
    PostgresServer,
    RedisServer,
    ServerNotAvailable,
    start_postgres_restartable,
    start_redis_restartable,
)

_S = TypeVar("_S", PostgresServer, RedisServer)


def _start(start: Callable[[], _S]) -> _S:
    try:
        return start()
    except ServerNotAvailable as exc:
        missing = str(exc)
    pytest.fail(f"cannot run this test: {missing}", pytrace=False)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with _start(start_redis_restartable) as server:
        yield server


@pytest.fixture
def postgres_server() -> Iterator[PostgresServer]:
    # durable: synchronous commit, so a committed row survives an immediate shutdown.
    with _start(lambda: start_postgres_restartable(durable=True)) as server:
        yield server


def _dsn(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def test_redis_kill_loses_every_key_and_restarts_on_the_same_url(
    redis_server: RedisServer,
) -> None:
    with redis.Redis.from_url(redis_server.url) as client:
        client.set("key", "value")
        assert client.get("key") == b"value"

    redis_server.kill()

    assert not redis_server.running
    with redis.Redis.from_url(redis_server.url) as client, pytest.raises(redis.ConnectionError):
        client.ping()

    redis_server.start()

    assert redis_server.running
    with redis.Redis.from_url(redis_server.url) as client:
        assert client.ping()
        assert client.get("key") is None


def test_postgres_crash_keeps_committed_rows_and_restarts_on_the_same_url(
    postgres_server: PostgresServer,
) -> None:
    dsn = _dsn(postgres_server.url)
    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE TABLE t (value text)")
        conn.execute("INSERT INTO t VALUES ('committed')")
    # A transaction left open at the crash: recovery rolls it back.
    uncommitted = psycopg.connect(dsn)
    uncommitted.execute("INSERT INTO t VALUES ('uncommitted')")

    postgres_server.crash()

    assert not postgres_server.running
    with pytest.raises(psycopg.OperationalError):
        uncommitted.execute("SELECT 1")
    uncommitted.close()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=2)

    postgres_server.start()

    assert postgres_server.running
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT value FROM t").fetchall()
    assert rows == [("committed",)]


def test_stop_is_idempotent_and_final(redis_server: RedisServer) -> None:
    redis_server.stop()
    redis_server.stop()

    assert not redis_server.running
    with pytest.raises(RuntimeError, match="stopped"):
        redis_server.start()
