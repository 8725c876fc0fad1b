"""Every run of an instance has its own identity (issue 9, item 1).

``ctx.continue_as_new`` starts run 2, 3, ... of the same workflow id. Nothing of one run
is ever journaled into another: a straggler step of run 1 that finishes after the
instance moved on is dropped, step task ids / idempotency keys, ``ctx.uuid4()`` values and
default child ids never repeat across runs. Real Redis, a real worker, both stores.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from celery_durable import Durable, WorkflowContext, current_step
from celery_durable.engine.commands import ScheduleStep
from runtime.waiting import wait_for, waiting_on


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Any, postgres_db_url: str) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/journal.sqlite3"
    return postgres_db_url


def test_a_straggler_of_run_1_never_lands_in_run_2(durable: Durable, worker: Any) -> None:
    release = threading.Event()
    keys: list[tuple[int, str]] = []

    @durable.step
    def check(n: int) -> str:
        info = current_step()
        assert info is not None
        keys.append((n, info.idempotency_key))
        if n == 0:
            release.wait(20)  # a straggler: it loses the race and ends after the restart
        return f"check {n}"

    @durable.workflow
    async def wf(ctx: WorkflowContext, n: int) -> str:
        if n == 0:
            await ctx.first(ctx.step(check, 0), ctx.sleep(0.2))
            ctx.continue_as_new(1)
        return str(await ctx.step(check, n))

    with worker():
        handle = wf.delay(0)
        assert handle.result(timeout=30) == "check 1"  # not the first run's "check 0"
        release.set()
        wait_for(lambda: len(keys) == 2)
        # The straggler ends and finds the instance on run 2: its outcome is dropped.
        history = handle.history()
        assert [(e.seq, e.name.rsplit(".", 1)[-1], e.result) for e in history] == [
            (0, "check", "check 1")
        ]
    assert handle.status().run == 2
    (_, first_key), (_, second_key) = sorted(keys)
    assert first_key == f"{handle.id}:0"
    assert second_key == f"{handle.id}:0~2"


def test_an_old_run_message_cannot_complete_a_new_run_wait(durable: Durable, worker: Any) -> None:
    ran: list[int] = []

    @durable.step
    def old(n: int) -> str:
        ran.append(n)
        return "from run 1"

    @durable.workflow
    async def wf(ctx: WorkflowContext, n: int) -> Any:
        if n == 0:
            await ctx.step(old, 0)
            ctx.continue_as_new(1)
        return await ctx.wait_signal("go")

    with worker():
        handle = wf.delay(0)
        wait_for(lambda: handle.status().run == 2 and waiting_on(handle, "signal"))
        # A late redelivered copy of run 1's step message (same task id as then).
        durable.send_step(handle.id, ScheduleStep(0, old.name, (0,), {}), run=1)
        wait_for(lambda: len(ran) == 1, timeout=10)
        handle.signal("go", "from the signal")
        assert handle.result(timeout=30) == "from the signal"
    assert ran == [0]  # the copy was not run: the record at seq 0 is run 2's signal wait


def test_uuids_and_child_ids_differ_between_runs(durable: Durable, worker: Any) -> None:
    @durable.workflow
    async def child(ctx: WorkflowContext) -> str:
        return ctx.workflow_id

    @durable.workflow
    async def wf(ctx: WorkflowContext, seen: list[list[str]]) -> list[list[str]]:
        child_id = await ctx.child(child)
        seen = [*seen, [str(ctx.uuid4()), child_id]]
        if len(seen) < 3:
            ctx.continue_as_new(seen)
        return seen

    with worker():
        handle = wf.delay([])
        runs = handle.result(timeout=30)
    uuids = [uuid for uuid, _ in runs]
    child_ids = [child_id for _, child_id in runs]
    assert len(set(uuids)) == 3
    assert child_ids == [f"{handle.id}:0", f"{handle.id}:0~2", f"{handle.id}:0~3"]
