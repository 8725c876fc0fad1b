"""ctx.patched / ctx.deprecate_patch on hand-built journals, replay checks, waiting_at."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import pytest

from celery_durable.engine import WorkflowContext, replay
from celery_durable.engine.check import check_replay
from celery_durable.engine.journal import Event, Instance, Kind, State, Status
from tests.engine.conftest import JsonCodec

NOW = datetime(2024, 3, 1, 9, 30, tzinfo=timezone.utc)


def _codec() -> JsonCodec:
    return JsonCodec()


MakeInstance = Callable[..., Instance]
MakeEvent = Callable[..., Event]


def marker(seq: int, patch_id: str) -> Event:
    return Event(
        seq=seq,
        kind=Kind.PATCH,
        name=patch_id,
        input=None,
        state=State.COMPLETED,
        scheduled_at=NOW,
        completed_at=NOW,
    )


async def order_v2(ctx: WorkflowContext) -> str:
    await ctx.step("reserve")
    if ctx.patched("fraud-check"):
        await ctx.step("check_fraud")
        branch = "new"
    else:
        branch = "old"
    await ctx.step("charge")
    return branch


async def order_v3(ctx: WorkflowContext) -> str:
    await ctx.step("reserve")
    ctx.deprecate_patch("fraud-check")
    await ctx.step("check_fraud")
    await ctx.step("charge")
    return "new"


async def order_v4(ctx: WorkflowContext) -> str:
    await ctx.step("reserve")
    await ctx.step("check_fraud")
    await ctx.step("charge")
    return "new"


def test_new_ground_journals_a_marker_and_takes_the_new_branch(
    instance: MakeInstance, event: MakeEvent
) -> None:
    decision = replay(order_v2, instance(), [event(0, "reserve")], codec=_codec(), now=NOW)

    assert decision.status is Status.RUNNING
    assert [(e.seq, e.kind, e.name, e.state) for e in decision.new_events] == [
        (1, Kind.PATCH, "fraud-check", State.COMPLETED),
        (2, Kind.STEP, "check_fraud", State.SCHEDULED),
    ]
    assert decision.new_events[0].input is None
    assert [s.name for s in decision.steps] == ["check_fraud"]


def test_a_journal_from_before_the_patch_replays_the_old_branch(
    instance: MakeInstance, event: MakeEvent
) -> None:
    old = [event(0, "reserve"), event(1, "charge")]  # v1: reserve, charge

    decision = replay(order_v2, instance(), old, codec=_codec(), now=NOW)

    assert decision.status is Status.COMPLETED
    assert decision.output == '"old"'
    assert decision.new_events == []


def test_an_old_journal_waiting_on_the_old_branch_stays_on_it(
    instance: MakeInstance, event: MakeEvent
) -> None:
    old = [event(0, "reserve"), event(1, "charge", State.STARTED)]

    decision = replay(order_v2, instance(), old, codec=_codec(), now=NOW)

    assert decision.status is Status.RUNNING
    assert decision.new_events == []
    assert decision.steps == []


def test_a_journal_with_the_marker_replays_the_new_branch(
    instance: MakeInstance, event: MakeEvent
) -> None:
    journal = [event(0, "reserve"), marker(1, "fraud-check"), event(2, "check_fraud")]
    journal.append(event(3, "charge"))

    decision = replay(order_v2, instance(), journal, codec=_codec(), now=NOW)

    assert decision.status is Status.COMPLETED
    assert decision.output == '"new"'


def test_an_instance_that_had_not_reached_the_patch_takes_the_new_branch(
    instance: MakeInstance, event: MakeEvent
) -> None:
    # Started on v1 (reserve pending) and deployed on v2 before it got further.
    decision = replay(order_v2, instance(), [event(0, "reserve")], codec=_codec(), now=NOW)

    assert [e.name for e in decision.new_events] == ["fraud-check", "check_fraud"]


def test_a_run_answers_once_per_patch_id(instance: MakeInstance, event: MakeEvent) -> None:
    answers: list[bool] = []

    async def twice(ctx: WorkflowContext) -> None:
        answers.append(ctx.patched("p"))
        await ctx.step("a")
        answers.append(ctx.patched("p"))
        await ctx.step("b")

    first = replay(twice, instance(), [], codec=_codec(), now=NOW)
    assert [(e.kind, e.name) for e in first.new_events] == [(Kind.PATCH, "p"), (Kind.STEP, "a")]

    answers.clear()
    journal = [marker(0, "p"), event(1, "a")]
    second = replay(twice, instance(), journal, codec=_codec(), now=NOW)
    assert answers == [True, True]
    assert [(e.seq, e.name) for e in second.new_events] == [(2, "b")]

    answers.clear()
    old = [event(0, "a"), event(1, "b", State.STARTED)]
    replay(twice, instance(), old, codec=_codec(), now=NOW)
    assert answers == [False, False]


def test_deprecate_patch_consumes_a_marker_and_journals_nothing(
    instance: MakeInstance, event: MakeEvent
) -> None:
    with_marker = [event(0, "reserve"), marker(1, "fraud-check"), event(2, "check_fraud")]
    without = [event(0, "reserve"), event(1, "check_fraud")]

    for journal in (with_marker, without):
        decision = replay(order_v3, instance(), journal, codec=_codec(), now=NOW)
        assert decision.status is Status.RUNNING
        assert [e.name for e in decision.new_events] == ["charge"]

    fresh = replay(order_v3, instance(), [event(0, "reserve")], codec=_codec(), now=NOW)
    assert [e.name for e in fresh.new_events] == ["check_fraud"]


def test_markers_of_a_retired_patch_are_passed_over(
    instance: MakeInstance, event: MakeEvent
) -> None:
    # v4 dropped the deprecate_patch call: journals from v2/v3 still hold the marker.
    journal = [event(0, "reserve"), marker(1, "fraud-check"), event(2, "check_fraud")]
    decision = replay(order_v4, instance(), journal, codec=_codec(), now=NOW)
    assert decision.status is Status.RUNNING
    assert [(e.seq, e.name) for e in decision.new_events] == [(3, "charge")]

    trailing = [*journal, event(3, "charge"), marker(4, "gone")]
    assert replay(order_v4, instance(), trailing, codec=_codec(), now=NOW).output == '"new"'


def test_removing_the_old_branch_too_early_parks(instance: MakeInstance, event: MakeEvent) -> None:
    old = [event(0, "reserve"), event(1, "charge", State.STARTED)]  # v1: no fraud check

    for code in (order_v3, order_v4):
        decision = replay(code, instance(), old, codec=_codec(), now=NOW)
        assert decision.status is Status.STUCK
        assert decision.failure is not None
        assert (
            "at seq 1 the journal holds step 'charge' but the code asked for step "
            "'check_fraud'" in decision.failure.message
        )
        assert "branch with ctx.patched()" in decision.failure.message


def test_patches_met_in_another_order_or_next_to_others(
    instance: MakeInstance, event: MakeEvent
) -> None:
    answers: list[tuple[str, bool]] = []

    async def two(ctx: WorkflowContext) -> None:
        await ctx.step("a")
        answers.append(("y", ctx.patched("y")))
        answers.append(("x", ctx.patched("x")))
        await ctx.step("b")

    # Written by code that called x, then (a later patch) y, before step b.
    journal = [event(0, "a"), marker(1, "x"), marker(2, "y"), event(3, "b", State.STARTED)]
    decision = replay(two, instance(), journal, codec=_codec(), now=NOW)
    assert answers == [("y", True), ("x", True)]  # each finds its own marker
    assert decision.status is Status.RUNNING
    assert decision.new_events == []

    answers.clear()
    only_other = [event(0, "a"), marker(1, "z")]  # ended at a marker: then new ground
    decision = replay(two, instance(), only_other, codec=_codec(), now=NOW)
    assert answers == [("y", True), ("x", True)]
    assert [(e.seq, e.kind, e.name) for e in decision.new_events] == [
        (2, Kind.PATCH, "y"),
        (3, Kind.PATCH, "x"),
        (4, Kind.STEP, "b"),
    ]


@pytest.mark.parametrize("bad", ["", "x" * 256, 42])
def test_a_bad_patch_id_is_a_bug_that_parks(
    bad: Any, instance: MakeInstance, event: MakeEvent
) -> None:
    async def wf(ctx: WorkflowContext) -> None:
        if ctx.patched(bad):
            await ctx.step("a")

    decision = replay(wf, instance(), [], codec=_codec(), now=NOW)

    assert decision.status is Status.STUCK
    assert decision.failure is not None
    assert decision.failure.type in ("TypeError", "ValueError")
    assert "ctx.patched()" in decision.failure.message


# -- replay checks -------------------------------------------------------------------


def test_check_replay_ok_stops_at_new_ground_without_running_anything(
    instance: MakeInstance, event: MakeEvent
) -> None:
    ran: list[int] = []

    def side_effect() -> int:
        ran.append(1)
        return 1

    async def wf(ctx: WorkflowContext) -> None:
        await ctx.step("a")
        await ctx.run(side_effect)
        await ctx.step("b")

    result = check_replay(wf, instance(), [event(0, "a")], codec=_codec(), now=NOW)

    assert result.ok
    assert result.verdict == "OK"
    assert result.replayed == 1
    assert ran == []
    assert result.describe().startswith("OK ")


def test_check_replay_names_the_first_mismatch(instance: MakeInstance, event: MakeEvent) -> None:
    journal = [event(0, "reserve"), event(1, "charge", args=(5,))]

    async def changed(ctx: WorkflowContext) -> None:
        await ctx.step("reserve")
        await ctx.step("refund")

    result = check_replay(changed, instance(id="o-1"), journal, codec=_codec(), now=NOW)

    assert not result.ok
    assert (result.verdict, result.seq) == ("MISMATCH", 1)
    assert result.journaled == "step 'charge'"
    assert result.asked == "step 'refund'"
    assert result.replayed == 1
    assert "at seq 1 the journal holds step 'charge', the code asks for step 'refund'" in (
        result.describe()
    )


def test_check_replay_names_changed_arguments(instance: MakeInstance, event: MakeEvent) -> None:
    async def wf(ctx: WorkflowContext) -> None:
        await ctx.step("charge", 7)

    result = check_replay(wf, instance(), [event(0, "charge", args=(5,))], codec=_codec(), now=NOW)

    assert result.verdict == "MISMATCH"
    assert result.journaled == "step 'charge' called with (5)"
    assert result.asked == "step 'charge' called with (7)"


def test_check_replay_of_code_that_ends_early(instance: MakeInstance, event: MakeEvent) -> None:
    async def shorter(ctx: WorkflowContext) -> None:
        await ctx.step("reserve")

    journal = [event(0, "reserve"), event(1, "charge")]
    result = check_replay(shorter, instance(), journal, codec=_codec(), now=NOW)

    assert (result.verdict, result.seq, result.asked) == ("MISMATCH", 1, None)
    assert "the code asks for nothing more" in result.describe()


def test_check_replay_reports_code_that_raises(instance: MakeInstance, event: MakeEvent) -> None:
    async def buggy(ctx: WorkflowContext) -> None:
        await ctx.step("reserve")
        raise KeyError("oops")

    result = check_replay(buggy, instance(), [event(0, "reserve")], codec=_codec(), now=NOW)

    assert result.verdict == "ERROR"
    assert result.message is not None
    assert result.message.startswith("KeyError")


def test_check_replay_lists_patch_answers(instance: MakeInstance, event: MakeEvent) -> None:
    old = check_replay(
        order_v2, instance(), [event(0, "reserve"), event(1, "charge")], codec=_codec(), now=NOW
    )
    marked = check_replay(
        order_v2,
        instance(),
        [event(0, "reserve"), marker(1, "fraud-check")],
        codec=_codec(),
        now=NOW,
    )
    fresh = check_replay(order_v2, instance(), [event(0, "reserve")], codec=_codec(), now=NOW)

    assert old.patches == (("fraud-check", "old"),)
    assert marked.patches == (("fraud-check", "marker"),)
    assert fresh.patches == (("fraud-check", "new"),)


# -- where a workflow waits ------------------------------------------------------------


async def _helper(ctx: WorkflowContext) -> Any:
    return await ctx.step("inner")  # the helper's await


def test_waiting_at_names_the_await_line(instance: MakeInstance) -> None:
    async def wf(ctx: WorkflowContext) -> None:
        await ctx.step("a")

    line = inspect.getsourcelines(wf)[1] + 1
    decision = replay(wf, instance(), [], codec=_codec(), now=NOW)

    assert decision.waiting_at is not None
    assert decision.waiting_at.endswith(f"test_patches.py:{line} in wf")
    assert decision.waiting_at.startswith("tests/engine/") or "/" not in decision.waiting_at[:1]


def test_waiting_at_follows_helper_coroutines(instance: MakeInstance) -> None:
    async def wf(ctx: WorkflowContext) -> None:
        await _helper(ctx)

    line = inspect.getsourcelines(_helper)[1] + 1
    decision = replay(wf, instance(), [], codec=_codec(), now=NOW)

    assert decision.waiting_at is not None
    assert decision.waiting_at.endswith(f"test_patches.py:{line} in _helper")


def test_waiting_at_is_none_once_the_workflow_ends(
    instance: MakeInstance, event: MakeEvent
) -> None:
    async def wf(ctx: WorkflowContext) -> None:
        await ctx.step("a")

    decision = replay(wf, instance(), [event(0, "a")], codec=_codec(), now=NOW)

    assert decision.status is Status.COMPLETED
    assert decision.waiting_at is None
