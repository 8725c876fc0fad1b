"""Replays that cannot go on: changed code, foreign awaits, unreadable journals."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator
from datetime import datetime, timezone
from typing import Any

from celery_durable.engine import WorkflowContext, replay
from celery_durable.engine.commands import Decision
from celery_durable.engine.journal import Event, Instance, Kind, State, Status

NOW = datetime(2024, 3, 1, 9, 30, tzinfo=timezone.utc)

MakeInstance = Callable[..., Instance]
MakeEvent = Callable[..., Event]

FIX = (
    "Deploy code that replays this journal (or restore the previous code, or branch with "
    "ctx.patched()), then retry the instance."
)


def assert_stuck(decision: Decision, failure_type: str) -> str:
    assert decision.status is Status.STUCK
    assert decision.new_events == []
    assert decision.steps == []
    assert decision.output is None
    assert decision.failure is not None
    assert decision.failure.type == failure_type
    return decision.failure.message


async def two_steps(ctx: WorkflowContext) -> str:
    await ctx.step("a")
    return await ctx.step("b_renamed")  # type: ignore[no-any-return]


def test_changed_step_name_is_non_determinism(
    instance: MakeInstance, codec: Any, event: MakeEvent
) -> None:
    journal = [event(0, "a", output=1), event(1, "b", State.STARTED)]

    decision = replay(two_steps, instance(workflow="signup"), journal, codec=codec, now=NOW)

    message = assert_stuck(decision, "NonDeterminismError")
    assert message == (
        "workflow 'signup' (id 'wf-1') does not replay its journal: at seq 1 the journal "
        "holds step 'b' but the code asked for step 'b_renamed'. " + FIX
    )


def test_changed_kind_is_non_determinism(
    instance: MakeInstance, codec: Any, event: MakeEvent
) -> None:
    def a() -> int:
        return 1

    async def wf(ctx: WorkflowContext) -> None:
        await ctx.run(a)

    journal = [event(0, a.__qualname__, output=1)]
    decision = replay(wf, instance(), journal, codec=codec, now=NOW)

    message = assert_stuck(decision, "NonDeterminismError")
    assert (
        f"at seq 0 the journal holds step '{a.__qualname__}' but the code asked for "
        f"run '{a.__qualname__}'" in message
    )


def test_stuck_pass_commits_nothing_even_after_a_new_run(
    instance: MakeInstance, codec: Any
) -> None:
    calls: list[int] = []

    async def wf(ctx: WorkflowContext) -> None:
        await ctx.step("a")
        await ctx.run(calls.append, 1)
        await asyncio.sleep(0)

    journal = [Event(0, Kind.STEP, "a", "[[], {}]", State.COMPLETED, NOW, output="1")]
    decision = replay(wf, instance(), journal, codec=codec, now=NOW)

    assert calls == [1]  # the run did execute in this pass ...
    assert_stuck(decision, "InvalidAwait")  # ... but a stuck pass journals nothing


def test_journal_events_beyond_completion_are_non_determinism(
    instance: MakeInstance, codec: Any, event: MakeEvent
) -> None:
    async def wf(ctx: WorkflowContext) -> int:
        return await ctx.step("a")  # type: ignore[no-any-return]

    journal = [event(0, "a", output=1), event(1, "b", output=2)]
    decision = replay(wf, instance(), journal, codec=codec, now=NOW)

    message = assert_stuck(decision, "NonDeterminismError")
    assert message == (
        "workflow 'wf' (id 'wf-1') returned after 1 commands but its journal holds 2 events: "
        "at seq 1 the journal holds step 'b' that the code no longer asks for. " + FIX
    )


def test_journal_events_beyond_a_failure_are_non_determinism(
    instance: MakeInstance, codec: Any, event: MakeEvent
) -> None:
    async def wf(ctx: WorkflowContext) -> None:
        raise ValueError("early")

    decision = replay(wf, instance(), [event(0, "a", State.SCHEDULED)], codec=codec, now=NOW)

    message = assert_stuck(decision, "NonDeterminismError")
    assert "raised ValueError after 0 commands" in message


def test_awaiting_asyncio_sleep_is_stuck(instance: MakeInstance, codec: Any) -> None:
    async def wf(ctx: WorkflowContext) -> None:
        await asyncio.sleep(0)

    message = assert_stuck(replay(wf, instance(), [], codec=codec, now=NOW), "InvalidAwait")
    assert message == (
        "workflow 'wf' (id 'wf-1') awaited something that is not a ctx command (it yielded "
        "None, as asyncio awaitables do). Workflow code may only await ctx commands "
        "(ctx.step, ctx.run, ...): run other async code inside a step."
    )


class Foreign:
    def __await__(self) -> Generator[Any, Any, None]:
        yield self

    def __repr__(self) -> str:
        return "<Foreign>"


def test_awaiting_a_foreign_awaitable_is_stuck_and_names_it(
    instance: MakeInstance, codec: Any
) -> None:
    async def wf(ctx: WorkflowContext) -> None:
        await ctx.run(int)
        await Foreign()

    decision = replay(wf, instance(), [], codec=codec, now=NOW)

    message = assert_stuck(decision, "InvalidAwait")
    assert "(it yielded <Foreign>," in message


def test_awaiting_a_command_of_another_context_is_stuck(instance: MakeInstance, codec: Any) -> None:
    contexts: list[WorkflowContext] = []

    async def first(ctx: WorkflowContext) -> None:
        contexts.append(ctx)

    replay(first, instance(), [], codec=codec, now=NOW)

    async def wf(ctx: WorkflowContext) -> None:
        await contexts[0].step("a")

    message = assert_stuck(replay(wf, instance(), [], codec=codec, now=NOW), "InvalidAwait")
    assert "awaited step 'a' created by another workflow context" in message


def test_workflow_that_is_not_async_is_stuck(instance: MakeInstance, codec: Any) -> None:
    def wf(ctx: WorkflowContext) -> int:
        return 1

    message = assert_stuck(
        replay(wf, instance(), [], codec=codec, now=NOW),  # type: ignore[arg-type]
        "InvalidWorkflow",
    )
    assert message == (
        "workflow 'wf' (id 'wf-1') is not an async def function: calling it returned 1, "
        "not a coroutine"
    )


def test_undecodable_step_result_is_stuck(instance: MakeInstance, codec: Any) -> None:
    async def wf(ctx: WorkflowContext) -> None:
        await ctx.step("a")

    journal = [Event(0, Kind.STEP, "a", "[[], {}]", State.COMPLETED, NOW, output="{not json")]
    message = assert_stuck(
        replay(wf, instance(), journal, codec=codec, now=NOW), "SerializationError"
    )
    assert message.startswith(
        "cannot decode the result of seq 0 of workflow 'wf' (id 'wf-1') with the 'json' serializer"
    )


def test_input_that_is_not_args_and_kwargs_is_stuck(instance: MakeInstance, codec: Any) -> None:
    async def wf(ctx: WorkflowContext) -> None:
        return None

    bad = instance()
    bad.input = "[1, 2, 3]"
    message = assert_stuck(replay(wf, bad, [], codec=codec, now=NOW), "SerializationError")
    assert message.startswith("the input of workflow 'wf' (id 'wf-1') is not an encoded")


def test_journal_with_a_gap_is_stuck(instance: MakeInstance, codec: Any, event: MakeEvent) -> None:
    async def wf(ctx: WorkflowContext) -> None:
        await ctx.step("a")

    message = assert_stuck(
        replay(wf, instance(), [event(1, "a")], codec=codec, now=NOW), "InvalidJournal"
    )
    assert "position 0 holds seq 1" in message
