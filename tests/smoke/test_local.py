"""The smoke scenarios on the local test servers: a real ``celery -A examples.app worker``
(prefork) subprocess on Redis with the embedded SQLite store, and on RabbitMQ with
PostgreSQL. One worker per deployment serves all the scenarios (each uses names of its
own); the scenarios' service calls run as subprocesses in the worker's environment."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from servers import create_database

from smoke.conftest import COMMAND
from smoke.scenarios import SCENARIOS, ClientDeployment, Deployment

ROOT = Path(__file__).resolve().parents[2]


def _store_url(kind: str, directory: Path, request: pytest.FixtureRequest) -> str:
    if kind == "sqlite":
        return f"sqlite:///{directory}/journal.sqlite3"
    server: str = request.getfixturevalue("postgres_url")
    return create_database(server, f"smoke_{os.getpid()}_{uuid.uuid4().hex[:8]}")


@pytest.fixture(
    scope="module",
    params=[("redis", "sqlite"), ("rabbitmq", "postgresql")],
    ids=["redis-sqlite", "rabbitmq-postgresql"],
)
def deployment(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    """The examples app on a prefork worker subprocess, for the whole module."""
    broker, store = request.param
    directory = tmp_path_factory.mktemp(f"smoke-{broker}")
    broker_url: str = request.getfixturevalue(f"{broker}_url")
    store_url = _store_url(store, directory, request)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PYTHONWARNINGS": "",
        "CELERY_BROKER_URL": broker_url,
        "DURABLE_STORE": store_url,
        "BANK_DB": str(directory / "bank.sqlite3"),
        "USERS_DB": str(directory / "users.json"),
        "MAILBOX": str(directory / "mailbox.txt"),
    }
    log = (directory / "worker.log").open("w")
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "examples.app",
            "worker",
            "--pool=prefork",
            "--concurrency=2",
            "--loglevel=INFO",
            "-n",
            f"smoke-{uuid.uuid4().hex[:8]}@%h",
        ],
        cwd=directory,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    client = ClientDeployment(broker_url, store_url, _on_worker(env, directory))
    try:
        yield client
    finally:
        client.close()
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
        log.close()


def _on_worker(env: dict[str, str], cwd: Path) -> Callable[[Sequence[str]], str]:
    def run(args: Sequence[str]) -> str:
        proc = subprocess.run(
            [sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, check=False
        )
        assert proc.returncode == 0, f"{args} failed:\n{proc.stderr}"
        return proc.stdout

    return run


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda scenario: scenario.__name__)
def test_scenario(deployment: Deployment, scenario: Callable[[Deployment], None]) -> None:
    scenario(deployment)


def test_the_readme_shows_the_container_suite_command() -> None:
    """The command the skipped container tests name is the one the README shows."""
    assert f"\n{COMMAND}\n" in (ROOT / "README.md").read_text()
