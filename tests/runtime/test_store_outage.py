"""A store that goes down while a step runs: the step's outcome waits for it.

Found by the fault soak (``tests/chaos``): a PostgreSQL restart while a step ran made the
step's worker give up journaling its outcome at once and have Celery retry the task,
which ran the user code a second time. Now the worker keeps the outcome, keeps beating,
and journals it when the store is back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import pytest
from celery import Celery
from servers import PostgresServer, start_postgres_restartable

from celery_durable import Durable, WorkflowContext
from celery_durable.errors import StoreError


@pytest.fixture
def postgres() -> Iterator[PostgresServer]:
    # Crash-safe settings: the immediate shutdown must not lose the instance's row.
    with start_postgres_restartable(durable=True) as server:
        yield server


@pytest.fixture
def store_url(postgres: PostgresServer) -> str:
    return postgres.url


def test_step_outcome_waits_out_a_database_restart_instead_of_running_again(
    app: Celery,
    durable: Durable,
    worker: Callable[..., AbstractContextManager[Any]],
    postgres: PostgresServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs: list[float] = []
    crashed = threading.Event()

    @durable.step
    def pay() -> str:
        runs.append(time.monotonic())
        if len(runs) == 1:
            postgres.crash()  # down while the outcome is journaled
            crashed.set()
        return "paid"

    @durable.workflow
    async def checkout(ctx: WorkflowContext) -> str:
        return await ctx.step(pay)

    with caplog.at_level(logging.WARNING, logger="celery_durable"), worker():
        handle = checkout.delay()
        assert crashed.wait(30)
        # Restarted from this thread: the server dies with the thread that started it.
        time.sleep(1.5)
        postgres.start()
        deadline = time.monotonic() + 60
        while True:  # this process's reads fail too while the database is down
            try:
                assert handle.result(timeout=60) == "paid"
                break
            except StoreError:
                assert time.monotonic() < deadline
                time.sleep(0.2)

    assert len(runs) == 1, "the step ran again after the store came back"
    (event,) = handle.history()
    assert event.attempts == 1
    assert "journaling its outcome again" in caplog.text


def test_a_tick_while_the_database_is_down_logs_one_line_and_claims_nothing(
    app: Celery,
    durable: Durable,
    postgres: PostgresServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    tick = app.tasks["celery_durable.tick"]
    assert tick() == 0  # up, nothing due
    postgres.crash()
    with caplog.at_level(logging.WARNING, logger="celery_durable"):
        assert tick() == 0
    assert "tick: store unavailable" in caplog.text
    assert "the next tick tries again" in caplog.text
