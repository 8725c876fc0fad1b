"""The crash points of ``celery_durable.faults`` sit where the fault soak needs them.

The soak (``tests/chaos``) SIGKILLs a worker process at these points; here a handler only
records them, in order, so a moved or lost call fails at once.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from celery_durable import Durable, WorkflowContext, faults


@pytest.fixture
def reached() -> Iterator[list[str]]:
    seen: list[str] = []
    lock = threading.Lock()

    def record(name: str) -> None:
        with lock:
            seen.append(name)

    faults.set_handler(record)
    yield seen
    faults.set_handler(None)


def test_no_handler_means_no_effect() -> None:
    faults.set_handler(None)
    faults.point(faults.STEP_RAN)  # nothing to call, nothing raised


def test_a_step_reaches_its_points_in_order(
    durable: Durable, worker: Any, reached: list[str]
) -> None:
    @durable.step
    def charge() -> str:
        reached.append("user code")
        return "ok"

    @durable.workflow
    async def pay(ctx: WorkflowContext) -> str:
        return await ctx.step(charge)

    with worker():
        assert pay.delay().result(timeout=20) == "ok"

    assert set(reached) == {"user code", *faults.POINTS}
    ran = reached.index("user code")
    # After the user code: the crash point before the outcome is journaled, then the
    # commit (its middle, then its end), before anything is published.
    assert reached[ran + 1 : ran + 4] == [
        faults.STEP_RAN,
        faults.MID_COMMIT,
        faults.AFTER_COMMIT,
    ]
    # The first pass (before the step ran) committed and published the step too.
    assert reached[:2] == [faults.MID_COMMIT, faults.AFTER_COMMIT]
