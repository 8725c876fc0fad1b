"""The tick logs what it did; Celery's two routine INFO lines per tick are dropped.

A real worker at INFO on real Redis runs the tick; a plain task beside it shows that
Celery's lines for every other task are kept.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import pytest
from celery import Celery

from celery_durable import Durable, Status, WorkflowContext
from celery_durable.engine.journal import Instance
from celery_durable.runtime.durable import TICK_TASK
from runtime.waiting import wait_for


def _lines(caplog: pytest.LogCaptureFixture, level: int = logging.INFO) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= level]


def test_tick_logs_only_what_it_did(
    app: Celery, durable: Durable, worker: Any, caplog: pytest.LogCaptureFixture
) -> None:
    @app.task(name="plain.ping", shared=False)
    def ping() -> str:
        return "pong"

    @durable.workflow
    async def hello(ctx: WorkflowContext) -> str:
        return "hi"

    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="celery_durable")  # last: the handler's level
    with worker(loglevel="INFO"):
        # Celery's lines stay for other tasks.
        ping.delay()
        wait_for(
            lambda: any("plain.ping" in line and "succeeded" in line for line in _lines(caplog))
        )
        assert any(
            line.startswith("Task plain.ping[") and "received" in line for line in _lines(caplog)
        )

        # A tick with nothing due: a DEBUG line, nothing at INFO.
        caplog.clear()
        app.send_task(TICK_TASK)
        wait_for(lambda: "tick: nothing due" in _lines(caplog, logging.DEBUG))
        assert _lines(caplog) == []

        # A start whose message was lost: the tick resumes it and says so, once.
        now = durable.now()
        codec = durable.codec()
        durable.store.create(
            Instance(
                "lost-start",
                hello.name,
                Status.PENDING,
                codec.dumps([[], {}]),
                codec.name,
                now,
                now,
                wake_at=now - timedelta(seconds=1),
            )
        )
        caplog.clear()
        app.send_task(TICK_TASK)
        assert durable.handle("lost-start").result(timeout=30) == "hi"
        wait_for(lambda: "tick: resumed 1 instance" in _lines(caplog))
    tick_lines = [line for line in _lines(caplog) if TICK_TASK in line or "tick" in line]
    assert tick_lines == ["tick: resumed 1 instance"]
