"""Fixtures shared by every test directory: real PostgreSQL and Redis servers.

The servers are started once per test session, on free loopback ports in temporary
directories (see ``servers.py``), and stopped at the end even when tests fail or the run
is interrupted. A missing server binary fails the tests that need it, with the command
that installs it: a test run never passes by skipping them.

``make test`` runs the suite in parallel worker processes (pytest-xdist, ``-n N --dist
loadgroup``). Each worker is a session of its own, so it starts its own servers on its own
ports and directories and stops them at its end. The scheduler below hands out whole test
files (a file's tests run in order, in one process, as they do serially), the longest
groups first, and keeps the crash tests in ``SERIAL_GROUPS``: the files of one group run
one after another in one worker, never beside each other.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
from rabbitmq_server import RabbitMQServer, start_rabbitmq
from servers import (
    RunningServer,
    ServerNotAvailable,
    create_database,
    start_postgres,
    start_redis,
)

_database_numbers = itertools.count()

Server = TypeVar("Server", RunningServer, RabbitMQServer)


def _start(start: Callable[[], Server]) -> Server:
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


@pytest.fixture(scope="session")
def rabbitmq_url() -> Iterator[str]:
    """``amqp://guest:guest@127.0.0.1:PORT//``: a throwaway RabbitMQ node for the session."""
    with _start(start_rabbitmq) as server:
        yield server.url


@pytest.fixture(params=["redis", "rabbitmq"])
def broker_url(request: pytest.FixtureRequest) -> str:
    """Each broker the runtime is tested on, in turn: Redis, then RabbitMQ."""
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


# --------------------------------------------------------------------------- parallel runs

#: Test paths (files, or directories ending in ``/``, relative to the repository) whose
#: tests run in one worker, one file after another; the first match wins, and groups are
#: handed out first, in this order. The crash tests kill subprocess workers and time their
#: recovery: two groups of them (about 4 min each) is the most that runs at once. A new
#: file under tests/chaos joins ``chaos-b``.
SERIAL_GROUPS: dict[str, str] = {
    "tests/chaos/test_soak.py": "chaos-a",
    "tests/chaos/test_worker_killed.py": "chaos-a",
    "tests/chaos/test_timers_killed.py": "chaos-a",
    "tests/chaos/test_rabbitmq.py": "chaos-a",
    "tests/chaos/": "chaos-b",
}


def _make_scheduler_class() -> type[Any]:
    from xdist.scheduler import LoadGroupScheduling

    ranks = {group: rank for rank, group in enumerate(dict.fromkeys(SERIAL_GROUPS.values()))}

    class FileScheduling(LoadGroupScheduling):  # type: ignore[misc]
        """``--dist loadgroup`` by file: a test's unit is its ``xdist_group`` mark's group,
        else its ``SERIAL_GROUPS`` group, else its file. Units are handed out groups first,
        then files with the most tests first."""

        _ordered = False

        def _split_scope(self, nodeid: str) -> str:
            if nodeid.rfind("@") > nodeid.rfind("]"):
                return nodeid.rsplit("@", 1)[-1]
            path = nodeid.split("::", 1)[0]
            for prefix, group in SERIAL_GROUPS.items():
                if path == prefix or (prefix.endswith("/") and path.startswith(prefix)):
                    return group
            return path

        def _assign_work_unit(self, node: Any) -> None:
            if not self._ordered:  # the queue is complete before the first unit goes out
                self._ordered = True
                units = sorted(
                    self.workqueue.items(),
                    key=lambda unit: (ranks.get(unit[0], len(ranks)), -len(unit[1])),
                )
                self.workqueue.clear()
                self.workqueue.update(units)
            super()._assign_work_unit(node)

    return FileScheduling


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getvalue("dist") != "loadgroup":
        return None
    return _make_scheduler_class()(config, log)


# --------------------------------------------------------------------------- summaries

#: ``user_properties`` named ``summary:TITLE`` on a test's report: a line of the terminal
#: summary's TITLE section. Reports carry them from xdist workers to the controller.
_SUMMARY = "summary:"
_summary_lines: dict[str, list[str]] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    for name, value in report.user_properties:
        if isinstance(name, str) and name.startswith(_SUMMARY):
            _summary_lines.setdefault(name[len(_SUMMARY) :], []).append(str(value))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for title, lines in _summary_lines.items():
        terminalreporter.section(title)
        for line in lines:
            terminalreporter.write_line(line)
