"""Fixtures shared by every test directory: real PostgreSQL and Redis servers.

The servers are started once per test session, on free loopback ports in temporary
directories (see ``servers.py``), and stopped at the end even when tests fail or the run
is interrupted. A missing server binary fails the tests that need it, with the command
that installs it: a test run never passes by skipping them.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator

import pytest
from servers import (
    RunningServer,
    ServerNotAvailable,
    create_database,
    start_postgres,
    start_redis,
)

_database_numbers = itertools.count()


def _start(start: Callable[[], RunningServer]) -> RunningServer:
    try:
        return start()
    except ServerNotAvailable as exc:
        missing = str(exc)
    # Fail, never skip: a run without the servers must not look green.
    where = " (CI is set)" if os.environ.get("CI") else ""
    pytest.fail(f"cannot run this test{where}: {missing}", pytrace=False)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """``postgresql+psycopg://postgres@127.0.0.1:PORT/durable``: one server per session.

    Tests sharing this database must not depend on it being empty; use
    ``postgres_db_url`` for a database of the test's own.
    """
    with _start(start_postgres) as server:
        yield server.url


@pytest.fixture
def postgres_db_url(postgres_url: str) -> str:
    """A new, empty database on the session's PostgreSQL server, for this test alone."""
    return create_database(postgres_url, f"test_{os.getpid()}_{next(_database_numbers)}")


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """``redis://127.0.0.1:PORT/0``: a non-persistent Redis server for the session."""
    with _start(start_redis) as server:
        yield server.url
