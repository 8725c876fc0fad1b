"""ctx.set_status: a custom status for observers, carried by the decision; not a command."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from celery_durable.engine import WorkflowContext, replay
from celery_durable.engine.journal import Event, Instance, State, Status
from celery_durable.errors import SerializationError

NOW = datetime(2024, 3, 1, 9, 30, tzinfo=timezone.utc)

MakeInstance = Callable[..., Instance]
MakeEvent = Callable[..., Event]


async def progress(ctx: WorkflowContext) -> str:
    ctx.set_status({"stage": "charging"})
    await ctx.step("charge")
    ctx.set_status({"stage": "shipping", "done": 1})
    await ctx.step("ship")
    return "ok"


def test_status_set_in_the_pass_is_in_the_decision(instance: MakeInstance, codec: Any) -> None:
    decision = replay(progress, instance(), [], codec=codec, now=NOW)

    assert decision.status is Status.RUNNING
    assert decision.sets_custom_status
    assert codec.loads(decision.custom_status) == {"stage": "charging"}
    assert [e.name for e in decision.new_events] == ["charge"]  # no event of its own


def test_last_value_reached_wins_and_replays_identically(
    instance: MakeInstance, codec: Any, event: MakeEvent
) -> None:
    journal = [event(0, "charge", output=None)]

    decision = replay(progress, instance(), journal, codec=codec, now=NOW)
    again = replay(progress, instance(), journal, codec=codec, now=NOW)

    assert codec.loads(decision.custom_status) == {"stage": "shipping", "done": 1}
    assert again.custom_status == decision.custom_status
    assert [e.seq for e in decision.new_events] == [1]  # set_status takes no seq


def test_status_is_kept_in_the_final_decisions(
    instance: MakeInstance, codec: Any, event: MakeEvent
) -> None:
    async def fails(ctx: WorkflowContext) -> None:
        ctx.set_status("about to fail")
        raise ValueError("no")

    completed = replay(
        progress, instance(), [event(0, "charge"), event(1, "ship")], codec=codec, now=NOW
    )
    failed = replay(fails, instance(), [], codec=codec, now=NOW, failure_exceptions=(ValueError,))

    assert completed.status is Status.COMPLETED
    assert codec.loads(completed.custom_status) == {"stage": "shipping", "done": 1}
    assert failed.status is Status.FAILED
    assert codec.loads(failed.custom_status) == "about to fail"


def test_not_called_leaves_the_stored_status_alone(instance: MakeInstance, codec: Any) -> None:
    async def quiet(ctx: WorkflowContext) -> None:
        await ctx.step("a")

    decision = replay(quiet, instance(), [], codec=codec, now=NOW)

    assert decision.custom_status is None
    assert not decision.sets_custom_status


def test_none_clears_the_status(instance: MakeInstance, codec: Any) -> None:
    async def clears(ctx: WorkflowContext) -> None:
        ctx.set_status("busy")
        ctx.set_status(None)
        await ctx.step("a")

    decision = replay(clears, instance(), [], codec=codec, now=NOW)

    assert decision.sets_custom_status
    assert decision.custom_status == codec.dumps(None)


def test_unserializable_status_raises_at_the_call_site(instance: MakeInstance, codec: Any) -> None:
    async def wf(ctx: WorkflowContext) -> str:
        ctx.set_status("kept")
        try:
            ctx.set_status(object())
        except SerializationError as e:
            return str(e)
        return "not raised"

    decision = replay(wf, instance(), [], codec=codec, now=NOW)

    assert codec.loads(decision.output).startswith(
        "ctx.set_status() got a value of type 'object' that the 'json' serializer cannot encode"
    )
    assert codec.loads(decision.custom_status) == "kept"


def test_stuck_decision_carries_no_status(instance: MakeInstance, codec: Any) -> None:
    async def wf(ctx: WorkflowContext) -> None:
        ctx.set_status("x")
        await asyncio.sleep(0)

    decision = replay(wf, instance(), [], codec=codec, now=NOW)

    assert decision.status is Status.STUCK
    assert decision.custom_status is None


def test_status_set_while_closing_a_blocked_workflow_is_not_kept(
    instance: MakeInstance, codec: Any
) -> None:
    async def wf(ctx: WorkflowContext) -> None:
        ctx.set_status("waiting")
        try:
            await ctx.step("a")
        finally:
            ctx.set_status("left the step")  # runs when the engine closes the coroutine

    decision = replay(wf, instance(), [], codec=codec, now=NOW)

    assert decision.status is Status.RUNNING
    assert codec.loads(decision.custom_status) == "waiting"
    assert decision.new_events[0].state is State.SCHEDULED
