"""Signals end to end: a real worker on real Redis, sent from outside the workflow."""

from __future__ import annotations

from typing import Any

import pytest

from celery_durable import (
    Durable,
    DurableError,
    SerializationError,
    SignalTimeout,
    Status,
    WorkflowContext,
    WorkflowNotFound,
)
from runtime.waiting import wait_for, waiting_on


def test_signal_sent_before_the_worker_exists_is_kept(durable: Durable, worker: Any) -> None:
    @durable.workflow
    async def approval(ctx: WorkflowContext) -> Any:
        return await ctx.wait_signal("approved")

    handle = approval.delay()
    handle.signal("approved", {"by": "alice"})  # no worker yet: the inbox keeps it
    with worker():
        assert handle.result(timeout=30) == {"by": "alice"}
    (wait,) = handle.history()
    assert wait.kind.value == "signal"
    assert wait.result == {"by": "alice"}


def test_signals_of_one_name_are_consumed_in_arrival_order_exactly_once(
    durable: Durable, worker: Any
) -> None:
    @durable.workflow
    async def collect(ctx: WorkflowContext, n: int) -> list[Any]:
        return [await ctx.wait_signal("item") for _ in range(n)]

    with worker():
        handle = collect.delay(4)
        wait_for(lambda: waiting_on(handle, "signal"))
        for i in range(3):
            durable.signal(handle.id, "item", i)
        durable.signal(handle.id, "other", "ignored")
        wait_for(lambda: len(handle.history()) == 4)
        durable.signal(handle.id, "item", 3)
        assert handle.result(timeout=30) == [0, 1, 2, 3]
    (left,) = durable.store.signals(handle.id)
    assert (left.name, left.payload) == ("other", '"ignored"')


def test_signal_timeout_raises_inside_the_workflow(durable: Durable, worker: Any) -> None:
    @durable.workflow
    async def impatient(ctx: WorkflowContext) -> str:
        try:
            await ctx.wait_signal("never", timeout=0.5)
        except SignalTimeout as e:
            return f"timed out: {e}"
        return "unexpected"

    with worker():
        result = impatient.delay().result(timeout=30)
    assert result.startswith("timed out: no signal 'never'")


def test_signalling_unknown_or_finished_workflows_is_a_clear_error(
    durable: Durable, worker: Any
) -> None:
    @durable.workflow
    async def quick(ctx: WorkflowContext) -> str:
        return "done"

    with pytest.raises(WorkflowNotFound, match="no workflow instance with id 'nope'"):
        durable.signal("nope", "x")
    with worker():
        handle = quick.delay()
        assert handle.result(timeout=30) == "done"
    with pytest.raises(DurableError, match="is completed: signal 'x' was not delivered"):
        handle.signal("x", 1)
    assert durable.store.signals(handle.id) == []


def test_unencodable_payload_is_refused_and_nothing_is_stored(durable: Durable) -> None:
    @durable.workflow
    async def wf(ctx: WorkflowContext) -> Any:
        return await ctx.wait_signal("x")

    handle = wf.delay()  # its first pass (run here) waits for the signal
    before = durable.store.get(handle.id)
    with pytest.raises(SerializationError, match="payload of signal 'x'"):
        handle.signal("x", object())
    assert durable.store.signals(handle.id) == []
    assert durable.store.get(handle.id) == before
    assert handle.status() == Status.RUNNING


def test_signal_or_timeout_race(durable: Durable, worker: Any) -> None:
    @durable.workflow
    async def race(ctx: WorkflowContext) -> list[Any]:
        index, value = await ctx.first(ctx.wait_signal("go"), ctx.sleep(60))
        return [index, value]

    with worker():
        handle = race.delay()
        wait_for(lambda: len(handle.history()) == 2)
        handle.signal("go", "now")
        assert handle.result(timeout=30) == [0, "now"]
