"""Runtime fixtures: a fresh Celery app per test on the real Redis broker, a real worker.

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


@pytest.fixture
def app(redis_url: str, store_url: str) -> Iterator[Celery]:
    """A Celery app on the real Redis broker, with queues of its own."""
    name = f"t{uuid.uuid4().hex[:8]}"
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
