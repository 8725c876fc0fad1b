"""Console fixtures: a Celery app on the real Redis broker with its store (SQLite, or
PostgreSQL where a test parametrizes ``store``), a real in-process worker, the test
workflows, and the console served by uvicorn on a free loopback port.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import httpx
import pytest
import uvicorn
from celery import Celery
from celery.contrib.testing.worker import start_worker
from servers import free_port

from celery_durable import Durable
from celery_durable.web import create_app
from web.workflows import Workflows, register


@pytest.fixture(params=["sqlite"])
def store(request: pytest.FixtureRequest) -> str:
    """Which store the test's app journals in (tests parametrize it to both)."""
    return str(request.param)


@pytest.fixture
def store_url(store: str, tmp_path: Any, request: pytest.FixtureRequest) -> str:
    """The store's URL: a SQLite file of the test's own, or a new PostgreSQL database."""
    if store == "postgresql":
        return str(request.getfixturevalue("postgres_db_url"))
    return f"sqlite:///{tmp_path}/journal.sqlite3"


@pytest.fixture
def app(redis_url: str, store_url: str) -> Iterator[Celery]:
    """A Celery app on the real Redis broker, with queues of its own."""
    name = f"w{uuid.uuid4().hex[:8]}"
    app = Celery(name, broker=redis_url, set_as_current=False)
    app.conf.update(
        task_default_queue=f"{name}-default",
        durable_store=store_url,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    yield app
    app.close()


@pytest.fixture
def durable(app: Celery) -> Iterator[Durable]:
    """The app's Durable runtime."""
    runtime = Durable(app)
    yield runtime
    runtime.store.close()


@pytest.fixture
def workflows(durable: Durable) -> Workflows:
    """The test workflows, declared on the app."""
    return register(durable)


@pytest.fixture
def worker(app: Celery, workflows: Workflows) -> Iterator[Any]:
    """A real in-process worker serving the app's steps and workflows."""
    with start_worker(
        app,
        pool="threads",
        concurrency=4,
        perform_ping_check=False,
        shutdown_timeout=30,
        loglevel="WARNING",
    ) as running:
        yield running


Serve = Callable[..., AbstractContextManager[str]]


class _Console(AbstractContextManager[str]):
    def __init__(self, durable: Durable, **options: Any) -> None:
        config = uvicorn.Config(
            create_app(durable, **options),
            host="127.0.0.1",
            port=free_port(),
            log_level="warning",
            lifespan="off",
            ws="none",
        )
        self.url = f"http://127.0.0.1:{config.port}"
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise AssertionError("the console did not start")
            time.sleep(0.02)
        return self.url

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


@pytest.fixture
def serve(durable: Durable) -> Serve:
    """``with serve(auth=...) as url:`` runs the console for the test's app."""

    def start(**options: Any) -> AbstractContextManager[str]:
        return _Console(durable, **options)

    return start


@pytest.fixture
def console(serve: Serve) -> Iterator[str]:
    """The console's base URL (no auth)."""
    with serve() as url:
        yield url


@pytest.fixture
def http(console: str) -> Iterator[httpx.Client]:
    """An HTTP client on the console (it keeps cookies, as a browser does)."""
    with httpx.Client(base_url=console, timeout=30) as client:
        yield client
