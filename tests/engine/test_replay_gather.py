"""ctx.gather: fan-out / fan-in over steps, timers and local runs."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from celery_durable.engine import WorkflowContext, replay
from celery_durable.engine.commands import Decision, ScheduleStep
from celery_durable.engine.journal import Event, Failure, Instance, Kind, State, Status
from celery_durable.errors import StepFailed

NOW = datetime(2024, 3, 1, 9, 30, tzinfo=timezone.utc)
MIN = timedelta(minutes=1)
FIX = (
    "Deploy code that replays this journal (or restore the previous code, or branch with "
    "ctx.patched()), then retry the instance."
)
OUT_OF_STOCK = Failure("OutOfStock", "no more widgets", "Traceback ...")

MakeInstance = Callable[..., Instance]
MakeEvent = Callable[..., Event]


def commit(journal: list[Event], decision: Decision) -> list[Event]:
    """What the runtime commits: fired timers replace their events, new events append."""
    fired = {e.seq: e for e in decision.fired}
    return [fired.get(e.seq, e) for e in journal] + list(decision.new_events)


def done(journal: list[Event], seq: int, output: Any, at: datetime = NOW) -> list[Event]:
    """A worker journals the result of step ``seq``."""
    event = dataclasses.replace(
        journal[seq], state=State.COMPLETED, output=json.dumps(output), completed_at=at
    )
    return [*journal[:seq], event, *journal[seq + 1 :]]


def failed(journal: list[Event], seq: int, failure: Failure, at: datetime = NOW) -> list[Event]:
    """A worker journals the failure of step ``seq``."""
    event = dataclasses.replace(journal[seq], state=State.FAILED, failure=failure, completed_at=at)
    return [*journal[:seq], event, *journal[seq + 1 :]]


def assert_blocked(decision: Decision) -> None:
    """Waiting on a pending step: RUNNING, nothing new to commit or send."""
    assert decision.status is Status.RUNNING
    assert (decision.new_events, decision.steps, decision.fired) == ([], [], [])
    assert decision.wake_at is None


async def order(ctx: WorkflowContext, sku: str) -> list[Any]:
    return await ctx.gather(
        ctx.step("shop.reserve", sku, 1),
        ctx.step("shop.charge", amount=10),
        ctx.step("shop.ship"),
    )


# -- steps in parallel --------------------------------------------------------------------


def test_first_pass_schedules_every_step_at_once(instance: MakeInstance, codec: Any) -> None:
    decision = replay(order, instance("w-1"), [], codec=codec, now=NOW)

    assert decision.status is Status.RUNNING
    assert [(e.seq, e.kind, e.name, e.state, e.scheduled_at) for e in decision.new_events] == [
        (0, Kind.STEP, "shop.reserve", State.SCHEDULED, NOW),
        (1, Kind.STEP, "shop.charge", State.SCHEDULED, NOW),
        (2, Kind.STEP, "shop.ship", State.SCHEDULED, NOW),
    ]
    assert [codec.loads(e.input) for e in decision.new_events] == [
        [["w-1", 1], {}],
        [[], {"amount": 10}],
        [[], {}],
    ]
    assert decision.steps == [
        ScheduleStep(0, "shop.reserve", ("w-1", 1), {}),
        ScheduleStep(1, "shop.charge", (), {"amount": 10}),
        ScheduleStep(2, "shop.ship", (), {}),
    ]
    assert decision.wake_at is None


def test_partial_outcomes_keep_the_gather_waiting(instance: MakeInstance, codec: Any) -> None:
    journal = commit([], replay(order, instance("w-1"), [], codec=codec, now=NOW))

    journal = done(journal, 1, "paid")
    assert_blocked(replay(order, instance("w-1"), journal, codec=codec, now=NOW + MIN))
    journal = done(journal, 0, "reserved")
    assert_blocked(replay(order, instance("w-1"), journal, codec=codec, now=NOW + 2 * MIN))


def test_results_come_in_argument_order(instance: MakeInstance, codec: Any) -> None:
    journal = commit([], replay(order, instance("w-1"), [], codec=codec, now=NOW))
    # completed in reverse order
    journal = done(
        done(done(journal, 2, "shipped", NOW + 1 * MIN), 1, "paid", NOW + 2 * MIN),
        0,
        [1, 2],
        NOW + 3 * MIN,
    )

    decision = replay(order, instance("w-1"), journal, codec=codec, now=NOW + 4 * MIN)

    assert decision.status is Status.COMPLETED
    assert codec.loads(decision.output) == [[1, 2], "paid", "shipped"]
    assert (decision.new_events, decision.steps) == ([], [])


async def order_or_refund(ctx: WorkflowContext) -> str:
    try:
        await ctx.gather(ctx.step("a"), ctx.step("b"), ctx.step("c"))
    except StepFailed as e:
        await ctx.step("refund", e.type)
        return f"refunded after {e.type}: {e.message}"
    return "ok"


def test_failure_is_raised_only_once_every_part_is_final(
    instance: MakeInstance, codec: Any
) -> None:
    journal = commit([], replay(order_or_refund, instance(), [], codec=codec, now=NOW))

    # b failed and is journaled, a is done, c still runs: the gather still waits
    journal = failed(done(journal, 0, 1), 1, OUT_OF_STOCK)
    assert_blocked(replay(order_or_refund, instance(), journal, codec=codec, now=NOW))

    # c is journaled too: now the workflow sees b's failure
    journal = done(journal, 2, 3)
    decision = replay(order_or_refund, instance(), journal, codec=codec, now=NOW + MIN)
    assert decision.status is Status.RUNNING
    assert decision.steps == [ScheduleStep(3, "refund", ("OutOfStock",), {})]

    journal = done(commit(journal, decision), 3, None)
    decision = replay(order_or_refund, instance(), journal, codec=codec, now=NOW + 2 * MIN)
    assert decision.status is Status.COMPLETED
    assert codec.loads(decision.output) == "refunded after OutOfStock: no more widgets"


def test_first_failure_in_argument_order_is_raised(instance: MakeInstance, codec: Any) -> None:
    seen: list[tuple[str, str, Any]] = []

    async def wf(ctx: WorkflowContext) -> None:
        try:
            await ctx.gather(ctx.step("a"), ctx.step("b"), ctx.step("c"))
        except StepFailed as e:
            seen.append((e.type, e.message, e.details))
            raise

    journal = commit([], replay(wf, instance(), [], codec=codec, now=NOW))
    # c failed first in time, b later: b comes first in argument order
    journal = failed(journal, 2, Failure("Late", "c broke"), NOW + MIN)
    journal = failed(journal, 1, OUT_OF_STOCK, NOW + 2 * MIN)
    journal = done(journal, 0, None, NOW + 3 * MIN)

    decision = replay(wf, instance(), journal, codec=codec, now=NOW + 4 * MIN)

    assert seen == [("OutOfStock", "no more widgets", "Traceback ...")]
    assert decision.status is Status.FAILED
    assert decision.failure == OUT_OF_STOCK


def test_uncaught_gather_failure_fails_the_workflow_with_the_step_type(
    instance: MakeInstance, codec: Any
) -> None:
    journal = commit([], replay(order, instance("w-1"), [], codec=codec, now=NOW))
    journal = done(failed(done(journal, 0, 1), 1, OUT_OF_STOCK), 2, 3)

    decision = replay(order, instance("w-1"), journal, codec=codec, now=NOW)

    assert decision.status is Status.FAILED
    assert decision.failure == OUT_OF_STOCK


# -- timers and local runs among the parts ------------------------------------------------


async def step_and_timer(ctx: WorkflowContext) -> list[Any]:
    return await ctx.gather(
        ctx.step("report"), ctx.sleep(timedelta(hours=1)), ctx.sleep(timedelta(hours=2))
    )


def test_pending_timers_of_a_gather_set_wake_at(instance: MakeInstance, codec: Any) -> None:
    decision = replay(step_and_timer, instance(), [], codec=codec, now=NOW)

    assert decision.status is Status.RUNNING
    assert [(e.seq, e.kind, e.state) for e in decision.new_events] == [
        (0, Kind.STEP, State.SCHEDULED),
        (1, Kind.TIMER, State.SCHEDULED),
        (2, Kind.TIMER, State.SCHEDULED),
    ]
    assert decision.steps == [ScheduleStep(0, "report", (), {})]
    assert decision.wake_at == NOW + timedelta(hours=1)  # the earliest pending timer


def test_gather_over_a_step_and_timers_pass_by_pass(instance: MakeInstance, codec: Any) -> None:
    hour = timedelta(hours=1)
    journal = commit([], replay(step_and_timer, instance(), [], codec=codec, now=NOW))

    # the step is done; the timers still count down
    journal = done(journal, 0, "sent", NOW + MIN)
    d1 = replay(step_and_timer, instance(), journal, codec=codec, now=NOW + MIN)
    assert (d1.status, d1.new_events, d1.fired, d1.wake_at) == (Status.RUNNING, [], [], NOW + hour)

    # the first timer fires; the gather now waits for the second one only
    d2 = replay(step_and_timer, instance(), journal, codec=codec, now=NOW + hour)
    assert [(e.seq, e.state, e.completed_at) for e in d2.fired] == [
        (1, State.COMPLETED, NOW + hour)
    ]
    assert (d2.status, d2.wake_at) == (Status.RUNNING, NOW + 2 * hour)
    journal = commit(journal, d2)

    d3 = replay(step_and_timer, instance(), journal, codec=codec, now=NOW + 3 * hour)
    assert [e.seq for e in d3.fired] == [2]
    assert d3.status is Status.COMPLETED
    assert codec.loads(d3.output) == ["sent", None, None]


def test_timer_that_fires_while_a_step_is_pending_is_journaled(
    instance: MakeInstance, codec: Any
) -> None:
    async def wf(ctx: WorkflowContext) -> list[Any]:
        return await ctx.gather(ctx.sleep(60), ctx.step("slow"))

    journal = commit([], replay(wf, instance(), [], codec=codec, now=NOW))

    decision = replay(wf, instance(), journal, codec=codec, now=NOW + 2 * MIN)

    assert decision.status is Status.RUNNING
    assert [e.seq for e in decision.fired] == [0]
    assert decision.wake_at is None  # only the step is left: no timer to wake for
    assert decision.new_events == []


def test_run_part_runs_inline_when_issued(instance: MakeInstance, codec: Any) -> None:
    calls: list[str] = []

    def token(prefix: str) -> str:
        calls.append(prefix)
        return f"{prefix}-42"

    async def wf(ctx: WorkflowContext) -> list[Any]:
        return await ctx.gather(ctx.step("a"), ctx.run(token, "tok"))

    first = replay(wf, instance(), [], codec=codec, now=NOW)

    assert calls == ["tok"]
    assert [(e.seq, e.kind, e.state) for e in first.new_events] == [
        (0, Kind.STEP, State.SCHEDULED),
        (1, Kind.RUN, State.COMPLETED),
    ]
    assert codec.loads(first.new_events[1].output) == "tok-42"
    assert first.steps == [ScheduleStep(0, "a", (), {})]

    journal = done(commit([], first), 0, "A")
    second = replay(wf, instance(), journal, codec=codec, now=NOW + MIN)

    assert calls == ["tok"]  # journaled: not run again
    assert second.status is Status.COMPLETED
    assert codec.loads(second.output) == ["A", "tok-42"]


def test_failed_run_part_still_waits_for_the_others(instance: MakeInstance, codec: Any) -> None:
    def boom() -> None:
        raise LookupError("no such key")

    async def wf(ctx: WorkflowContext) -> list[Any]:
        return await ctx.gather(ctx.run(boom), ctx.step("b"))

    first = replay(wf, instance(), [], codec=codec, now=NOW)
    assert first.status is Status.RUNNING
    assert [(e.seq, e.state) for e in first.new_events] == [
        (0, State.FAILED),
        (1, State.SCHEDULED),
    ]

    journal = done(commit([], first), 1, None)
    decision = replay(wf, instance(), journal, codec=codec, now=NOW)
    assert decision.status is Status.FAILED
    assert decision.failure is not None
    assert (decision.failure.type, decision.failure.message) == ("LookupError", "no such key")


# -- seq numbering ------------------------------------------------------------------------


def test_commands_after_a_gather_continue_the_seq(instance: MakeInstance, codec: Any) -> None:
    async def wf(ctx: WorkflowContext) -> Any:
        first = await ctx.step("before")
        both = await ctx.gather(ctx.step("x"), ctx.step("y"))
        return [first, both, await ctx.step("after")]

    journal = done(commit([], replay(wf, instance(), [], codec=codec, now=NOW)), 0, 0)
    d1 = replay(wf, instance(), journal, codec=codec, now=NOW)
    assert d1.steps == [ScheduleStep(1, "x", (), {}), ScheduleStep(2, "y", (), {})]

    journal = done(done(commit(journal, d1), 1, "X"), 2, "Y")
    d2 = replay(wf, instance(), journal, codec=codec, now=NOW)
    assert d2.steps == [ScheduleStep(3, "after", (), {})]

    journal = done(commit(journal, d2), 3, "Z")
    d3 = replay(wf, instance(), journal, codec=codec, now=NOW)
    assert d3.status is Status.COMPLETED
    assert codec.loads(d3.output) == [0, ["X", "Y"], "Z"]


def test_changed_part_inside_a_gather_is_stuck(
    instance: MakeInstance, codec: Any, event: MakeEvent
) -> None:
    journal = [
        event(0, "shop.reserve", State.SCHEDULED, args=("w-1", 1)),
        event(1, "shop.refund", State.SCHEDULED),
        event(2, "shop.ship", State.SCHEDULED),
    ]

    decision = replay(order, instance("w-1"), journal, codec=codec, now=NOW)

    assert decision.status is Status.STUCK
    assert decision.failure is not None
    assert decision.failure.type == "NonDeterminismError"
    assert decision.failure.message == (
        "workflow 'wf' (id 'wf-1') does not replay its journal: at seq 1 the journal holds "
        "step 'shop.refund' but the code asked for step 'shop.charge'. " + FIX
    )
    assert (decision.new_events, decision.steps, decision.fired) == ([], [], [])


def test_gather_of_more_parts_than_the_journal_holds_issues_the_new_ones(
    instance: MakeInstance, codec: Any, event: MakeEvent
) -> None:
    # the journal ends inside the gather (as after a code change that added parts)
    journal = [event(0, "shop.reserve", State.SCHEDULED, args=("w-1", 1))]

    decision = replay(order, instance("w-1"), journal, codec=codec, now=NOW)

    assert decision.status is Status.RUNNING
    assert [s.seq for s in decision.steps] == [1, 2]


def test_empty_gather_gives_an_empty_list_and_journals_nothing(
    instance: MakeInstance, codec: Any
) -> None:
    async def wf(ctx: WorkflowContext) -> Any:
        nothing = await ctx.gather()
        return [nothing, await ctx.step("next")]

    decision = replay(wf, instance(), [], codec=codec, now=NOW)

    assert decision.steps == [ScheduleStep(0, "next", (), {})]
    assert [e.seq for e in decision.new_events] == [0]

    journal = done(commit([], decision), 0, "n")
    assert codec.loads(replay(wf, instance(), journal, codec=codec, now=NOW).output) == [[], "n"]


# -- errors at the call site --------------------------------------------------------------


def outcome_of(instance: MakeInstance, codec: Any, wf: Any) -> Any:
    decision = replay(wf, instance(), [], codec=codec, now=NOW)
    assert decision.status is Status.COMPLETED, decision.failure
    return codec.loads(decision.output)


def test_coroutine_part_is_a_type_error_and_is_closed(instance: MakeInstance, codec: Any) -> None:
    # (were it not closed, Python would warn "never awaited", an error under pytest here)
    async def helper(ctx: WorkflowContext) -> Any:
        return await ctx.step("inner")

    async def wf(ctx: WorkflowContext) -> str:
        coro = helper(ctx)
        try:
            ctx.gather(ctx.step("a"), coro)
        except TypeError as e:
            return str(e)
        return "not raised"

    message = outcome_of(instance, codec, wf)

    assert message.startswith(
        "ctx.gather() argument 1 is a coroutine (test_coroutine_part_is_a_type_error_and_is_"
        "closed.<locals>.helper), not a ctx command."
    )
    assert "helper `async def` functions together is not supported (yet)" in message


def test_asyncio_future_part_is_a_type_error(instance: MakeInstance, codec: Any) -> None:
    loop = asyncio.new_event_loop()
    try:
        future = loop.create_future()

        async def wf(ctx: WorkflowContext) -> str:
            try:
                ctx.gather(future)
            except TypeError as e:
                return str(e)
            return "not raised"

        message = outcome_of(instance, codec, wf)
    finally:
        loop.close()

    assert message.startswith("ctx.gather() argument 0 is a 'Future', not a ctx command.")


def test_nested_gather_is_a_type_error(instance: MakeInstance, codec: Any) -> None:
    async def wf(ctx: WorkflowContext) -> str:
        try:
            ctx.gather(ctx.step("a"), ctx.gather(ctx.step("b")))
        except TypeError as e:
            return str(e)
        return "not raised"

    assert outcome_of(instance, codec, wf) == (
        "ctx.gather() argument 1 is a ctx.gather() of 1 command: combinations do not nest "
        "(yet); await it on its own or pass its commands directly"
    )


def test_command_of_another_context_is_a_type_error(instance: MakeInstance, codec: Any) -> None:
    contexts: list[WorkflowContext] = []

    async def grab(ctx: WorkflowContext) -> None:
        contexts.append(ctx)

    replay(grab, instance(), [], codec=codec, now=NOW)

    async def wf(ctx: WorkflowContext) -> str:
        try:
            ctx.gather(contexts[0].step("a"))
        except TypeError as e:
            return str(e)
        return "not raised"

    assert outcome_of(instance, codec, wf).startswith(
        "ctx.gather() argument 0 is step 'a' created by another workflow context"
    )


def test_part_passed_twice_is_a_runtime_error(instance: MakeInstance, codec: Any) -> None:
    async def wf(ctx: WorkflowContext) -> str:
        a = ctx.step("a")
        try:
            ctx.gather(a, ctx.step("b"), a)
        except RuntimeError as e:
            return str(e)
        return "not raised"

    assert outcome_of(instance, codec, wf) == (
        "ctx.gather() got step 'a' twice (again as argument 2); pass a new command for each part"
    )


def test_part_already_awaited_is_a_runtime_error(
    instance: MakeInstance, codec: Any, event: MakeEvent
) -> None:
    async def wf(ctx: WorkflowContext) -> str:
        a = ctx.step("a")
        await a
        try:
            ctx.gather(a)
        except RuntimeError as e:
            return str(e)
        return "not raised"

    decision = replay(wf, instance(), [event(0, "a")], codec=codec, now=NOW)

    assert codec.loads(decision.output) == (
        "step 'a' was already awaited; call ctx.step(...) again to issue another command"
    )


def test_awaiting_a_part_of_a_gather_is_a_runtime_error(instance: MakeInstance, codec: Any) -> None:
    async def wf(ctx: WorkflowContext) -> str:
        a = ctx.step("a")
        ctx.gather(a, ctx.step("b"))
        try:
            await a
        except RuntimeError as e:
            return str(e)
        return "not raised"

    assert outcome_of(instance, codec, wf) == (
        "step 'a' was already passed to ctx.gather(); call ctx.step(...) again to issue "
        "another command"
    )


def test_gather_cannot_be_awaited_twice(instance: MakeInstance, codec: Any) -> None:
    async def wf(ctx: WorkflowContext) -> str:
        both = ctx.gather(ctx.run(int), ctx.run(int))
        await both
        try:
            await both
        except RuntimeError as e:
            return str(e)
        return "not raised"

    assert outcome_of(instance, codec, wf).startswith(
        "ctx.gather() of 2 commands was already awaited"
    )


def test_rejected_gather_uses_up_none_of_its_commands(instance: MakeInstance, codec: Any) -> None:
    async def wf(ctx: WorkflowContext) -> Any:
        a = ctx.run(int, "7")
        with pytest.raises(TypeError):
            ctx.gather(a, "not a command")  # type: ignore[arg-type]
        return await a

    assert outcome_of(instance, codec, wf) == 7
