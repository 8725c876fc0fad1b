"""The smoke scenarios in containers, with pytest-celery: the examples app on a worker
container built from the repository's ``Dockerfile`` (``celery -A examples.app worker``,
prefork, as ``docker-compose.yml`` runs it), on a Redis and on a RabbitMQ broker container,
with the journal in a PostgreSQL container. The test process is the client: it reaches
the broker and PostgreSQL on their published ports, the worker reaches them on the
containers' network, and the examples' services run in the worker's container.

Run it where a Docker daemon is available (the README's "Development" section)::

    .venv/bin/python -m pytest -p celery tests/smoke/test_containers.py

Every test starts its own broker, PostgreSQL and worker containers (pytest-celery's
function-scoped components); the worker image is built once per session.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip(
    "pytest_celery", reason="pytest-celery is not installed: pip install -e '.[test]'"
)

import psycopg
from pytest_celery import (
    CeleryTestBroker,
    CeleryTestContainer,
    CeleryTestSetup,
    CeleryWorkerContainer,
)
from pytest_celery.vendors.rabbitmq.defaults import CELERY_RABBITMQ_BROKER
from pytest_celery.vendors.redis.broker.defaults import CELERY_REDIS_BROKER
from pytest_celery.vendors.worker.defaults import DEFAULT_WORKER_CONTAINER_TIMEOUT
from pytest_docker_tools import build, container, fxtr

from smoke.scenarios import SCENARIOS, ClientDeployment, Deployment

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]

#: Where the examples' stand-in services keep their files in the worker container (the
#: image runs as ``nobody``, who may write only there).
SERVICE_FILES = {
    "BANK_DB": "/tmp/bank.sqlite3",
    "USERS_DB": "/tmp/users.json",
    "MAILBOX": "/tmp/mailbox.txt",
}


class ExamplesWorkerContainer(CeleryWorkerContainer):
    """The repository's image running the examples app's worker, as users run it."""

    @classmethod
    def command(cls, *args: str, **kwargs: Any) -> list[str]:
        return [
            "celery",
            "-A",
            "examples.app",
            "worker",
            "--pool=prefork",
            "--concurrency=2",
            f"--loglevel={cls.log_level()}",
            "-n",
            f"{cls.worker_name()}@%h",
            *args,
        ]

    @classmethod
    def worker_name(cls) -> str:
        return "examples_smoke"


class PostgresContainer(CeleryTestContainer):
    """The journal store: ``url`` from the worker's container, ``host_url`` from here."""

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://durable:durable@{self.hostname}/durable"

    @property
    def host_url(self) -> str:
        return f"postgresql+psycopg://durable:durable@localhost:{self.port}/durable"

    @property
    def hostname(self) -> str:
        hostname: str = self.attrs["Config"]["Hostname"]
        return hostname

    @property
    def port(self) -> int:
        port: int = self._wait_port("5432/tcp")
        return port

    def ready(self) -> bool:
        # The image's first start runs initdb on a server it then restarts: ready means a
        # connection through the published port succeeds.
        if not super().ready():
            return False
        try:
            with psycopg.connect(self.host_url.replace("+psycopg", ""), connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False


examples_worker_image = build(path=str(ROOT), tag="celery-durable/examples-worker:smoke")

durable_postgres = container(
    image="postgres:16",
    environment={"POSTGRES_USER": "durable", "POSTGRES_PASSWORD": "durable"},
    network="{default_pytest_celery_network.name}",
    ports={"5432/tcp": None},
    wrapper_class=PostgresContainer,
    timeout=60,
)

default_worker_container = container(
    image="{examples_worker_image.id}",
    environment=fxtr("default_worker_env"),
    network="{default_pytest_celery_network.name}",
    wrapper_class=ExamplesWorkerContainer,
    timeout=DEFAULT_WORKER_CONTAINER_TIMEOUT,
    command=ExamplesWorkerContainer.command(),
)


@pytest.fixture
def default_worker_container_cls() -> type[CeleryWorkerContainer]:
    return ExamplesWorkerContainer


@pytest.fixture(scope="session")
def default_worker_container_session_cls() -> type[CeleryWorkerContainer]:
    return ExamplesWorkerContainer


@pytest.fixture
def default_worker_env(
    default_worker_container_cls: type[CeleryWorkerContainer],
    celery_worker_cluster_config: dict[str, Any],
    durable_postgres: PostgresContainer,
) -> dict[str, str]:
    """pytest-celery's worker environment (``CELERY_BROKER_URL`` on the containers'
    network) plus the examples app's store and service files."""
    env: dict[str, str] = default_worker_container_cls.initial_env(
        celery_worker_cluster_config,
        initial={"DURABLE_STORE": durable_postgres.url, **SERVICE_FILES},
    )
    return env


@pytest.fixture(params=[CELERY_REDIS_BROKER, CELERY_RABBITMQ_BROKER], ids=["redis", "rabbitmq"])
def celery_broker(request: pytest.FixtureRequest) -> Iterator[CeleryTestBroker]:
    """Each broker the examples run on, in turn."""
    broker: CeleryTestBroker = request.getfixturevalue(request.param)
    yield broker
    broker.teardown()


@pytest.fixture
def celery_backend_cluster() -> None:
    """No result backend: the journal store holds the workflows' results."""


def _on_worker(worker: CeleryWorkerContainer) -> Callable[[Sequence[str]], str]:
    def run(args: Sequence[str]) -> str:
        code, (out, err) = worker.exec_run(["python", *args], demux=True)
        assert code == 0, f"{args} failed in {worker.name}:\n{(err or b'').decode()}"
        return (out or b"").decode()

    return run


@pytest.mark.timeout(900)  # the session's first test builds the worker image
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda scenario: scenario.__name__)
def test_scenario(
    celery_setup: CeleryTestSetup,
    durable_postgres: PostgresContainer,
    scenario: Callable[[Deployment], None],
) -> None:
    assert celery_setup.broker is not None
    assert celery_setup.worker is not None
    deployment = ClientDeployment(
        celery_setup.broker.config()["host_url"],
        durable_postgres.host_url,
        _on_worker(celery_setup.worker.container),
    )
    try:
        scenario(deployment)
    finally:
        deployment.close()
