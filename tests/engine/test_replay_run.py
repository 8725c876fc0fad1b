"""ctx.run: local functions run once, inline, and are journaled."""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import pytest

from celery_durable.engine import WorkflowContext, replay
from celery_durable.engine.journal import Event, Failure, Instance, Kind, State, Status
from celery_durable.errors import SerializationError, StepFailed

NOW = datetime(2024, 3, 1, 9, 30, tzinfo=timezone.utc)

MakeInstance = Callable[..., Instance]
MakeEvent = Callable[..., Event]


class Counter:
    def __init__(self, result: Any = None, error: Exception | None = None) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.result = result
        self.error = error

    def __call__(self, *args: Any) -> Any:
        self.calls.append(args)
        if self.error is not None:
            raise self.error
        return self.result


def test_run_executes_once_on_the_first_pass_and_is_journaled(
    instance: MakeInstance, codec: Any
) -> None:
    token = Counter(result="tok-1")

    async def wf(ctx: WorkflowContext) -> Any:
        value = await ctx.run(token, "user")
        return await ctx.step("mail.send", value)

    decision = replay(wf, instance(), [], codec=codec, now=NOW)

    assert token.calls == [("user",)]
    assert decision.status is Status.RUNNING
    assert decision.new_events == [
        Event(
            seq=0,
            kind=Kind.RUN,
            name="Counter",
            input='[["user"], {}]',
            state=State.COMPLETED,
            scheduled_at=NOW,
            output='"tok-1"',
            completed_at=NOW,
            attempts=1,
        ),
        Event(1, Kind.STEP, "mail.send", '[["tok-1"], {}]', State.SCHEDULED, NOW),
    ]

    # The next pass replays the journaled value instead of calling the function again.
    decision2 = replay(
        wf,
        instance(),
        [
            *decision.new_events[:1],
            Event(
                1, Kind.STEP, "mail.send", '[["tok-1"], {}]', State.COMPLETED, NOW, output='"sent"'
            ),
        ],
        codec=codec,
        now=NOW,
    )

    assert token.calls == [("user",)]
    assert decision2.status is Status.COMPLETED
    assert decision2.output == '"sent"'


def test_run_is_journaled_under_the_function_qualified_name(
    instance: MakeInstance, codec: Any
) -> None:
    def local() -> int:
        return 5

    async def wf(ctx: WorkflowContext) -> list[int]:
        return [await ctx.run(local), await ctx.run(functools.partial(local))]

    decision = replay(wf, instance(), [], codec=codec, now=NOW)

    assert decision.status is Status.COMPLETED
    assert decision.output == "[5, 5]"
    assert [e.name for e in decision.new_events] == [
        "test_run_is_journaled_under_the_function_qualified_name.<locals>.local",
        "partial",
    ]


def test_run_result_makes_the_round_trip_on_the_first_pass(
    instance: MakeInstance, codec: Any
) -> None:
    seen: list[Any] = []

    async def wf(ctx: WorkflowContext) -> None:
        seen.append(await ctx.run(lambda: (1, 2)))

    replay(wf, instance(), [], codec=codec, now=NOW)

    assert seen == [[1, 2]]  # a list, exactly as a replay decodes it


def test_run_failure_is_journaled_and_raised_as_step_failed(
    instance: MakeInstance, codec: Any
) -> None:
    seen: list[tuple[str, str]] = []

    def charge(amount: int) -> None:
        raise LookupError(f"no card for {amount}")

    async def wf(ctx: WorkflowContext) -> str:
        try:
            await ctx.run(charge, 10)
        except StepFailed as e:
            seen.append((e.type, e.message))
            return "compensated"
        return "not raised"

    decision = replay(wf, instance(), [], codec=codec, now=NOW)

    assert seen == [("LookupError", "no card for 10")]
    assert decision.status is Status.COMPLETED
    assert decision.output == '"compensated"'
    [event] = decision.new_events
    assert (event.kind, event.state, event.output) == (Kind.RUN, State.FAILED, None)
    assert event.failure is not None
    assert (event.failure.type, event.failure.message) == ("LookupError", "no card for 10")
    assert event.completed_at == NOW


def test_journaled_run_failure_is_replayed_without_calling(
    instance: MakeInstance, codec: Any
) -> None:
    charge = Counter(result="must not run")

    async def wf(ctx: WorkflowContext) -> None:
        await ctx.run(charge)

    journal = [
        Event(0, Kind.RUN, "Counter", "[[], {}]", State.FAILED, NOW, failure=Failure("E", "m"))
    ]
    decision = replay(wf, instance(), journal, codec=codec, now=NOW)

    assert charge.calls == []
    assert decision.status is Status.FAILED
    assert decision.failure is not None
    # The failure the workflow let through keeps the original type, not "StepFailed".
    assert (decision.failure.type, decision.failure.message) == ("E", "m")


def test_unserializable_run_result_is_a_journaled_failure(
    instance: MakeInstance, codec: Any
) -> None:
    async def wf(ctx: WorkflowContext) -> str:
        try:
            await ctx.run(object)
        except StepFailed as e:
            return f"{e.type}|{e.message}"
        return "not raised"

    decision = replay(wf, instance(), [], codec=codec, now=NOW)

    [event] = decision.new_events
    assert event.state is State.FAILED
    assert event.failure is not None
    assert event.failure.type == "SerializationError"
    assert decision.output is not None
    assert codec.loads(decision.output).startswith(
        "SerializationError|ctx.run(object) returned a value of type 'object' that the 'json'"
    )


def test_unserializable_run_argument_raises_at_the_call_site(
    instance: MakeInstance, codec: Any
) -> None:
    fn = Counter()

    async def wf(ctx: WorkflowContext) -> str:
        try:
            await ctx.run(fn, object())
        except SerializationError:
            return "caught"
        return "not raised"

    decision = replay(wf, instance(), [], codec=codec, now=NOW)

    assert fn.calls == []
    assert decision.output == '"caught"'
    assert decision.new_events == []


def test_run_rejects_async_functions(instance: MakeInstance, codec: Any) -> None:
    async def fetch() -> int:
        return 1

    async def wf(ctx: WorkflowContext) -> str:
        try:
            await ctx.run(fetch)  # type: ignore[unused-coroutine]  # mypy sees the misuse too
        except TypeError as e:
            return str(e)
        return "not raised"

    decision = replay(wf, instance(), [], codec=codec, now=NOW)

    assert decision.output is not None
    assert "not async ones" in codec.loads(decision.output)
    assert decision.new_events == []


def test_run_returning_an_awaitable_is_a_journaled_failure(
    instance: MakeInstance, codec: Any
) -> None:
    async def fetch() -> int:
        return 1

    async def wf(ctx: WorkflowContext) -> None:
        await ctx.run(lambda: fetch())  # type: ignore[unused-coroutine]

    decision = replay(wf, instance(), [], codec=codec, now=NOW)

    assert decision.status is Status.FAILED
    [event] = decision.new_events
    assert event.failure is not None
    assert event.failure.type == "TypeError"


def test_base_exception_in_run_propagates_and_is_not_journaled(
    instance: MakeInstance, codec: Any
) -> None:
    async def wf(ctx: WorkflowContext) -> None:
        await ctx.run(int)
        await ctx.run(_interrupt)

    with pytest.raises(KeyboardInterrupt):
        replay(wf, instance(), [], codec=codec, now=NOW)


def _interrupt() -> None:
    raise KeyboardInterrupt
