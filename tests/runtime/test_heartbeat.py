"""A running step reports in, so recovery can tell a slow step from a dead worker."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

from celery import Celery

from celery_durable import Durable, WorkflowContext


def test_a_long_step_heartbeats_and_pulls_the_wake_time(
    app: Celery, durable: Durable, worker: Any
) -> None:
    app.conf.durable_heartbeat_interval = 0.2
    gate = threading.Event()

    @durable.step
    def slow() -> int:
        assert gate.wait(20)
        return 1

    @durable.step
    def quick() -> int:
        return 2

    @durable.workflow
    async def wf(ctx: WorkflowContext) -> int:
        return int(await ctx.step(slow)) + int(await ctx.step(quick))

    with worker():
        handle = wf.delay()
        deadline = time.monotonic() + 20
        while True:
            history = handle.history()
            if history and history[0].heartbeat_at is not None:
                break
            assert time.monotonic() < deadline, "no heartbeat recorded"
            time.sleep(0.05)
        first = history[0]
        assert first.started_at is not None
        assert first.heartbeat_at is not None
        assert first.heartbeat_at >= first.started_at
        instance = durable.store.get(handle.id)
        assert instance is not None
        assert instance.wake_at is not None
        # Pulled from "sent + step timeout" (300 s) to "last beat + 5 beats" (1 s).
        assert instance.wake_at <= first.heartbeat_at + timedelta(seconds=1.01)
        # The beats go on while it runs (every 0.2 s; a loaded machine may delay one).
        deadline = time.monotonic() + 10
        while True:
            later = handle.history()[0]
            assert later.heartbeat_at is not None
            if later.heartbeat_at > first.heartbeat_at:
                break
            assert time.monotonic() < deadline, "the beats stopped"
            time.sleep(0.05)
        assert later.started_at == first.started_at
        gate.set()
        assert handle.result(timeout=20) == 3
    quick_step = handle.history()[1]
    # A step shorter than one beat writes no beat beyond its start mark.
    assert quick_step.heartbeat_at == quick_step.started_at
