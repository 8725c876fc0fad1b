"""Cancellation, child workflows and continue_as_new, with a real worker on real Redis."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from celery_durable import (
    Durable,
    StepFailed,
    WorkflowCancelled,
    WorkflowContext,
    WorkflowFailed,
    WorkflowNotFound,
)
from runtime.waiting import wait_for


def test_cancel_during_a_running_step_runs_the_compensation(durable: Durable, worker: Any) -> None:
    gate = threading.Event()
    log: list[str] = []

    @durable.step
    def reserve() -> str:
        log.append("reserve")
        return "r-1"

    @durable.step
    def slow_charge() -> str:
        assert gate.wait(20)
        log.append("charge")
        return "c-1"

    @durable.step
    def release(reservation: str) -> None:
        log.append(f"release {reservation}")

    @durable.workflow
    async def order(ctx: WorkflowContext) -> str:
        async with ctx.saga() as saga:
            saga.compensate(release, await ctx.step(reserve))
            await ctx.step(slow_charge)
            return "paid"
        return "unreachable"

    with worker():
        handle = order.delay()
        wait_for(lambda: len(handle.history()) == 2)
        assert handle.cancel() is True
        wait_for(lambda: "release r-1" in log)
        gate.set()  # the running step ends; its outcome is journaled all the same
        with pytest.raises(WorkflowFailed) as info:
            handle.result(timeout=30)
        wait_for(lambda: handle.history()[1].state.value == "completed")
    assert info.value.type == "WorkflowCancelled"
    assert handle.status() == "cancelled"
    assert log == ["reserve", "release r-1", "charge"]
    kinds = [(e.kind.value, e.state.value) for e in handle.history()]
    assert ("cancel", "completed") in kinds
    assert handle.cancel() is False  # finished: nothing to do


def test_cancel_during_a_rollback_still_runs_every_compensation(
    durable: Durable, worker: Any
) -> None:
    """Regression: a cancel that arrived while a saga compensated skipped the rest."""
    gate = threading.Event()
    log: list[str] = []

    @durable.step
    def debit() -> None:
        log.append("debit")

    @durable.step
    def credit() -> None:
        log.append("credit")

    @durable.step
    def notify() -> None:
        raise RuntimeError("mail server down")

    @durable.step
    def refund_credit() -> None:
        log.append("refund credit: started")
        assert gate.wait(20)
        log.append("refund credit: done")

    @durable.step
    def refund_debit() -> None:
        log.append("refund debit")

    @durable.workflow
    async def transfer(ctx: WorkflowContext) -> str:
        async with ctx.saga() as saga:
            await ctx.step(debit)
            saga.compensate(refund_debit)
            await ctx.step(credit)
            saga.compensate(refund_credit)
            await ctx.step(notify)
        return "done"

    with worker():
        handle = transfer.delay()
        wait_for(lambda: "refund credit: started" in log)
        assert handle.cancel() is True
        wait_for(lambda: any(e.kind.value == "cancel" for e in handle.history()))
        gate.set()
        with pytest.raises(WorkflowFailed) as info:
            handle.result(timeout=30)

    assert log == [
        "debit",
        "credit",
        "refund credit: started",
        "refund credit: done",
        "refund debit",  # after the running one ended: the reverse order holds
    ]
    assert info.value.type == "RuntimeError"  # the saga's own failure, not the cancel
    assert "a cancellation arrived while the saga rolled back" in (info.value.details or "")


def test_cancelled_is_not_swallowed_by_except_exception(durable: Durable, worker: Any) -> None:
    @durable.workflow
    async def stubborn(ctx: WorkflowContext) -> str:
        try:
            await ctx.sleep(3600)
        except Exception:
            return "swallowed"
        return "woke"

    with worker():
        handle = stubborn.delay()
        wait_for(lambda: len(handle.history()) == 1)
        handle.cancel()
        with pytest.raises(WorkflowFailed, match="WorkflowCancelled"):
            handle.result(timeout=30)
    assert issubclass(WorkflowCancelled, BaseException)


def test_terminate_stops_without_running_more_code(durable: Durable, worker: Any) -> None:
    ran: list[str] = []

    @durable.step
    def never() -> None:
        ran.append("never")

    @durable.workflow
    async def sleeper(ctx: WorkflowContext) -> None:
        try:
            await ctx.sleep(3600)
        finally:
            await ctx.step(never)

    with worker():
        handle = sleeper.delay()
        wait_for(lambda: len(handle.history()) == 1)
        assert handle.terminate("ops said so") is True
        with pytest.raises(WorkflowFailed) as info:
            handle.result(timeout=10)
    assert (info.value.type, info.value.message) == ("WorkflowTerminated", "ops said so")
    assert ran == []
    assert handle.terminate() is False
    with pytest.raises(WorkflowNotFound):
        durable.cancel("nope")


def test_child_workflows_return_results_and_failures(durable: Durable, worker: Any) -> None:
    class Declined(Exception):
        pass

    @durable.step
    def pay(amount: int) -> str:
        if amount > 100:
            raise Declined(f"{amount} is too much")
        return f"paid {amount}"

    @durable.workflow
    async def payment(ctx: WorkflowContext, amount: int) -> str:
        return str(await ctx.step(pay, amount))

    @durable.workflow
    async def order(ctx: WorkflowContext) -> list[str]:
        results: list[str] = await ctx.gather(ctx.child(payment, 10), ctx.child(payment, 20))
        try:
            await ctx.child(payment, 500, workflow_id=f"{ctx.workflow_id}-big")
        except StepFailed as e:
            results.append(f"{e.type}: {e.message}")
        return results

    with worker():
        handle = order.apply_async(workflow_id="order-7")
        assert handle.result(timeout=30) == ["paid 10", "paid 20", "Declined: 500 is too much"]
    children = durable.list(workflow=payment.name)
    assert sorted(c.id for c in children) == ["order-7-big", "order-7:0", "order-7:1"]
    assert all(c.parent_id == "order-7" for c in children)


def test_continue_as_new_keeps_the_journal_bounded(durable: Durable, worker: Any) -> None:
    @durable.step
    def tick(n: int) -> int:
        return n + 1

    @durable.workflow
    async def counter(ctx: WorkflowContext, n: int) -> int:
        n = await ctx.step(tick, n)
        if n < 5:
            ctx.continue_as_new(n)
        return n

    with worker():
        handle = counter.apply_async((0,), workflow_id="eternal")
        assert handle.result(timeout=30) == 5
    history = handle.history()
    assert len(history) == 1  # only the last run's journal is kept
    assert history[0].args == (4,)
