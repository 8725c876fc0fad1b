"""Cancellation: WorkflowCancelled thrown where the workflow blocks, journaled as a CANCEL."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from celery_durable.engine import WorkflowContext, replay
from celery_durable.engine.commands import Decision, ScheduleStep
from celery_durable.engine.journal import Event, Failure, Instance, Kind, Signal, State, Status
from celery_durable.errors import WorkflowCancelled

NOW = datetime(2024, 3, 1, 9, 30, tzinfo=timezone.utc)
LATER = NOW + timedelta(minutes=5)
CANCELLED = Failure("WorkflowCancelled", "cancelled")

MakeInstance = Callable[..., Instance]


def commit(journal: list[Event], decision: Decision) -> list[Event]:
    fired = {e.seq: e for e in decision.fired}
    return [fired.get(e.seq, e) for e in journal] + list(decision.new_events)


def done(journal: list[Event], seq: int, output: Any = None) -> list[Event]:
    event = dataclasses.replace(
        journal[seq], state=State.COMPLETED, output=json.dumps(output), completed_at=LATER
    )
    return [*journal[:seq], event, *journal[seq + 1 :]]


def run(
    wf: Any,
    instance: MakeInstance,
    codec: Any,
    journal: list[Event],
    *,
    cancel: bool = False,
    now: datetime = NOW,
    signals: tuple[Signal, ...] = (),
) -> Decision:
    return replay(
        wf, instance(), journal, codec=codec, now=now, cancel_requested=cancel, signals=signals
    )


def cancel_event(seq: int, at: datetime = NOW) -> Event:
    return Event(seq, Kind.CANCEL, "cancel", None, State.COMPLETED, at, completed_at=at)


async def charge(ctx: WorkflowContext) -> Any:
    await ctx.step("pay.reserve")
    return await ctx.step("pay.charge")


async def saga(ctx: WorkflowContext) -> Any:
    async with ctx.saga() as s:
        await ctx.step("pay.reserve")
        s.compensate("pay.release", 1)
        await ctx.step("pay.charge")
    return "charged"


def test_cancel_while_blocked_journals_cancel_and_ends_cancelled(
    instance: MakeInstance, codec: Any
) -> None:
    journal = commit([], run(charge, instance, codec, []))  # step 0 pending

    decision = run(charge, instance, codec, journal, cancel=True, now=LATER)

    assert decision.status is Status.CANCELLED
    assert decision.failure == CANCELLED
    assert decision.new_events == [cancel_event(1, LATER)]
    assert (decision.steps, decision.output) == ([], None)


def test_no_cancel_requested_changes_nothing(instance: MakeInstance, codec: Any) -> None:
    journal = commit([], run(charge, instance, codec, []))

    decision = run(charge, instance, codec, journal, now=LATER)

    assert (decision.status, decision.new_events) == (Status.RUNNING, [])


def test_cancel_before_the_first_pass_cancels_before_any_command_is_sent(
    instance: MakeInstance, codec: Any
) -> None:
    decision = run(charge, instance, codec, [], cancel=True)

    assert decision.status is Status.CANCELLED
    assert [(e.seq, e.kind) for e in decision.new_events] == [(0, Kind.CANCEL)]
    assert decision.steps == []  # nothing is sent once a cancel is requested

    replayed = run(charge, instance, codec, commit([], decision), cancel=True, now=LATER)
    assert (replayed.status, replayed.new_events) == (Status.CANCELLED, [])


def test_a_cancelled_workflow_issues_no_new_command_not_even_a_local_run(
    instance: MakeInstance, codec: Any
) -> None:
    ran: list[int] = []

    async def wf(ctx: WorkflowContext) -> Any:
        return await ctx.run(lambda: ran.append(7))

    decision = run(wf, instance, codec, [], cancel=True)

    assert decision.status is Status.CANCELLED
    assert ran == []


def test_workflow_that_ends_without_a_new_command_is_not_interrupted(
    instance: MakeInstance, codec: Any
) -> None:
    async def wf(ctx: WorkflowContext) -> Any:
        return 7

    decision = run(wf, instance, codec, [], cancel=True)

    assert (decision.status, decision.output) == (Status.COMPLETED, "7")


def test_saga_compensates_after_cancel_then_ends_cancelled(
    instance: MakeInstance, codec: Any
) -> None:
    journal = commit([], run(saga, instance, codec, []))
    journal = commit(done(journal, 0, "r1"), run(saga, instance, codec, done(journal, 0, "r1")))
    assert [(e.seq, e.name, e.state) for e in journal] == [
        (0, "pay.reserve", State.COMPLETED),
        (1, "pay.charge", State.SCHEDULED),
    ]

    decision = run(saga, instance, codec, journal, cancel=True, now=LATER)

    assert decision.status is Status.RUNNING  # the compensation runs, durably
    assert [(e.seq, e.kind, e.name) for e in decision.new_events] == [
        (2, Kind.CANCEL, "cancel"),
        (3, Kind.STEP, "pay.release"),
    ]
    assert decision.steps == [ScheduleStep(3, "pay.release", (1,), {})]
    journal = commit(journal, decision)

    # a pass before the compensation finishes: replays the cancel, waits, no second CANCEL
    waiting = run(saga, instance, codec, journal, cancel=True, now=LATER)
    assert (waiting.status, waiting.new_events, waiting.steps) == (Status.RUNNING, [], [])

    ended = run(saga, instance, codec, done(journal, 3), cancel=True, now=LATER)
    assert ended.status is Status.CANCELLED
    assert ended.failure == CANCELLED
    assert ended.new_events == []


def test_replay_throws_at_the_journaled_point_even_if_the_step_finished_since(
    instance: MakeInstance, codec: Any
) -> None:
    seen: list[str] = []

    async def wf(ctx: WorkflowContext) -> Any:
        try:
            await ctx.step("pay.reserve")
        except WorkflowCancelled:
            seen.append("cancelled at reserve")
            raise

    journal = commit([], run(wf, instance, codec, []))
    journal = commit(journal, run(wf, instance, codec, journal, cancel=True))
    assert [e.kind for e in journal] == [Kind.STEP, Kind.CANCEL]
    journal = done(journal, 0, "late result")  # the step's outcome arrives afterwards
    seen.clear()

    decision = run(wf, instance, codec, journal, cancel=True, now=LATER)

    assert seen == ["cancelled at reserve"]
    assert (decision.status, decision.new_events) == (Status.CANCELLED, [])


def test_cancel_caught_by_the_workflow_completes_it(instance: MakeInstance, codec: Any) -> None:
    async def wf(ctx: WorkflowContext) -> Any:
        try:
            await ctx.step("pay.reserve")
        except WorkflowCancelled:
            await ctx.step("notify.cancelled")
            return "cleaned up"
        return "done"

    journal = commit([], run(wf, instance, codec, []))
    decision = run(wf, instance, codec, journal, cancel=True)
    assert decision.status is Status.RUNNING
    assert [(e.seq, e.kind) for e in decision.new_events] == [(1, Kind.CANCEL), (2, Kind.STEP)]
    journal = done(commit(journal, decision), 2)

    ended = run(wf, instance, codec, journal, cancel=True)

    assert (ended.status, ended.output) == (Status.COMPLETED, '"cleaned up"')


def test_except_exception_does_not_catch_the_cancellation(
    instance: MakeInstance, codec: Any
) -> None:
    async def wf(ctx: WorkflowContext) -> Any:
        try:
            await ctx.step("pay.reserve")
        except Exception:
            return "swallowed"
        return "done"

    decision = run(wf, instance, codec, [], cancel=True)

    assert decision.status is Status.CANCELLED


def test_cancel_while_in_gather_is_thrown_at_the_gather(instance: MakeInstance, codec: Any) -> None:
    async def wf(ctx: WorkflowContext) -> Any:
        try:
            return await ctx.gather(ctx.step("a"), ctx.sleep(timedelta(hours=1)), ctx.step("b"))
        except WorkflowCancelled:
            await ctx.step("undo")
            raise

    journal = commit([], run(wf, instance, codec, []))
    journal = done(journal, 0)  # "a" finished, "b" and the timer still pending

    decision = run(wf, instance, codec, journal, cancel=True)

    assert decision.status is Status.RUNNING
    assert [(e.seq, e.kind, e.name) for e in decision.new_events] == [
        (3, Kind.CANCEL, "cancel"),
        (4, Kind.STEP, "undo"),
    ]
    assert decision.wake_at is None  # the workflow no longer waits on the timer
    ended = run(wf, instance, codec, done(commit(journal, decision), 4), cancel=True)
    assert ended.status is Status.CANCELLED


def test_cancel_while_in_first_is_thrown_at_the_race(instance: MakeInstance, codec: Any) -> None:
    async def wf(ctx: WorkflowContext) -> Any:
        return await ctx.first(ctx.wait_signal("ok"), ctx.sleep(timedelta(days=1)))

    journal = commit([], run(wf, instance, codec, []))
    decision = run(wf, instance, codec, journal, cancel=True)
    assert decision.status is Status.CANCELLED
    assert [(e.seq, e.kind) for e in decision.new_events] == [(2, Kind.CANCEL)]

    # replayed with a signal in the inbox: still cancelled at the race, the signal stays
    inbox = (Signal(1, "ok", "1", NOW),)
    again = run(wf, instance, codec, commit(journal, decision), cancel=True, signals=inbox)
    assert (again.status, again.consumed, again.fired) == (Status.CANCELLED, [], [])


def test_changed_code_at_the_cancel_point_is_stuck(instance: MakeInstance, codec: Any) -> None:
    async def wf(ctx: WorkflowContext) -> Any:  # was: await ctx.step("pay.reserve")
        return await ctx.gather(ctx.step("pay.reserve"), ctx.step("pay.charge"))

    journal = [
        Event(0, Kind.STEP, "pay.reserve", codec.dumps([[], {}]), State.SCHEDULED, NOW),
        cancel_event(1),
    ]

    decision = run(wf, instance, codec, journal, cancel=True)

    assert decision.status is Status.STUCK
    assert decision.failure is not None
    assert "cancel 'cancel'" in decision.failure.message


def test_workflow_ending_before_its_journaled_cancel_is_stuck(
    instance: MakeInstance, codec: Any
) -> None:
    async def wf(ctx: WorkflowContext) -> Any:
        return await ctx.run(lambda: 1)

    journal = [
        Event(0, Kind.RUN, "<lambda>", codec.dumps([[], {}]), State.COMPLETED, NOW, "1"),
        cancel_event(1),
    ]

    assert run(wf, instance, codec, journal, cancel=True).status is Status.STUCK


def test_failed_compensation_after_cancel_is_reported(instance: MakeInstance, codec: Any) -> None:
    journal = commit([], run(saga, instance, codec, []))
    journal = done(journal, 0, "r1")
    journal = commit(journal, run(saga, instance, codec, journal))
    journal = commit(journal, run(saga, instance, codec, journal, cancel=True))
    release = dataclasses.replace(
        journal[3], state=State.FAILED, failure=Failure("LedgerDown", "offline")
    )

    decision = run(saga, instance, codec, [*journal[:3], release], cancel=True)

    assert decision.status is Status.CANCELLED
    assert decision.failure is not None
    assert decision.failure.type == "WorkflowCancelled"
    assert "step 'pay.release': LedgerDown: offline" in (decision.failure.details or "")


async def two_legs(ctx: WorkflowContext) -> Any:
    async with ctx.saga() as s:
        await ctx.step("bank.debit")
        s.compensate("bank.refund_debit")
        await ctx.step("bank.credit")
        s.compensate("bank.refund_credit")
        await ctx.step("bank.notify")  # fails: both legs are rolled back
    return "done"


def rolling_back(instance: MakeInstance, codec: Any) -> list[Event]:
    """``two_legs`` with its last step failed: the first compensation pending."""
    journal: list[Event] = []
    for seq in range(3):
        journal = commit(journal, run(two_legs, instance, codec, journal))
        if seq < 2:
            journal = done(journal, seq)
    failed = dataclasses.replace(journal[2], state=State.FAILED, failure=Failure("Down", "x"))
    journal = commit([*journal[:2], failed], run(two_legs, instance, codec, [*journal[:2], failed]))
    assert [(e.seq, e.name, e.state) for e in journal][2:] == [
        (2, "bank.notify", State.FAILED),
        (3, "bank.refund_credit", State.SCHEDULED),
    ]
    return journal


def test_cancel_during_a_rollback_waits_for_the_running_compensation_then_runs_the_rest(
    instance: MakeInstance, codec: Any
) -> None:
    """Regression: a cancel that arrived while a saga compensated used to skip the
    compensations left (money debited and never refunded)."""
    journal = rolling_back(instance, codec)

    cancelled = run(two_legs, instance, codec, journal, cancel=True, now=LATER)

    # The cancel is journaled where the saga waits; nothing else is issued yet: the
    # running compensation is waited for first, to keep the reverse order.
    assert cancelled.status is Status.RUNNING
    assert cancelled.new_events == [cancel_event(4, LATER)]
    assert cancelled.steps == []
    journal = commit(journal, cancelled)

    # It finishes: the next compensation is issued (after the journaled CANCEL).
    journal = done(journal, 3)
    next_one = run(two_legs, instance, codec, journal, cancel=True, now=LATER)
    assert next_one.status is Status.RUNNING
    assert [(e.seq, e.name) for e in next_one.new_events] == [(5, "bank.refund_debit")]
    assert next_one.steps == [ScheduleStep(5, "bank.refund_debit", (), {})]
    journal = commit(journal, next_one)

    # Both ran: the workflow fails with its own error, noting the cancellation.
    ended = run(two_legs, instance, codec, done(journal, 5), cancel=True, now=LATER)
    assert ended.status is Status.FAILED
    assert ended.failure is not None
    assert ended.failure.type == "Down"  # the failed step's error, as without the cancel
    assert "a cancellation arrived while the saga rolled back" in (ended.failure.details or "")
    assert ended.new_events == []


def test_cancel_during_a_rollback_reports_the_interrupted_compensation_failing(
    instance: MakeInstance, codec: Any
) -> None:
    journal = commit(
        rolling_back(instance, codec),
        run(two_legs, instance, codec, rolling_back(instance, codec), cancel=True),
    )
    refund_failed = dataclasses.replace(
        journal[3], state=State.FAILED, failure=Failure("LedgerDown", "offline")
    )
    journal = [*journal[:3], refund_failed, journal[4]]
    journal = commit(journal, run(two_legs, instance, codec, journal, cancel=True))

    ended = run(two_legs, instance, codec, done(journal, 5), cancel=True)

    assert ended.status is Status.FAILED
    details = ended.failure.details if ended.failure else ""
    assert "step 'bank.refund_credit': LedgerDown: offline" in (details or "")
    assert "a cancellation arrived while the saga rolled back" in (details or "")


def test_cancel_before_new_commands_replays_after_a_completed_step(
    instance: MakeInstance, codec: Any
) -> None:
    """A CANCEL thrown before the next command follows a completed step in the journal;
    replays throw it at the next await, not at the completed step's (issue 9, item 10)."""
    journal = commit([], run(saga, instance, codec, []))
    journal = done(journal, 0, "r1")

    cancelled = run(saga, instance, codec, journal, cancel=True, now=LATER)
    assert [(e.seq, e.kind, e.name) for e in cancelled.new_events] == [
        (1, Kind.CANCEL, "cancel before"),
        (2, Kind.STEP, "pay.release"),
    ]
    assert cancelled.steps == [ScheduleStep(2, "pay.release", (1,), {})]  # never pay.charge
    journal = commit(journal, cancelled)

    ended = run(saga, instance, codec, done(journal, 2), cancel=True, now=LATER)
    assert (ended.status, ended.failure, ended.new_events) == (Status.CANCELLED, CANCELLED, [])
