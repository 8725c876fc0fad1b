"""Every library log line of a run carries its workflow id (and run, seq where known), as
a JSON formatter sees them: a real in-process worker, a step that fails for good, a
duplicate step message, the failure logged by the orchestrator."""

from __future__ import annotations

import io
import json
import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker

from celery_durable import Durable, StepFailed, WorkflowFailed
from celery_durable.engine.commands import ScheduleStep
from celery_durable.telemetry.logs import LogContext, log_context


class JsonLines(logging.Formatter):
    """What a JSON log pipeline would index."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(
            {
                "logger": record.name,
                "level": record.levelname,
                "message": record.getMessage(),
                "workflow_id": getattr(record, "workflow_id", None),
                "run": getattr(record, "run", None),
                "seq": getattr(record, "seq", None),
            }
        )


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonLines())
    logger = logging.getLogger("celery_durable")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield out
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture
def app(redis_url: str, tmp_path: Any) -> Iterator[Celery]:
    name = f"t{uuid.uuid4().hex[:8]}"
    app = Celery(name, broker=redis_url, set_as_current=False)
    app.conf.update(
        task_default_queue=f"{name}-default",
        durable_store=f"sqlite:///{tmp_path}/journal.sqlite3",
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    yield app
    app.close()


class Refused(Exception):
    pass


def test_every_library_line_of_a_run_names_its_workflow(app: Celery, lines: io.StringIO) -> None:
    durable = Durable(app)

    @durable.step
    def book(n: int) -> int:
        return n

    @durable.step
    def refuse(n: int) -> None:
        raise Refused(f"no {n}")

    @durable.workflow
    async def wf(ctx: Any, n: int) -> int:
        await ctx.step(book, n)
        try:
            await ctx.step(refuse, n)
        except StepFailed:
            await ctx.step(book, -n)
            raise
        return n

    try:
        with start_worker(
            app, pool="threads", concurrency=2, perform_ping_check=False, loglevel="WARNING"
        ):
            handle = wf.delay(7)
            with pytest.raises(WorkflowFailed):
                handle.result(timeout=30)
            # A duplicate of a journaled step: the worker says so, and does not run it.
            durable.send_step(handle.id, ScheduleStep(0, book.name, (7,), {}))
            deadline = time.monotonic() + 10
            while "already journaled" not in lines.getvalue() and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        durable.store.close()

    records = [json.loads(line) for line in lines.getvalue().splitlines()]
    assert any("already journaled" in r["message"] for r in records)
    assert any(r["level"] == "ERROR" and "failed" in r["message"] for r in records)
    assert records
    for record in records:
        assert record["workflow_id"] == handle.id, record
    duplicate = next(r for r in records if "already journaled" in r["message"])
    assert (duplicate["run"], duplicate["seq"]) == (1, 0)


def test_log_context_fills_records_and_keeps_explicit_extra() -> None:
    record = logging.LogRecord("celery_durable", logging.INFO, __file__, 1, "m", (), None)
    explicit = logging.LogRecord("celery_durable", logging.INFO, __file__, 1, "m", (), None)
    explicit.workflow_id = "given"
    with log_context("wf-1", 2, 5):
        LogContext().filter(record)
        LogContext().filter(explicit)
    assert (record.workflow_id, record.run, record.seq) == ("wf-1", 2, 5)  # type: ignore[attr-defined]
    assert explicit.workflow_id == "given"  # type: ignore[attr-defined]
    outside = logging.LogRecord("celery_durable", logging.INFO, __file__, 1, "m", (), None)
    LogContext().filter(outside)
    assert outside.workflow_id is None  # type: ignore[attr-defined]
