"""ctx.first: races (a step or a timeout); the winner is journaled once and replayed."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from celery_durable.engine import WorkflowContext, replay
from celery_durable.engine.commands import Decision, ScheduleStep
from celery_durable.engine.journal import Event, Failure, Instance, Kind, State, Status

NOW = datetime(2024, 3, 1, 9, 30, tzinfo=timezone.utc)
HOUR = timedelta(hours=1)
MIN = timedelta(minutes=1)
FIX = (
    "Deploy code that replays this journal (or restore the previous code, or branch with "
    "ctx.patched()), then retry the instance."
)

MakeInstance = Callable[..., Instance]


def commit(journal: list[Event], decision: Decision) -> list[Event]:
    """What the runtime commits: fired timers replace their events, new events append."""
    fired = {e.seq: e for e in decision.fired}
    return [fired.get(e.seq, e) for e in journal] + list(decision.new_events)


def done(journal: list[Event], seq: int, output: Any, at: datetime) -> list[Event]:
    """A worker journals the result of step ``seq`` at ``at``."""
    event = dataclasses.replace(
        journal[seq], state=State.COMPLETED, output=json.dumps(output), completed_at=at
    )
    return [*journal[:seq], event, *journal[seq + 1 :]]


def failed(journal: list[Event], seq: int, failure: Failure, at: datetime) -> list[Event]:
    event = dataclasses.replace(journal[seq], state=State.FAILED, failure=failure, completed_at=at)
    return [*journal[:seq], event, *journal[seq + 1 :]]


def record_of(codec: Any, decision: Decision) -> tuple[int, Any, Any]:
    """The race record a decision journals: (seq, decoded input, winner index)."""
    [record] = [e for e in decision.new_events if e.name == "ctx.first"]
    assert (record.kind, record.state) == (Kind.RUN, State.COMPLETED)
    return record.seq, codec.loads(record.input), codec.loads(record.output)


async def verify_or_timeout(ctx: WorkflowContext) -> Any:
    """The seed's wait for a verification, with a timeout (a step stands in for a signal)."""
    index, result = await ctx.first(ctx.sleep(timedelta(hours=1)), ctx.step("verified"))
    if index == 0:
        await ctx.step("cleanup")
        return "timed out"
    await ctx.step("activate", result)
    return f"activated {result}"


def start(instance: MakeInstance, codec: Any) -> list[Event]:
    decision = replay(verify_or_timeout, instance(), [], codec=codec, now=NOW)
    assert decision.status is Status.RUNNING
    assert [(e.seq, e.kind, e.state) for e in decision.new_events] == [
        (0, Kind.TIMER, State.SCHEDULED),
        (1, Kind.STEP, State.SCHEDULED),
    ]
    assert decision.steps == [ScheduleStep(1, "verified", (), {})]
    assert decision.wake_at == NOW + HOUR  # the timer counts while nothing has finished
    return commit([], decision)


def test_step_finishing_before_the_timer_wins(instance: MakeInstance, codec: Any) -> None:
    journal = done(start(instance, codec), 1, "ann", NOW + 10 * MIN)

    decision = replay(verify_or_timeout, instance(), journal, codec=codec, now=NOW + 10 * MIN)

    assert decision.status is Status.RUNNING
    assert record_of(codec, decision) == (2, [[0, 1], {}], 1)
    assert decision.steps == [ScheduleStep(3, "activate", ("ann",), {})]
    assert decision.fired == []
    assert decision.wake_at is None  # the losing timer no longer wakes the workflow

    # later passes: the losing timer is never fired nor waited for, even past its time
    journal = commit(journal, decision)
    late = replay(verify_or_timeout, instance(), journal, codec=codec, now=NOW + 2 * HOUR)
    assert (late.status, late.new_events, late.fired, late.wake_at) == (
        Status.RUNNING,
        [],
        [],
        None,
    )
    assert journal[0].state is State.SCHEDULED

    journal = done(journal, 3, None, NOW + 3 * HOUR)
    end = replay(verify_or_timeout, instance(), journal, codec=codec, now=NOW + 3 * HOUR)
    assert (end.status, codec.loads(end.output)) == (Status.COMPLETED, "activated ann")
    assert end.fired == []


def test_timer_wins_when_it_fires_first(instance: MakeInstance, codec: Any) -> None:
    journal = start(instance, codec)

    decision = replay(verify_or_timeout, instance(), journal, codec=codec, now=NOW + HOUR)

    assert [(e.seq, e.state, e.completed_at) for e in decision.fired] == [
        (0, State.COMPLETED, NOW + HOUR)
    ]
    assert record_of(codec, decision) == (2, [[0, 1], {}], 0)
    assert decision.steps == [ScheduleStep(3, "cleanup", (), {})]
    assert decision.wake_at is None

    # the losing step finishes later: journaled, but nothing waits for it
    journal = done(commit(journal, decision), 1, "ann", NOW + 2 * HOUR)
    journal = done(journal, 3, None, NOW + 2 * HOUR)
    end = replay(verify_or_timeout, instance(), journal, codec=codec, now=NOW + 3 * HOUR)
    assert (end.status, codec.loads(end.output)) == (Status.COMPLETED, "timed out")


def test_race_returns_index_and_result(instance: MakeInstance, codec: Any) -> None:
    async def wf(ctx: WorkflowContext) -> Any:
        return await ctx.first(ctx.sleep(HOUR), ctx.step("s"))

    journal = commit([], replay(wf, instance(), [], codec=codec, now=NOW))
    step_wins = done(journal, 1, {"v": 1}, NOW + MIN)
    timer_wins = journal

    d1 = replay(wf, instance(), step_wins, codec=codec, now=NOW + MIN)
    d0 = replay(wf, instance(), timer_wins, codec=codec, now=NOW + HOUR)

    assert codec.loads(d1.output) == [1, {"v": 1}]
    assert codec.loads(d0.output) == [0, None]


# -- both final in the deciding pass: journal order ---------------------------------------


@pytest.mark.parametrize(
    ("step_done_at", "winner", "outcome"),
    [
        (NOW + 30 * MIN, 1, "activated ann"),  # before the timer's fire time
        (NOW + HOUR + MIN, 0, "timed out"),  # after it, although the pass saw both at once
        (NOW + HOUR, 0, "timed out"),  # same time: the lower index wins
    ],
)
def test_both_final_in_one_pass_the_earlier_wins(
    instance: MakeInstance, codec: Any, step_done_at: datetime, winner: int, outcome: str
) -> None:
    # the pass comes late (e.g. the tick was late): the timer is due and the step done
    journal = done(start(instance, codec), 1, "ann", step_done_at)

    decision = replay(verify_or_timeout, instance(), journal, codec=codec, now=NOW + 2 * HOUR)

    assert [e.seq for e in decision.fired] == [0]  # due: journaled as fired, winner or not
    assert record_of(codec, decision)[2] == winner
    journal = commit(journal, decision)
    journal = done(journal, 3, None, NOW + 3 * HOUR)
    end = replay(verify_or_timeout, instance(), journal, codec=codec, now=NOW + 3 * HOUR)
    assert codec.loads(end.output) == outcome


async def fastest(ctx: WorkflowContext) -> Any:
    return await ctx.first(ctx.step("eu"), ctx.step("us"), ctx.step("asia"))


def test_steps_race_by_completion_time_then_index(instance: MakeInstance, codec: Any) -> None:
    journal = commit([], replay(fastest, instance(), [], codec=codec, now=NOW))
    journal = done(journal, 0, "eu", NOW + 2 * MIN)
    journal = done(journal, 2, "asia", NOW + 1 * MIN)

    decision = replay(fastest, instance(), journal, codec=codec, now=NOW + 3 * MIN)

    assert codec.loads(decision.output) == [2, "asia"]
    assert record_of(codec, decision) == (3, [[0, 1, 2], {}], 2)

    tied = done(done(journal, 0, "eu", NOW), 2, "asia", NOW)
    assert codec.loads(replay(fastest, instance(), tied, codec=codec, now=NOW).output) == [0, "eu"]


def test_replay_keeps_the_recorded_winner_whatever_comes_later(
    instance: MakeInstance, codec: Any
) -> None:
    journal = commit([], replay(fastest, instance(), [], codec=codec, now=NOW))
    journal = done(journal, 1, "us", NOW + 5 * MIN)
    decided = replay(fastest, instance(), journal, codec=codec, now=NOW + 5 * MIN)
    assert codec.loads(decided.output) == [1, "us"]
    journal = commit(journal, decided)

    # the losers finish later, journaled by workers whose clocks run behind: by their
    # timestamps they finished first, yet the race stays decided
    journal = done(journal, 0, "eu", NOW + 1 * MIN)
    journal = done(journal, 2, "asia", NOW)

    again = replay(fastest, instance(), journal, codec=codec, now=NOW + HOUR)

    assert codec.loads(again.output) == [1, "us"]
    assert (again.new_events, again.steps, again.fired) == ([], [], [])


def test_failed_winner_raises_step_failed(instance: MakeInstance, codec: Any) -> None:
    async def wf(ctx: WorkflowContext) -> Any:
        return await ctx.first(ctx.step("a"), ctx.sleep(HOUR))

    journal = commit([], replay(wf, instance(), [], codec=codec, now=NOW))
    journal = failed(journal, 0, Failure("Refused", "no"), NOW + MIN)

    decision = replay(wf, instance(), journal, codec=codec, now=NOW + MIN)

    assert decision.status is Status.FAILED
    assert decision.failure == Failure("Refused", "no")
    assert record_of(codec, decision)[2] == 0  # the race is decided, and journaled
    assert decision.wake_at is None


def test_run_part_finishes_when_issued_and_wins_at_once(instance: MakeInstance, codec: Any) -> None:
    async def wf(ctx: WorkflowContext) -> Any:
        return await ctx.first(ctx.step("slow"), ctx.run(str.upper, "quick"))

    decision = replay(wf, instance(), [], codec=codec, now=NOW)

    assert decision.status is Status.COMPLETED
    assert codec.loads(decision.output) == [1, "QUICK"]
    assert [(e.seq, e.kind, e.name) for e in decision.new_events] == [
        (0, Kind.STEP, "slow"),
        (1, Kind.RUN, "str.upper"),
        (2, Kind.RUN, "ctx.first"),
    ]
    assert decision.steps == [ScheduleStep(0, "slow", (), {})]  # sent all the same


def test_race_of_pending_timers_wakes_at_the_earliest(instance: MakeInstance, codec: Any) -> None:
    async def wf(ctx: WorkflowContext) -> Any:
        return await ctx.first(ctx.sleep(2 * HOUR), ctx.sleep(HOUR), ctx.step("s"))

    first = replay(wf, instance(), [], codec=codec, now=NOW)
    assert first.wake_at == NOW + HOUR

    journal = commit([], first)
    decision = replay(wf, instance(), journal, codec=codec, now=NOW + HOUR)
    assert codec.loads(decision.output) == [1, None]
    assert [e.seq for e in decision.fired] == [1]


def test_commands_after_a_race_follow_its_record(instance: MakeInstance, codec: Any) -> None:
    async def wf(ctx: WorkflowContext) -> Any:
        won = await ctx.first(ctx.run(int, "1"), ctx.run(int, "2"))
        return [won, await ctx.run(int, "3")]

    decision = replay(wf, instance(), [], codec=codec, now=NOW)

    assert [(e.seq, e.name) for e in decision.new_events] == [
        (0, "int"),
        (1, "int"),
        (2, "ctx.first"),
        (3, "int"),
    ]
    assert codec.loads(decision.output) == [[0, 1], 3]


# -- a journal that does not match --------------------------------------------------------


def test_race_record_naming_a_missing_part_is_stuck(instance: MakeInstance, codec: Any) -> None:
    async def was_three(ctx: WorkflowContext) -> Any:
        return await ctx.first(ctx.step("a"), ctx.step("b"), ctx.step("c"))

    async def now_two(ctx: WorkflowContext) -> Any:
        return await ctx.first(ctx.step("a"), ctx.step("b"))

    journal = commit([], replay(was_three, instance(), [], codec=codec, now=NOW))
    journal = done(journal, 2, "C", NOW)
    journal = commit(journal, replay(was_three, instance(), journal, codec=codec, now=NOW))
    # the code dropped the winning part "c", and the journal was cut to match by hand
    dropped = [*journal[:2], dataclasses.replace(journal[3], seq=2)]
    decision = replay(now_two, instance(), dropped, codec=codec, now=NOW)

    assert decision.status is Status.STUCK
    assert decision.failure is not None
    assert decision.failure.type == "NonDeterminismError"
    assert decision.failure.message == (
        "workflow 'wf' (id 'wf-1') does not replay its journal: the ctx.first() race record "
        "at seq 2 names the winner 2 but the code races 2 command(s) (seq 0 to 1). " + FIX
    )


def test_gather_replaced_by_a_race_is_stuck(instance: MakeInstance, codec: Any) -> None:
    async def gathered(ctx: WorkflowContext) -> Any:
        both = await ctx.gather(ctx.run(int, "1"), ctx.run(int, "2"))
        return [both, await ctx.step("next")]

    async def raced(ctx: WorkflowContext) -> Any:
        won = await ctx.first(ctx.run(int, "1"), ctx.run(int, "2"))
        return [won, await ctx.step("next")]

    journal = commit([], replay(gathered, instance(), [], codec=codec, now=NOW))
    decision = replay(raced, instance(), journal, codec=codec, now=NOW)

    assert decision.status is Status.STUCK
    assert decision.failure is not None
    assert decision.failure.message == (
        "workflow 'wf' (id 'wf-1') does not replay its journal: at seq 2 the journal holds "
        "step 'next' but the code asked for run 'ctx.first'. " + FIX
    )


def test_race_needs_a_command(instance: MakeInstance, codec: Any) -> None:
    async def wf(ctx: WorkflowContext) -> str:
        try:
            ctx.first()
        except ValueError as e:
            return str(e)
        return "not raised"

    decision = replay(wf, instance(), [], codec=codec, now=NOW)

    assert codec.loads(decision.output) == "ctx.first() needs at least one command to race"
    assert decision.new_events == []


def test_race_checks_its_parts_like_gather(instance: MakeInstance, codec: Any) -> None:
    async def wf(ctx: WorkflowContext) -> list[str]:
        messages = []
        a = ctx.step("a")
        for bad in [(ctx.step("b"), 42), (a, a), (ctx.first(ctx.step("c")),)]:
            try:
                ctx.first(*bad)  # type: ignore[arg-type]
            except (TypeError, RuntimeError) as e:
                messages.append(f"{type(e).__name__}: {e}")
        return messages

    decision = replay(wf, instance(), [], codec=codec, now=NOW)

    assert codec.loads(decision.output) == [
        "TypeError: ctx.first() argument 1 is a 'int', not a ctx command. Workflow code may "
        "only await ctx commands (ctx.step, ctx.sleep, ctx.run, ...): run other async code "
        "inside a step",
        "RuntimeError: ctx.first() got step 'a' twice (again as argument 1); pass a new "
        "command for each part",
        "TypeError: ctx.first() argument 0 is a ctx.first() of 1 command: combinations do "
        "not nest (yet); await it on its own or pass its commands directly",
    ]
