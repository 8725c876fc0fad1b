"""Steps: scheduling, replaying their outcomes, failures, completion."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from celery_durable.engine import WorkflowContext, replay
from celery_durable.engine.commands import ScheduleStep
from celery_durable.engine.journal import Event, Failure, Instance, Kind, State, Status
from celery_durable.errors import SerializationError, StepFailed

NOW = datetime(2024, 3, 1, 9, 30, tzinfo=timezone.utc)
EARLIER = NOW - timedelta(hours=1)

MakeInstance = Callable[..., Instance]
MakeEvent = Callable[..., Event]


@dataclass
class Task:
    """Stands in for a @durable.step task: the engine only reads ``name``."""

    name: str


start_transfer = Task("bank.start_transfer")
rollback_transfer = Task("bank.rollback_transfer")


async def money_transfer(ctx: WorkflowContext, src: str, dst: str, amount: int) -> list[str]:
    src_tran = dst_tran = None
    try:
        src_tran = await ctx.step(start_transfer, src, -amount)
        dst_tran = await ctx.step(start_transfer, dst, +amount)
        return [src_tran, dst_tran]
    except StepFailed as e:
        if e.type != "TransferFailed":
            raise
        if src_tran:
            await ctx.step(rollback_transfer, src, src_tran)
        if dst_tran:
            await ctx.step(rollback_transfer, dst, dst_tran)
        raise


ALICE = ("alice", -100)
BOB = ("bob", 100)
"""The arguments of money_transfer("alice", "bob", 100)'s two bookings."""


def run_transfer(instance: MakeInstance, codec: Any, events: list[Event]) -> Any:
    return replay(money_transfer, instance("alice", "bob", 100), events, codec=codec, now=NOW)


def test_first_pass_schedules_step_zero_and_stops(instance: MakeInstance, codec: Any) -> None:
    decision = run_transfer(instance, codec, [])

    assert decision.status is Status.RUNNING
    assert decision.new_events == [
        Event(
            seq=0,
            kind=Kind.STEP,
            name="bank.start_transfer",
            input='[["alice", -100], {}]',
            state=State.SCHEDULED,
            scheduled_at=NOW,
        )
    ]
    assert decision.steps == [ScheduleStep(0, "bank.start_transfer", ("alice", -100), {})]
    assert decision.output is None
    assert decision.failure is None


def test_completed_step_is_replayed_and_the_next_one_scheduled(
    instance: MakeInstance, codec: Any, event: MakeEvent
) -> None:
    journal = [event(0, "bank.start_transfer", output="T-1", at=EARLIER, args=ALICE)]

    decision = run_transfer(instance, codec, journal)

    assert decision.status is Status.RUNNING
    assert [(e.seq, e.name, e.input, e.state) for e in decision.new_events] == [
        (1, "bank.start_transfer", '[["bob", 100], {}]', State.SCHEDULED)
    ]
    assert decision.steps == [ScheduleStep(1, "bank.start_transfer", ("bob", 100), {})]


def test_workflow_completes_with_its_encoded_result(
    instance: MakeInstance, codec: Any, event: MakeEvent
) -> None:
    journal = [
        event(0, "bank.start_transfer", output="T-1", args=ALICE),
        event(1, "bank.start_transfer", output="T-2", args=BOB),
    ]

    decision = run_transfer(instance, codec, journal)

    assert decision.status is Status.COMPLETED
    assert decision.output == '["T-1", "T-2"]'
    assert decision.new_events == []
    assert decision.steps == []
    assert decision.failure is None


def test_step_kwargs_are_encoded_and_sent(instance: MakeInstance, codec: Any) -> None:
    async def wf(ctx: WorkflowContext) -> None:
        await ctx.step("mail.send", "a@example.com", subject="hi")

    decision = replay(wf, instance(), [], codec=codec, now=NOW)

    assert decision.new_events[0].input == '[["a@example.com"], {"subject": "hi"}]'
    assert decision.steps == [ScheduleStep(0, "mail.send", ("a@example.com",), {"subject": "hi"})]


TRANSFER_FAILED = Failure("TransferFailed", "insufficient funds", "Traceback ...")


def test_failed_step_raises_step_failed_and_compensation_is_scheduled(
    instance: MakeInstance, codec: Any, event: MakeEvent
) -> None:
    journal = [
        event(0, "bank.start_transfer", output="T-1", args=ALICE),
        event(1, "bank.start_transfer", State.FAILED, failure=TRANSFER_FAILED, args=BOB),
    ]

    decision = run_transfer(instance, codec, journal)

    assert decision.status is Status.RUNNING
    assert [(e.seq, e.name, e.input) for e in decision.new_events] == [
        (2, "bank.rollback_transfer", '[["alice", "T-1"], {}]')
    ]
    assert decision.steps == [ScheduleStep(2, "bank.rollback_transfer", ("alice", "T-1"), {})]


def test_workflow_fails_after_compensation_with_the_reraised_step_failure(
    instance: MakeInstance, codec: Any, event: MakeEvent
) -> None:
    journal = [
        event(0, "bank.start_transfer", output="T-1", args=ALICE),
        event(1, "bank.start_transfer", State.FAILED, failure=TRANSFER_FAILED, args=BOB),
        event(2, "bank.rollback_transfer", output=None, args=("alice", "T-1")),
    ]

    decision = run_transfer(instance, codec, journal)

    assert decision.status is Status.FAILED
    assert decision.failure is not None
    assert decision.failure.type == "TransferFailed"
    assert decision.failure.message == "insufficient funds"
    assert decision.new_events == []


def test_step_failed_carries_the_journaled_failure(
    instance: MakeInstance, codec: Any, event: MakeEvent
) -> None:
    seen: list[tuple[str, str, Any]] = []

    async def wf(ctx: WorkflowContext) -> str:
        try:
            await ctx.step("bank.start_transfer")
        except StepFailed as e:
            seen.append((e.type, e.message, e.details))
            return "handled"
        return "not raised"

    journal = [event(0, "bank.start_transfer", State.FAILED, failure=TRANSFER_FAILED)]
    decision = replay(wf, instance(), journal, codec=codec, now=NOW)

    assert seen == [("TransferFailed", "insufficient funds", "Traceback ...")]
    assert decision.status is Status.COMPLETED
    assert decision.output == '"handled"'


def test_unhandled_exception_is_a_bug_that_parks_the_workflow(
    instance: MakeInstance, codec: Any, event: MakeEvent
) -> None:
    async def wf(ctx: WorkflowContext) -> None:
        value = await ctx.step("s")
        await ctx.run(str, value)  # run in this pass, yet not journaled: the pass parks
        raise ValueError(f"bad value {value}")

    decision = replay(wf, instance(), [event(0, "s", output=7)], codec=codec, now=NOW)

    assert decision.status is Status.STUCK
    assert decision.failure is not None
    assert decision.failure.type == "ValueError"
    assert decision.failure.message == "bad value 7"
    assert decision.failure.details is not None
    assert "Traceback" in decision.failure.details
    assert "bad value 7" in decision.failure.details
    assert (decision.new_events, decision.steps, decision.fired) == ([], [], [])


def test_wrong_input_for_the_signature_parks_the_workflow(
    instance: MakeInstance, codec: Any
) -> None:
    async def wf(ctx: WorkflowContext, a: int) -> int:
        return a

    decision = replay(wf, instance(1, 2), [], codec=codec, now=NOW)

    assert decision.status is Status.STUCK
    assert decision.new_events == []
    assert decision.failure is not None
    assert decision.failure.type == "TypeError"


def test_workflow_receives_decoded_args_and_kwargs(instance: MakeInstance, codec: Any) -> None:
    received: list[Any] = []

    async def wf(ctx: WorkflowContext, *args: Any, **kwargs: Any) -> None:
        received.append((args, kwargs))

    replay(wf, instance(1, [2], x={"y": 3}), [], codec=codec, now=NOW)

    assert received == [((1, [2]), {"x": {"y": 3}})]


def test_pending_step_blocks_without_new_events(
    instance: MakeInstance, codec: Any, event: MakeEvent
) -> None:
    for state in (State.SCHEDULED, State.STARTED):
        journal = [
            event(0, "bank.start_transfer", output="T-1", args=ALICE),
            event(1, "bank.start_transfer", state, args=BOB),
        ]

        decision = run_transfer(instance, codec, journal)

        assert decision.status is Status.RUNNING
        assert decision.new_events == []
        assert decision.steps == []


def test_unserializable_step_argument_raises_at_the_call_site(
    instance: MakeInstance, codec: Any
) -> None:
    caught: list[BaseException] = []

    async def wf(ctx: WorkflowContext) -> None:
        try:
            await ctx.step("s", object())
        except SerializationError as e:
            caught.append(e)
        await ctx.step("t", 1)

    decision = replay(wf, instance(), [], codec=codec, now=NOW)

    assert len(caught) == 1
    assert "step 's'" in str(caught[0])
    assert "'json' serializer" in str(caught[0])
    # Nothing was journaled for "s": "t" takes seq 0.
    assert [(e.seq, e.name) for e in decision.new_events] == [(0, "t")]
    assert decision.steps == [ScheduleStep(0, "t", (1,), {})]


def test_unserializable_step_argument_uncaught_parks_the_workflow(
    instance: MakeInstance, codec: Any
) -> None:
    async def wf(ctx: WorkflowContext) -> None:
        await ctx.step("s", {1, 2})

    decision = replay(wf, instance(), [], codec=codec, now=NOW)

    assert decision.status is Status.STUCK
    assert decision.failure is not None
    assert decision.failure.type == "SerializationError"
    assert decision.new_events == []
    assert decision.steps == []


def test_step_needs_a_task_or_a_name(instance: MakeInstance, codec: Any) -> None:
    async def wf(ctx: WorkflowContext) -> str:
        try:
            await ctx.step(42)
        except TypeError as e:
            return str(e)
        return "not raised"

    decision = replay(wf, instance(), [], codec=codec, now=NOW)

    assert decision.status is Status.COMPLETED
    assert decision.output == '"ctx.step needs a @durable.step task or a task name, got 42"'


def test_resolve_step_names_the_step(instance: MakeInstance, codec: Any) -> None:
    async def wf(ctx: WorkflowContext) -> None:
        await ctx.step(len)

    decision = replay(
        wf, instance(), [], codec=codec, now=NOW, resolve_step=lambda t: f"fn.{t.__name__}"
    )

    assert decision.steps == [ScheduleStep(0, "fn.len", (), {})]


def test_unserializable_result_parks_the_workflow(instance: MakeInstance, codec: Any) -> None:
    async def wf(ctx: WorkflowContext) -> object:
        await ctx.run(str, 1)  # run in this pass, yet not journaled: the pass parks
        return object()

    decision = replay(wf, instance(workflow="shop.order"), [], codec=codec, now=NOW)

    assert decision.status is Status.STUCK
    assert decision.failure is not None
    assert decision.failure.type == "SerializationError"
    assert "'shop.order'" in decision.failure.message
    assert "returned a value of type 'object' that the 'json'" in decision.failure.message
    assert decision.output is None
    assert decision.new_events == []


def test_command_cannot_be_awaited_twice(instance: MakeInstance, codec: Any) -> None:
    async def wf(ctx: WorkflowContext) -> None:
        command = ctx.step("s")
        await command
        await command

    journal = [Event(0, Kind.STEP, "s", "[[], {}]", State.COMPLETED, NOW, output="1")]
    decision = replay(wf, instance(), journal, codec=codec, now=NOW)

    assert decision.status is Status.STUCK  # a bug in the workflow code, not its failure
    assert decision.failure is not None
    assert decision.failure.type == "RuntimeError"
    assert "already awaited" in decision.failure.message


def test_keyboard_interrupt_propagates(instance: MakeInstance, codec: Any) -> None:
    async def wf(ctx: WorkflowContext) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        replay(wf, instance(), [], codec=codec, now=NOW)


def test_closing_a_blocked_workflow_journals_nothing_from_finally(
    instance: MakeInstance, codec: Any
) -> None:
    ran_finally: list[bool] = []

    async def wf(ctx: WorkflowContext) -> None:
        try:
            await ctx.step("s")
        finally:
            ran_finally.append(True)
            await ctx.step("cleanup")

    decision = replay(wf, instance(), [], codec=codec, now=NOW)

    assert ran_finally == [True]
    assert decision.status is Status.RUNNING
    assert [e.name for e in decision.new_events] == ["s"]
    assert [s.name for s in decision.steps] == ["s"]


def test_workflow_catching_generator_exit_does_not_escape(
    instance: MakeInstance, codec: Any
) -> None:
    async def wf(ctx: WorkflowContext) -> None:
        try:
            await ctx.step("s")
        except BaseException:  # bad user code: swallows the close
            return

    decision = replay(wf, instance(), [], codec=codec, now=NOW)

    assert decision.status is Status.RUNNING
    assert [e.name for e in decision.new_events] == ["s"]


def test_error_raised_by_finally_while_closing_is_dropped(
    instance: MakeInstance, codec: Any
) -> None:
    async def wf(ctx: WorkflowContext) -> None:
        try:
            await ctx.step("s")
        finally:
            raise ValueError("from finally")

    decision = replay(wf, instance(), [], codec=codec, now=NOW)

    assert decision.status is Status.RUNNING
    assert decision.failure is None
