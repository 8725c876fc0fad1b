"""Failed or stuck, retry and rewind, changed arguments, cancel of a stuck instance
(issue 9, items 8, 9 and 10), on a real worker and Redis, both stores.

A journaled outcome escaping the workflow, or a type listed in ``failure_exceptions``,
fails it; any other exception is a bug that parks it as ``stuck`` (logged at ERROR with
its id) until ``durable.retry`` resumes it with fixed code. ``durable.retry`` of a failed
instance rewinds it to its failure point.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import pytest

from celery_durable import (
    Durable,
    DurableError,
    StepFailed,
    WorkflowContext,
    WorkflowFailed,
    WorkflowStuck,
)
from runtime.waiting import wait_for


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Any, postgres_db_url: str) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/journal.sqlite3"
    return postgres_db_url


class InsufficientFunds(Exception):
    pass


def test_a_bug_parks_the_instance_and_retry_resumes_it_with_fixed_code(
    durable: Durable, worker: Any, caplog: pytest.LogCaptureFixture
) -> None:
    runs = Counter[str]()
    fixed = False

    @durable.step
    def charge(account: str) -> str:
        runs[account] += 1
        return f"tx-{account}"

    @durable.workflow
    async def pay(ctx: WorkflowContext, account: str) -> str:
        tx = await ctx.step(charge, account)
        if not fixed:
            raise ValueError(f"bad receipt for {tx}")  # a bug in workflow code
        return str(tx)

    with caplog.at_level(logging.ERROR, logger="celery_durable"), worker():
        handle = pay.delay("alice")
        with pytest.raises(WorkflowStuck) as stuck:
            handle.result(timeout=30)
        assert (stuck.value.type, stuck.value.message) == ("ValueError", "bad receipt for tx-alice")
        assert "Traceback" in (stuck.value.details or "")

        def stuck_logged() -> bool:
            logged = [r.getMessage() for r in caplog.records if handle.id in r.getMessage()]
            return any("is stuck" in line and "ValueError" in line for line in logged)

        # Logged by the worker right after its commit, which result() may hear of first.
        wait_for(stuck_logged, timeout=5)

        fixed = True  # a fix is deployed
        durable.retry(handle.id)
        assert handle.result(timeout=30) == "tx-alice"
    assert runs == {"alice": 1}  # the journaled step was not run again


def test_listed_failure_exceptions_fail_and_are_logged(
    durable: Durable, worker: Any, caplog: pytest.LogCaptureFixture
) -> None:
    @durable.workflow(failure_exceptions=(InsufficientFunds,))
    async def pay(ctx: WorkflowContext, amount: int) -> None:
        raise InsufficientFunds(f"{amount} is too much")

    with caplog.at_level(logging.ERROR, logger="celery_durable"), worker():
        handle = pay.delay(500)
        with pytest.raises(WorkflowFailed) as failed:
            handle.result(timeout=30)
    assert failed.value.type == "InsufficientFunds"
    assert any(handle.id in r.getMessage() and "failed" in r.getMessage() for r in caplog.records)


def test_retry_rewinds_a_failed_instance_to_its_failure_point(
    durable: Durable, worker: Any
) -> None:
    runs = Counter[str]()

    @durable.step
    def book(item: str) -> str:
        runs[item] += 1
        if item == "flight" and runs[item] == 1:
            raise ConnectionRefusedError("the airline is down")  # fails for good, once
        return f"{item}-ok"

    @durable.workflow
    async def trip(ctx: WorkflowContext) -> list[str]:
        hotel = await ctx.step(book, "hotel")
        flight = await ctx.step(book, "flight")
        return [hotel, flight]

    with worker():
        handle = trip.delay()
        with pytest.raises(WorkflowFailed) as failed:
            handle.result(timeout=30)
        assert failed.value.type == "ConnectionRefusedError"
        durable.retry(handle.id)  # the airline is back: rewind to the failed step
        assert handle.result(timeout=30) == ["hotel-ok", "flight-ok"]
    assert runs == {"hotel": 1, "flight": 2}  # the hotel step replayed from the journal
    assert [e.attempts for e in handle.history()] == [1, 1]


def test_a_failed_instance_that_compensated_is_not_rewound(durable: Durable, worker: Any) -> None:
    compensated = Counter[str]()

    @durable.step
    def book(item: str) -> str:
        if item == "flight":
            raise ConnectionRefusedError("the airline is down")
        return f"{item}-ok"

    @durable.step
    def cancel_booking(item: str) -> None:
        compensated[item] += 1

    @durable.workflow
    async def trip(ctx: WorkflowContext) -> list[str]:
        async with ctx.saga() as saga:
            hotel = await ctx.step(book, "hotel")
            saga.compensate(cancel_booking, "hotel")
            flight = await ctx.step(book, "flight")
            return [hotel, flight]

    with worker():
        handle = trip.delay()
        with pytest.raises(WorkflowFailed):
            handle.result(timeout=30)
        journal = handle.history()
        with pytest.raises(DurableError, match=r"failed at seq 1 .* then sent seq 2 step"):
            durable.retry(handle.id)  # the hotel was cancelled: a rewind would forget it
        assert handle.status() == "failed"
        assert handle.history() == journal
    assert compensated == {"hotel": 1}


def test_changed_step_arguments_park_the_instance_naming_both(
    durable: Durable, worker: Any
) -> None:
    version = 1

    @durable.step
    def charge(account: str, amount: int) -> str:
        return f"tx-{account}-{amount}"

    @durable.workflow
    async def pay(ctx: WorkflowContext) -> str:
        if version == 1:
            tx = await ctx.step(charge, "alice", 100)
        else:
            tx = await ctx.step(charge, "bob", 999)
        await ctx.wait_signal("go")
        return str(tx)

    with worker():
        handle = pay.delay()
        wait_for(lambda: len(handle.history()) == 2)
        version = 2  # a deploy that changed the arguments
        durable.live.clear()  # (a deploy restarts the worker: nothing kept in memory)
        handle.signal("go")
        with pytest.raises(WorkflowStuck) as stuck:
            handle.result(timeout=30)
    assert stuck.value.type == "NonDeterminismError"
    message = stuck.value.message
    assert "at seq 0" in message
    assert "charge" in message
    assert "('alice', 100)" in message
    assert "('bob', 999)" in message


def test_cancel_of_a_stuck_instance_applies_when_it_is_retried(
    durable: Durable, worker: Any
) -> None:
    fixed = False
    done: list[str] = []

    @durable.step
    def reserve() -> str:
        done.append("reserve")
        return "r-1"

    @durable.step
    def release(reservation: str) -> None:
        done.append(f"release {reservation}")

    @durable.step
    def ship() -> None:
        done.append("ship")

    @durable.workflow
    async def order(ctx: WorkflowContext) -> str:
        async with ctx.saga() as saga:
            reservation = await ctx.step(reserve)
            saga.compensate(release, reservation)
            if not fixed:
                raise KeyError("bug")
            await ctx.step(ship)
        return "shipped"

    with worker():
        handle = order.delay()
        with pytest.raises(WorkflowStuck):
            handle.result(timeout=30)
        assert handle.cancel() is True
        assert handle.status() == "stuck"  # it waits for the retry
        fixed = True
        durable.retry(handle.id)
        with pytest.raises(WorkflowFailed) as cancelled:
            handle.result(timeout=30)
    assert cancelled.value.type == "WorkflowCancelled"
    assert done == ["reserve", "release r-1"]  # compensated, never shipped


def test_a_failed_step_inside_the_workflow_still_fails_it(durable: Durable, worker: Any) -> None:
    @durable.step
    def boom() -> None:
        raise RuntimeError("down")

    @durable.workflow
    async def wf(ctx: WorkflowContext) -> None:
        try:
            await ctx.step(boom)
        except StepFailed:
            raise

    with worker(), pytest.raises(WorkflowFailed) as failed:
        wf.delay().result(timeout=30)
    assert failed.value.type == "RuntimeError"
