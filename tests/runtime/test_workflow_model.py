"""Fan-out, races, compensation and custom status with a real worker on real Redis."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from celery_durable import (
    Durable,
    StepFailed,
    WorkflowContext,
    WorkflowFailed,
)
from runtime.waiting import wait_for


def test_gather_runs_steps_in_parallel_and_returns_results_in_order(
    durable: Durable, worker: Any
) -> None:
    @durable.step
    def slow_square(x: int) -> int:
        time.sleep(0.6)
        return x * x

    @durable.workflow
    async def fan_out(ctx: WorkflowContext, n: int) -> list[int]:
        results: list[int] = await ctx.gather(*(ctx.step(slow_square, i) for i in range(n)))
        return results

    with worker(concurrency=4):
        fan_out.delay(4).result(timeout=30)  # warm the worker's pool
        started = time.monotonic()
        assert fan_out.delay(4).result(timeout=30) == [0, 1, 4, 9]
        elapsed = time.monotonic() - started
    assert elapsed < 4 * 0.6, f"the four steps ran one after another ({elapsed:.2f} s)"


def test_failure_inside_gather_compensates_after_the_others_are_journaled(
    durable: Durable, worker: Any
) -> None:
    class BookingFailed(Exception):
        pass

    log: list[str] = []
    lock = threading.Lock()

    @durable.step
    def book(what: str) -> str:
        time.sleep(0.2 if what == "hotel" else 0.0)
        if what == "car":
            raise BookingFailed("no car left")
        with lock:
            log.append(f"book {what}")
        return f"{what}-1"

    @durable.step
    def cancel(booking: str) -> None:
        with lock:
            log.append(f"cancel {booking}")

    @durable.workflow
    async def trip(ctx: WorkflowContext) -> list[str]:
        async with ctx.saga() as saga:
            flight = await ctx.step(book, "flight")
            saga.compensate(cancel, flight)
            bookings: list[str] = await ctx.gather(ctx.step(book, "hotel"), ctx.step(book, "car"))
            return bookings
        return []  # unreachable: the saga re-raises

    with worker():
        handle = trip.delay()
        with pytest.raises(WorkflowFailed) as info:
            handle.result(timeout=30)
    assert info.value.type == "BookingFailed"
    # The hotel (the gather's other part) completed and was journaled before the saga ran.
    assert log == ["book flight", "book hotel", "cancel flight-1"]
    states = [(e.name.rsplit(".", 1)[-1], e.state.value) for e in handle.history()]
    assert states == [
        ("book", "completed"),
        ("book", "completed"),
        ("book", "failed"),
        ("cancel", "completed"),
    ]


def test_first_returns_the_race_winner(durable: Durable, worker: Any) -> None:
    @durable.step
    def quick() -> str:
        return "quick"

    @durable.workflow
    async def race(ctx: WorkflowContext) -> list[Any]:
        index, value = await ctx.first(ctx.sleep(30), ctx.step(quick))
        return [index, value]

    with worker():
        assert race.delay().result(timeout=30) == [1, "quick"]


def test_custom_status_is_visible_in_handle_status(durable: Durable, worker: Any) -> None:
    gate = threading.Event()

    @durable.step
    def wait_gate() -> None:
        assert gate.wait(20)

    @durable.workflow
    async def progress(ctx: WorkflowContext) -> str:
        ctx.set_status({"stage": "waiting", "done": 0})
        await ctx.step(wait_gate)
        ctx.set_status({"stage": "finished", "done": 1})
        return "ok"

    with worker():
        handle = progress.delay()
        wait_for(lambda: handle.status().custom == {"stage": "waiting", "done": 0})
        assert handle.status() == "running"
        gate.set()
        assert handle.result(timeout=30) == "ok"
    status = handle.status()
    assert status == "completed"
    assert status.custom == {"stage": "finished", "done": 1}


def test_compensation_that_fails_is_reported_not_swallowed(durable: Durable, worker: Any) -> None:
    @durable.step
    def charge() -> str:
        return "c-1"

    @durable.step
    def refund(charge_id: str) -> None:
        raise ConnectionError("refund service down")

    @durable.step
    def ship() -> None:
        raise RuntimeError("warehouse on fire")

    @durable.workflow
    async def order(ctx: WorkflowContext) -> None:
        async with ctx.saga() as saga:
            saga.compensate(refund, await ctx.step(charge))
            await ctx.step(ship)

    with worker():
        handle = order.delay()
        with pytest.raises(WorkflowFailed) as info:
            handle.result(timeout=30)
    assert info.value.type == "RuntimeError"
    assert "refund" in (info.value.details or "")
    assert [e.state.value for e in handle.history()] == ["completed", "failed", "failed"]
    assert StepFailed  # the compensation's own failure is journaled as a failed step
