"""ctx.continue_as_new: the pass ends with a restart, nothing else is journaled."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from celery_durable.engine import WorkflowContext, replay
from celery_durable.engine.journal import Event, Instance, Kind, Signal, State, Status
from celery_durable.errors import SerializationError

NOW = datetime(2024, 3, 1, 9, 30, tzinfo=timezone.utc)

MakeInstance = Callable[..., Instance]


def test_decision_carries_the_restart_input_and_nothing_else(
    instance: MakeInstance, codec: Any
) -> None:
    async def wf(ctx: WorkflowContext, count: int) -> Any:
        await ctx.run(lambda: "local")
        ctx.set_status("ticking")
        async with ctx.saga() as saga:  # a restart is not a failure: nothing compensates
            saga.compensate("undo")
            try:
                ctx.continue_as_new(count + 1, mode="fast")
            except Exception:  # does not catch it
                return "caught"
        return "not reached"

    decision = replay(wf, instance(1), [], codec=codec, now=NOW)

    assert decision.status is Status.RUNNING
    assert decision.restart_input is not None
    assert codec.loads(decision.restart_input) == [[2], {"mode": "fast"}]
    assert (decision.new_events, decision.steps, decision.fired, decision.children) == (
        [],
        [],
        [],
        [],
    )
    assert (decision.output, decision.failure, decision.wake_at) == (None, None, None)
    assert decision.custom_status is None
    assert decision.consumed == []


def test_restart_after_replaying_its_journal(instance: MakeInstance, codec: Any) -> None:
    async def wf(ctx: WorkflowContext, count: int) -> Any:
        await ctx.step("tick", count)
        ctx.continue_as_new(count + 1)

    journal = [Event(0, Kind.STEP, "tick", "[[1], {}]", State.COMPLETED, NOW, "null")]

    decision = replay(wf, instance(1), journal, codec=codec, now=NOW)

    assert decision.restart_input is not None
    assert codec.loads(decision.restart_input) == [[2], {}]


def test_signals_taken_by_the_ending_run_are_consumed(instance: MakeInstance, codec: Any) -> None:
    async def wf(ctx: WorkflowContext, total: int) -> Any:
        total += await ctx.wait_signal("add")
        ctx.continue_as_new(total)

    inbox = [Signal(1, "add", "5", NOW), Signal(2, "add", "6", NOW)]

    decision = replay(wf, instance(10), [], codec=codec, now=NOW, signals=inbox)

    assert decision.restart_input is not None
    assert codec.loads(decision.restart_input) == [[15], {}]
    assert decision.consumed == [(1, 0)]  # signal 2 stays for the new run
    assert decision.new_events == []


def test_unencodable_arguments_raise_at_the_call_site(instance: MakeInstance, codec: Any) -> None:
    async def wf(ctx: WorkflowContext) -> Any:
        try:
            ctx.continue_as_new(object())
        except SerializationError as exc:
            return f"kept running: {exc}"

    decision = replay(wf, instance(), [], codec=codec, now=NOW)

    assert decision.status is Status.COMPLETED
    assert decision.restart_input is None
    assert "ctx.continue_as_new()" in (decision.output or "")


def test_restart_before_the_end_of_the_journal_is_stuck(instance: MakeInstance, codec: Any) -> None:
    async def wf(ctx: WorkflowContext) -> Any:
        ctx.continue_as_new()

    journal = [Event(0, Kind.STEP, "tick", "[[], {}]", State.SCHEDULED, NOW)]

    decision = replay(wf, instance(), journal, codec=codec, now=NOW)

    assert (decision.status, decision.restart_input) == (Status.STUCK, None)


def test_a_cancel_pending_when_the_run_continues_as_new_cancels_the_instance(
    instance: MakeInstance, codec: Any
) -> None:
    """Issue 9: the restart would clear the cancel request; it applies at the boundary."""

    async def wf(ctx: WorkflowContext, n: int) -> None:
        ctx.continue_as_new(n + 1)

    decision = replay(wf, instance(0), [], codec=codec, now=NOW, cancel_requested=True)

    assert (decision.status, decision.restart_input) == (Status.CANCELLED, None)
    assert decision.failure is not None
    assert decision.failure.type == "WorkflowCancelled"
