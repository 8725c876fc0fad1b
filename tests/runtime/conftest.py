"""Runtime fixtures: a fresh Celery app per test on a real broker (Redis, then RabbitMQ),
a real worker.

Each app gets its own queue names, so tests never see each other's messages, and its own
store (a SQLite file by default; ``store_url`` is parametrized to PostgreSQL where a test
asks for it).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker

from celery_durable import Durable


@pytest.fixture
def store_url(tmp_path: Any) -> str:
    """The journal store of the test's app (SQLite unless overridden)."""
    return f"sqlite:///{tmp_path}/journal.sqlite3"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "broker(name): the test is about that broker only (its Redis keys, say); its "
        "run on the other broker is deselected",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect a ``@pytest.mark.broker("redis")`` test's runs on the other brokers."""
    keep, drop = [], []
    for item in items:
        mark = item.get_closest_marker("broker")
        callspec = getattr(item, "callspec", None)
        broker = callspec.params.get("broker_url") if callspec is not None else None
        if mark is not None and broker is not None and broker != mark.args[0]:
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture
def app(broker_url: str, store_url: str) -> Iterator[Celery]:
    """A Celery app on a real broker (each test runs on Redis and on RabbitMQ), with
    queues of its own."""
    name = f"t{uuid.uuid4().hex[:8]}"
    app = Celery(name, broker=broker_url, set_as_current=False)
    app.conf.update(
        task_default_queue=f"{name}-default",
        durable_store=store_url,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    if broker_url.startswith("amqp"):
        # Celery's in-process test worker stops when its event loop's poll returns, and
        # the AMQP heartbeat timer (every 60 s by default) paces that poll: without a
        # shorter heartbeat, every `with worker():` takes 10 s to exit.
        app.conf.broker_heartbeat = 4
    yield app
    app.close()


@pytest.fixture
def durable(app: Celery) -> Iterator[Durable]:
    """The app's Durable runtime."""
    runtime = Durable(app)
    yield runtime
    runtime.store.close()


@pytest.fixture
def worker(app: Celery) -> Callable[..., AbstractContextManager[Any]]:
    """Start a real in-process worker on the app: ``with worker(): ...``."""

    def start(**options: Any) -> AbstractContextManager[Any]:
        options.setdefault("pool", "threads")
        options.setdefault("concurrency", 4)
        options.setdefault("perform_ping_check", False)
        options.setdefault("shutdown_timeout", 30)
        options.setdefault("loglevel", "WARNING")
        return start_worker(app, **options)

    return start
