"""Replay checks a step's and a child's arguments against the journal's, by value."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import pytest

from celery_durable.engine import WorkflowContext, replay
from celery_durable.engine.commands import Decision
from celery_durable.engine.journal import Event, Instance, Kind, State, Status

NOW = datetime(2024, 3, 1, 9, 30, tzinfo=timezone.utc)
FIX = (
    "Deploy code that replays this journal (or restore the previous code, or branch with "
    "ctx.patched()), then retry the instance."
)
HINT = (
    "Values that change between passes (the clock, random numbers) must come from "
    "ctx.now(), ctx.uuid4() or ctx.run(...). "
)

MakeInstance = Callable[..., Instance]
MakeEvent = Callable[..., Event]


def assert_parked(decision: Decision) -> str:
    """A NonDeterminismError: STUCK, and nothing of the pass to commit."""
    assert decision.status is Status.STUCK
    assert decision.failure is not None
    assert decision.failure.type == "NonDeterminismError"
    assert (decision.new_events, decision.steps, decision.fired, decision.children) == (
        [],
        [],
        [],
        [],
    )
    assert decision.awaited_children == []
    return decision.failure.message


async def charge(ctx: WorkflowContext, account: str, amount: int) -> Any:
    receipt = await ctx.step("bank.charge", account, amount)
    await ctx.step("mail.receipt", receipt)
    return receipt


def test_changed_step_arguments_park_naming_seq_step_and_both_argument_lists(
    instance: MakeInstance, codec: Any, event: MakeEvent
) -> None:
    # v1 journaled charge("alice", 100); v2 of the code calls charge("bob", 999)
    journal = [event(0, "bank.charge", output="tx-alice-100", args=("alice", 100))]

    decision = replay(charge, instance("bob", 999, workflow="shop"), journal, codec=codec, now=NOW)

    assert assert_parked(decision) == (
        "workflow 'shop' (id 'wf-1') does not replay its journal: at seq 0 the journal holds "
        "step 'bank.charge' called with ('alice', 100) but the code calls it with "
        "('bob', 999). " + HINT + FIX
    )


def test_changed_step_keyword_arguments_park(
    instance: MakeInstance, codec: Any, event: MakeEvent
) -> None:
    async def wf(ctx: WorkflowContext) -> None:
        await ctx.step("a")
        await ctx.step("mail.send", "ann", subject="v2")

    journal = [
        event(0, "a"),
        event(1, "mail.send", State.SCHEDULED, args=("ann",), kwargs={"subject": "v1"}),
    ]

    message = assert_parked(replay(wf, instance(), journal, codec=codec, now=NOW))

    assert (
        "at seq 1 the journal holds step 'mail.send' called with ('ann', subject='v1') but "
        "the code calls it with ('ann', subject='v2')"
    ) in message


def test_a_clock_value_passed_to_a_step_is_caught(
    instance: MakeInstance, codec: Any, event: MakeEvent
) -> None:
    ticks = iter([1700000000.5, 1700000042.25])

    async def wf(ctx: WorkflowContext) -> None:
        await ctx.step("audit", next(ticks))  # time.time() in workflow code: a bug

    first = replay(wf, instance(), [], codec=codec, now=NOW)
    message = assert_parked(replay(wf, instance(), first.new_events, codec=codec, now=NOW))

    assert "called with (1700000000.5) but the code calls it with (1700000042.25)" in message


def test_changed_child_arguments_park_naming_seq_child_and_both_argument_lists(
    instance: MakeInstance, codec: Any
) -> None:
    async def pay(ctx: WorkflowContext, amount: int) -> Any:
        return await ctx.child("bank.transfer", "acc-1", amount=amount)

    journal = list(replay(pay, instance(10), [], codec=codec, now=NOW).new_events)

    decision = replay(pay, instance(20), journal, codec=codec, now=NOW)

    assert assert_parked(decision) == (
        "workflow 'wf' (id 'wf-1') does not replay its journal: at seq 0 the journal holds "
        "child 'bank.transfer' called with ('wf-1:0', 'acc-1', amount=10) but the code "
        "calls it with ('wf-1:0', 'acc-1', amount=20). " + HINT + FIX
    )


def test_changed_child_id_parks(instance: MakeInstance, codec: Any) -> None:
    async def v1(ctx: WorkflowContext) -> Any:
        return await ctx.child("bank.transfer", workflow_id="transfer-1")

    async def v2(ctx: WorkflowContext) -> Any:
        return await ctx.child("bank.transfer", workflow_id="transfer-2")

    journal = list(replay(v1, instance(), [], codec=codec, now=NOW).new_events)

    message = assert_parked(replay(v2, instance(), journal, codec=codec, now=NOW))

    assert "called with ('transfer-1') but the code calls it with ('transfer-2')" in message


def test_a_journal_of_an_earlier_run_is_not_replayed_as_this_run(
    instance: MakeInstance, codec: Any
) -> None:
    # a child journaled in run 1 is not this run's child: its default id differs
    async def wf(ctx: WorkflowContext) -> Any:
        return await ctx.child("bank.transfer")

    journal = list(replay(wf, instance(), [], codec=codec, now=NOW).new_events)
    second_run = instance()
    second_run.run = 2

    message = assert_parked(replay(wf, second_run, journal, codec=codec, now=NOW))

    assert "called with ('wf-1:0') but the code calls it with ('wf-1:0~2')" in message


@pytest.mark.parametrize(
    ("journaled", "args", "kwargs"),
    [
        ('[[], {"b": 2, "a": 1}]', (), {"a": 1, "b": 2}),  # keyword order
        ('[["x", {"k": [1, 2], "j": null}], {}]', ("x", {"j": None, "k": [1, 2]}), {}),
        ('[["x"],{"n":1}]', ("x",), {"n": 1}),  # spacing of another encoder
    ],
)
def test_equal_step_arguments_encoded_differently_are_no_alarm(
    instance: MakeInstance,
    codec: Any,
    event: MakeEvent,
    journaled: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> None:
    async def wf(ctx: WorkflowContext) -> Any:
        return await ctx.step("s", *args, **kwargs)

    assert codec.dumps([list(args), kwargs]) != journaled  # the encodings do differ
    journal = [event(0, "s", output="ok", input=journaled)]

    decision = replay(wf, instance(), journal, codec=codec, now=NOW)

    assert (decision.status, decision.output) == (Status.COMPLETED, '"ok"')


def test_equal_child_arguments_encoded_differently_are_no_alarm(
    instance: MakeInstance, codec: Any
) -> None:
    async def wf(ctx: WorkflowContext) -> Any:
        return await ctx.child("bank.transfer", "acc-1", a=1, b=2)

    journaled = '[["wf-1:0", "acc-1"], {"b": 2, "a": 1}]'
    journal = [Event(0, Kind.CHILD, "bank.transfer", journaled, State.SCHEDULED, NOW)]

    decision = replay(wf, instance(), journal, codec=codec, now=NOW)

    assert (decision.status, decision.new_events, decision.children) == (Status.RUNNING, [], [])
    assert [c.workflow_id for c in decision.awaited_children] == ["wf-1:0"]


def test_local_runs_are_not_checked(instance: MakeInstance, codec: Any) -> None:
    # ctx.run's arguments may be anything local; its journaled result is what replays
    async def wf(ctx: WorkflowContext, n: int) -> Any:
        return await ctx.run(lambda x: x * 2, n)

    journal = list(replay(wf, instance(1), [], codec=codec, now=NOW).new_events)

    decision = replay(wf, instance(5), journal, codec=codec, now=NOW)

    assert (decision.status, decision.output) == (Status.COMPLETED, "2")
