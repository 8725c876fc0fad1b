"""ctx.wait_signal: the inbox, exactly-once consumption in arrival order, timeouts, races."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from celery_durable.engine import WorkflowContext, replay
from celery_durable.engine.commands import Decision, ScheduleStep
from celery_durable.engine.journal import Event, Failure, Instance, Kind, Signal, State, Status
from celery_durable.errors import SignalTimeout

NOW = datetime(2024, 3, 1, 9, 30, tzinfo=timezone.utc)
DAY = timedelta(days=1)
HOUR = timedelta(hours=1)
MIN = timedelta(minutes=1)
US = timedelta(microseconds=1)
FIX = (
    "Deploy code that replays this journal (or restore the previous code, or branch with "
    "ctx.patched()), then retry the instance."
)

MakeInstance = Callable[..., Instance]


def sig(id: int, name: str, payload: Any = None, at: datetime = NOW) -> Signal:  # noqa: A002
    """An inbox signal; its payload encoded as the sender's codec would."""
    return Signal(id=id, name=name, payload=json.dumps(payload), sent_at=at)


def wait(
    codec: Any,
    seq: int,
    name: str,
    deadline: datetime | None = None,
    *,
    at: datetime = NOW,
) -> Event:
    """A journaled pending signal wait, issued at ``at``."""
    return Event(
        seq=seq,
        kind=Kind.SIGNAL,
        name=name,
        input=codec.dumps([[deadline], {}]),
        state=State.SCHEDULED,
        scheduled_at=at,
    )


def commit(journal: list[Event], decision: Decision) -> list[Event]:
    """What the runtime commits: resolved events replace theirs, new events append."""
    fired = {e.seq: e for e in decision.fired}
    return [fired.get(e.seq, e) for e in journal] + list(decision.new_events)


def left(inbox: Sequence[Signal], decision: Decision) -> list[Signal]:
    """The inbox after the commit: the consumed signals are gone."""
    taken = {signal_id for signal_id, _ in decision.consumed}
    return [s for s in inbox if s.id not in taken]


def done(journal: list[Event], seq: int, output: Any, at: datetime = NOW) -> list[Event]:
    """A worker journals the result of step ``seq``."""
    event = dataclasses.replace(
        journal[seq], state=State.COMPLETED, output=json.dumps(output), completed_at=at
    )
    return [*journal[:seq], event, *journal[seq + 1 :]]


def run(
    wf: Any,
    instance: MakeInstance,
    codec: Any,
    journal: list[Event],
    now: datetime = NOW,
    signals: Sequence[Signal] = (),
    failure_exceptions: tuple[type[BaseException], ...] = (),
) -> Decision:
    return replay(
        wf,
        instance(),
        journal,
        codec=codec,
        now=now,
        signals=signals,
        failure_exceptions=failure_exceptions,
    )


def output(codec: Any, decision: Decision) -> Any:
    assert decision.status is Status.COMPLETED, decision.failure
    assert decision.output is not None
    return codec.loads(decision.output)


async def verify(ctx: WorkflowContext) -> Any:
    payload = await ctx.wait_signal("verified")
    await ctx.step("activate", payload)
    return payload


# -- waiting --------------------------------------------------------------------------------


def test_wait_with_an_empty_inbox_journals_a_pending_wait(
    instance: MakeInstance, codec: Any
) -> None:
    decision = run(verify, instance, codec, [])

    assert decision.status is Status.RUNNING
    assert decision.new_events == [
        Event(
            seq=0,
            kind=Kind.SIGNAL,
            name="verified",
            input=codec.dumps([[None], {}]),
            state=State.SCHEDULED,
            scheduled_at=NOW,
        )
    ]
    assert (decision.steps, decision.fired, decision.consumed) == ([], [], [])
    assert decision.wake_at is None  # no timeout: only a signal wakes it


def test_pending_wait_with_nothing_in_the_inbox_waits_again(
    instance: MakeInstance, codec: Any
) -> None:
    journal = [wait(codec, 0, "verified", at=NOW - DAY)]

    decision = run(verify, instance, codec, journal, now=NOW + 300 * DAY)

    assert decision.status is Status.RUNNING
    assert (decision.new_events, decision.fired, decision.consumed) == ([], [], [])
    assert decision.wake_at is None


@pytest.mark.parametrize("timeout", [timedelta(days=3), 3 * 86400, 3 * 86400.0])
def test_timeout_journals_the_deadline_and_sets_wake_at(
    instance: MakeInstance, codec: Any, timeout: Any
) -> None:
    async def wf(ctx: WorkflowContext) -> Any:
        return await ctx.wait_signal("verified", timeout=timeout)

    decision = run(wf, instance, codec, [])

    [event] = decision.new_events
    assert (event.kind, event.name, event.state) == (Kind.SIGNAL, "verified", State.SCHEDULED)
    assert codec.loads(event.input) == [[NOW + 3 * DAY], {}]
    assert decision.wake_at == NOW + 3 * DAY

    # a pass before the deadline waits again, on the journaled deadline
    again = run(wf, instance, codec, commit([], decision), now=NOW + 3 * DAY - US)
    assert (again.status, again.fired, again.new_events) == (Status.RUNNING, [], [])
    assert again.wake_at == NOW + 3 * DAY


def test_deadline_without_date_support_is_journaled_as_iso_text(
    instance: MakeInstance, plain_codec: Any
) -> None:
    async def wf(ctx: WorkflowContext) -> Any:
        return await ctx.wait_signal("verified", timeout=HOUR)

    decision = replay(wf, instance(), [], codec=plain_codec, now=NOW)

    [event] = decision.new_events
    assert plain_codec.loads(event.input) == [[(NOW + HOUR).isoformat()], {}]
    assert decision.wake_at == NOW + HOUR


def test_journaled_deadline_governs_not_todays_timeout(instance: MakeInstance, codec: Any) -> None:
    async def wf(ctx: WorkflowContext) -> Any:
        return await ctx.wait_signal("verified", timeout=timedelta(days=30))  # was 1 day

    journal = [wait(codec, 0, "verified", NOW + DAY)]

    assert run(wf, instance, codec, journal, now=NOW).wake_at == NOW + DAY
    assert run(wf, instance, codec, journal, now=NOW + DAY).status is Status.FAILED


# -- receiving ------------------------------------------------------------------------------


def test_signal_in_the_inbox_completes_the_pending_wait(instance: MakeInstance, codec: Any) -> None:
    pending = wait(codec, 0, "verified", at=NOW - DAY)
    inbox = [sig(7, "verified", {"user": "ann"}, at=NOW - MIN)]

    decision = run(verify, instance, codec, [pending], now=NOW, signals=inbox)

    assert decision.status is Status.RUNNING
    assert decision.consumed == [(7, 0)]
    assert decision.fired == [
        dataclasses.replace(
            pending, state=State.COMPLETED, output=inbox[0].payload, completed_at=NOW
        )
    ]
    assert pending.state is State.SCHEDULED  # the journal handed in is not modified
    assert decision.steps == [ScheduleStep(1, "activate", ({"user": "ann"},), {})]
    assert decision.wake_at is None

    journal = done(commit([pending], decision), 1, None)
    end = run(verify, instance, codec, journal, now=NOW + MIN, signals=left(inbox, decision))
    assert output(codec, end) == {"user": "ann"}
    assert (end.consumed, end.fired) == ([], [])


def test_signal_sent_before_the_wait_is_taken_when_the_wait_is_issued(
    instance: MakeInstance, codec: Any
) -> None:
    async def wf(ctx: WorkflowContext) -> Any:
        user = await ctx.step("users.create")
        payload = await ctx.wait_signal("verified")
        return [user, payload]

    early = [sig(1, "verified", "click", at=NOW)]

    # the signal is already in the inbox, but nothing waits for it yet: it stays
    first = run(wf, instance, codec, [], now=NOW + MIN, signals=early)
    assert first.status is Status.RUNNING
    assert first.consumed == []
    journal = done(commit([], first), 0, "u1", NOW + 2 * MIN)

    # the first pass that reaches the wait issues it already received
    second = run(wf, instance, codec, journal, now=NOW + 3 * MIN, signals=left(early, first))
    assert output(codec, second) == ["u1", "click"]
    assert second.consumed == [(1, 1)]
    assert second.fired == []
    assert second.new_events == [
        Event(
            seq=1,
            kind=Kind.SIGNAL,
            name="verified",
            input=codec.dumps([[None], {}]),
            state=State.COMPLETED,
            scheduled_at=NOW + 3 * MIN,
            output=early[0].payload,
            completed_at=NOW + 3 * MIN,
        )
    ]

    # replay of the committed journal: the journaled payload, nothing consumed again
    journal = commit(journal, second)
    again = run(wf, instance, codec, journal, now=NOW + DAY, signals=left(early, second))
    assert output(codec, again) == ["u1", "click"]
    assert (again.consumed, again.new_events, again.fired) == ([], [], [])


async def two_codes(ctx: WorkflowContext) -> Any:
    first = await ctx.wait_signal("code")
    second = await ctx.wait_signal("code")
    return [first, second]


def test_waits_of_one_name_take_its_signals_in_arrival_order(
    instance: MakeInstance, codec: Any
) -> None:
    inbox = [sig(3, "code", "one"), sig(5, "code", "two"), sig(9, "code", "three")]

    decision = run(two_codes, instance, codec, [], signals=inbox)

    assert output(codec, decision) == ["one", "two"]
    assert decision.consumed == [(3, 0), (5, 1)]
    assert left(inbox, decision) == [inbox[2]]  # each signal is consumed once at most


def test_signals_arriving_one_by_one_go_to_the_waits_in_order(
    instance: MakeInstance, codec: Any
) -> None:
    d0 = run(two_codes, instance, codec, [], signals=[])
    journal = commit([], d0)

    d1 = run(two_codes, instance, codec, journal, now=NOW + MIN, signals=[sig(1, "code", "a")])
    assert d1.consumed == [(1, 0)]
    assert [(e.seq, e.state) for e in d1.fired] == [(0, State.COMPLETED)]
    assert [(e.seq, e.state) for e in d1.new_events] == [(1, State.SCHEDULED)]
    journal = commit(journal, d1)

    d2 = run(two_codes, instance, codec, journal, now=NOW + HOUR, signals=[sig(2, "code", "b")])
    assert d2.consumed == [(2, 1)]
    assert output(codec, d2) == ["a", "b"]


def test_signals_of_another_name_are_left_in_the_inbox(instance: MakeInstance, codec: Any) -> None:
    inbox = [sig(1, "cancelled", "no"), sig(2, "verified", "yes"), sig(3, "cancelled", "no")]

    nothing = run(verify, instance, codec, [wait(codec, 0, "verified")], signals=inbox[::2])
    assert (nothing.status, nothing.consumed, nothing.fired) == (Status.RUNNING, [], [])

    decision = run(verify, instance, codec, [wait(codec, 0, "verified")], signals=inbox)
    assert decision.consumed == [(2, 0)]
    assert decision.steps == [ScheduleStep(1, "activate", ("yes",), {})]


@pytest.mark.parametrize("payload", [None, "null"])
def test_signal_without_payload_gives_none(
    instance: MakeInstance, codec: Any, payload: str | None
) -> None:
    async def wf(ctx: WorkflowContext) -> Any:
        return {"payload": await ctx.wait_signal("ping")}

    inbox = [Signal(id=1, name="ping", payload=payload, sent_at=NOW)]

    decision = run(wf, instance, codec, [], signals=inbox)

    assert output(codec, decision) == {"payload": None}
    assert decision.consumed == [(1, 0)]
    assert decision.new_events[0].output == payload  # copied as sent


def test_signal_received_in_a_pass_where_the_workflow_fails_is_consumed(
    instance: MakeInstance, codec: Any
) -> None:
    async def wf(ctx: WorkflowContext) -> None:
        await ctx.wait_signal("go")
        raise LookupError("gone")

    journal = [wait(codec, 0, "go")]
    inbox = [sig(4, "go")]
    decision = run(wf, instance, codec, journal, signals=inbox, failure_exceptions=(LookupError,))

    assert decision.status is Status.FAILED
    assert decision.consumed == [(4, 0)]
    assert [e.seq for e in decision.fired] == [0]

    # Unlisted, the same exception is a bug: the pass parks and the signal stays unread.
    parked = run(wf, instance, codec, journal, signals=inbox)
    assert parked.status is Status.STUCK
    assert (parked.consumed, parked.fired, parked.new_events) == ([], [], [])


def test_stuck_pass_consumes_nothing(instance: MakeInstance, codec: Any) -> None:
    async def wf(ctx: WorkflowContext) -> None:
        await ctx.wait_signal("go")
        await asyncio.sleep(0)

    decision = run(wf, instance, codec, [wait(codec, 0, "go")], signals=[sig(4, "go")])

    assert decision.status is Status.STUCK
    assert decision.failure is not None
    assert decision.failure.type == "InvalidAwait"
    assert (decision.consumed, decision.fired, decision.new_events) == ([], [], [])


# -- timing out -----------------------------------------------------------------------------


async def registration(ctx: WorkflowContext, email: str) -> str:
    """The seed's UserRegistrationSaga: clean up when the user never verifies."""
    user = await ctx.step("users.create", email)
    await ctx.step("mail.send_verification", email)
    try:
        await ctx.wait_signal("verified", timeout=timedelta(days=3))
    except SignalTimeout:
        await ctx.step("users.delete", user)
        return "expired"
    await ctx.step("users.activate", user)
    return "activated"


def registration_waiting(instance: MakeInstance, codec: Any) -> list[Event]:
    inst = instance("ann@example.com")
    journal: list[Event] = []
    for seq, result in [(0, "u1"), (1, None)]:
        journal = done(
            commit(journal, replay(registration, inst, journal, codec=codec, now=NOW)), seq, result
        )
    decision = replay(registration, inst, journal, codec=codec, now=NOW)
    assert decision.wake_at == NOW + 3 * DAY
    return commit(journal, decision)


def test_deadline_passed_raises_signal_timeout_and_journals_it(
    instance: MakeInstance, codec: Any
) -> None:
    journal = registration_waiting(instance, codec)
    inst = instance("ann@example.com")

    # one microsecond early: it waits again
    early = replay(registration, inst, journal, codec=codec, now=NOW + 3 * DAY - US)
    assert (early.status, early.fired, early.wake_at) == (Status.RUNNING, [], NOW + 3 * DAY)

    late = NOW + 3 * DAY + HOUR
    decision = replay(registration, inst, journal, codec=codec, now=late)

    assert decision.status is Status.RUNNING
    assert decision.fired == [
        dataclasses.replace(
            journal[2],
            state=State.FAILED,
            failure=Failure("SignalTimeout", "no signal 'verified' within 3 days, 0:00:00"),
            completed_at=late,
        )
    ]
    assert decision.consumed == []
    assert decision.steps == [ScheduleStep(3, "users.delete", ("u1",), {})]
    assert decision.wake_at is None

    # replays raise it again from the journal; a signal that came since is not taken
    journal = done(commit(journal, decision), 3, None)
    inbox = [sig(1, "verified", "too late")]
    end = replay(registration, inst, journal, codec=codec, now=late + DAY, signals=inbox)
    assert output(codec, end) == "expired"
    assert (end.consumed, end.fired, end.new_events) == ([], [], [])


def test_deadline_reached_exactly_times_out(instance: MakeInstance, codec: Any) -> None:
    journal = registration_waiting(instance, codec)
    inst = instance("ann@example.com")

    decision = replay(registration, inst, journal, codec=codec, now=NOW + 3 * DAY)

    assert [(e.seq, e.state) for e in decision.fired] == [(2, State.FAILED)]


def test_signal_in_the_inbox_wins_over_a_passed_deadline(
    instance: MakeInstance, codec: Any
) -> None:
    journal = registration_waiting(instance, codec)
    inbox = [sig(1, "verified", None, at=NOW + 3 * DAY - MIN)]

    inst = instance("ann@example.com")

    decision = replay(registration, inst, journal, codec=codec, now=NOW + 4 * DAY, signals=inbox)

    assert decision.consumed == [(1, 2)]
    assert [(e.seq, e.state) for e in decision.fired] == [(2, State.COMPLETED)]
    assert decision.steps == [ScheduleStep(3, "users.activate", ("u1",), {})]


def test_uncaught_timeout_fails_the_workflow_after_the_saga_compensates(
    instance: MakeInstance, codec: Any
) -> None:
    async def wf(ctx: WorkflowContext) -> str:
        async with ctx.saga() as saga:
            user = await ctx.step("users.create")
            saga.compensate("users.delete", user)
            await ctx.wait_signal("verified", timeout=60)
        return "activated"

    journal = done(commit([], run(wf, instance, codec, [])), 0, "u1")
    journal = commit(journal, run(wf, instance, codec, journal))
    assert journal[1].kind is Kind.SIGNAL

    timed_out = run(wf, instance, codec, journal, now=NOW + MIN)
    assert timed_out.steps == [ScheduleStep(2, "users.delete", ("u1",), {})]
    journal = done(commit(journal, timed_out), 2, None)

    end = run(wf, instance, codec, journal, now=NOW + HOUR)
    assert end.status is Status.FAILED
    assert end.failure is not None
    assert (end.failure.type, end.failure.message) == (
        "SignalTimeout",
        "no signal 'verified' within 0:01:00",
    )


def test_journaled_timeout_is_raised_as_signal_timeout_not_step_failed(
    instance: MakeInstance, codec: Any
) -> None:
    async def wf(ctx: WorkflowContext) -> str:
        try:
            await ctx.wait_signal("verified", timeout=60)
        except SignalTimeout as exc:
            return f"{type(exc).__name__}: {exc}"
        return "received"

    failure = Failure("SignalTimeout", "no signal 'verified' within 0:01:00")
    journal = [
        dataclasses.replace(
            wait(codec, 0, "verified", NOW + MIN),
            state=State.FAILED,
            failure=failure,
            completed_at=NOW + MIN,
        )
    ]

    decision = run(wf, instance, codec, journal, now=NOW + DAY, signals=[sig(1, "verified")])

    assert output(codec, decision) == "SignalTimeout: no signal 'verified' within 0:01:00"
    assert decision.consumed == []


# -- ctx.first: signal or timeout -----------------------------------------------------------


async def verify_or_expire(ctx: WorkflowContext) -> Any:
    index, payload = await ctx.first(ctx.wait_signal("verified"), ctx.sleep(timedelta(days=3)))
    if index == 1:
        return "expired"
    return f"verified {payload}"


def race_started(instance: MakeInstance, codec: Any) -> list[Event]:
    decision = run(verify_or_expire, instance, codec, [])
    assert [(e.seq, e.kind, e.state) for e in decision.new_events] == [
        (0, Kind.SIGNAL, State.SCHEDULED),
        (1, Kind.TIMER, State.SCHEDULED),
    ]
    assert decision.wake_at == NOW + 3 * DAY
    return commit([], decision)


def record_of(codec: Any, decision: Decision) -> Any:
    [record] = [e for e in decision.new_events if e.name == "ctx.first"]
    assert record.output is not None
    return codec.loads(record.output)


def test_signal_before_the_timeout_wins_the_race(instance: MakeInstance, codec: Any) -> None:
    journal = race_started(instance, codec)
    inbox = [sig(1, "verified", "ann", at=NOW + DAY)]

    decision = run(verify_or_expire, instance, codec, journal, now=NOW + DAY, signals=inbox)

    assert output(codec, decision) == "verified ann"
    assert decision.consumed == [(1, 0)]
    assert [(e.seq, e.state) for e in decision.fired] == [(0, State.COMPLETED)]
    assert record_of(codec, decision) == 0
    assert decision.wake_at is None


def test_timeout_wins_the_race_and_the_losing_wait_never_consumes(
    instance: MakeInstance, codec: Any
) -> None:
    journal = race_started(instance, codec)

    decision = run(verify_or_expire, instance, codec, journal, now=NOW + 3 * DAY)

    assert output(codec, decision) == "expired"
    assert [(e.seq, e.state) for e in decision.fired] == [(1, State.COMPLETED)]
    assert record_of(codec, decision) == 1
    assert decision.consumed == []

    # the signal comes later: the race is decided, the losing wait stays pending forever
    journal = commit(journal, decision)
    late = run(
        verify_or_expire,
        instance,
        codec,
        journal,
        now=NOW + 4 * DAY,
        signals=[sig(1, "verified", "ann", at=NOW + 4 * DAY)],
    )
    assert output(codec, late) == "expired"
    assert (late.consumed, late.fired, late.new_events, late.wake_at) == ([], [], [], None)
    assert journal[0].state is State.SCHEDULED


@pytest.mark.parametrize(
    ("sent_at", "expected", "consumed"),
    [
        (NOW + 3 * DAY - MIN, "verified ann", [(1, 0)]),  # before the timer's fire time
        (NOW + 3 * DAY, "verified ann", [(1, 0)]),  # same time: the lower index wins
        (NOW + 3 * DAY + MIN, "expired", []),  # after it, although the pass saw both
    ],
)
def test_signal_and_due_timer_in_one_pass_the_earlier_wins(
    instance: MakeInstance,
    codec: Any,
    sent_at: datetime,
    expected: str,
    consumed: list[tuple[int, int]],
) -> None:
    journal = race_started(instance, codec)
    inbox = [sig(1, "verified", "ann", at=sent_at)]

    decision = run(verify_or_expire, instance, codec, journal, now=NOW + 4 * DAY, signals=inbox)

    assert output(codec, decision) == expected
    assert decision.consumed == consumed
    assert [e.seq for e in decision.fired if e.kind is Kind.TIMER] == [1]  # due: fired anyway
    assert [e.seq for e in decision.fired if e.kind is Kind.SIGNAL] == [s for _, s in consumed]


def test_early_signal_wins_a_race_issued_after_it(instance: MakeInstance, codec: Any) -> None:
    inbox = [sig(1, "verified", "ann", at=NOW - DAY)]

    decision = run(verify_or_expire, instance, codec, [], signals=inbox)

    assert output(codec, decision) == "verified ann"
    assert decision.consumed == [(1, 0)]
    assert [(e.seq, e.kind, e.state) for e in decision.new_events] == [
        (0, Kind.SIGNAL, State.COMPLETED),
        (1, Kind.TIMER, State.SCHEDULED),
        (2, Kind.RUN, State.COMPLETED),
    ]


async def race_then_wait(ctx: WorkflowContext) -> Any:
    """A wait that loses a race, then a wait of the same name."""
    index, _ = await ctx.first(ctx.wait_signal("code"), ctx.step("lookup"))
    code = await ctx.wait_signal("code")
    return [index, code]


def test_losing_wait_leaves_its_signal_to_the_next_wait_of_that_name(
    instance: MakeInstance, codec: Any
) -> None:
    journal = commit([], run(race_then_wait, instance, codec, []))
    journal = done(journal, 1, "found", NOW + MIN)

    # the step wins; a signal that came later than the step stays in the inbox and goes
    # to the next wait (seq 3), not to the losing one (seq 0)
    inbox = [sig(1, "code", "c1", at=NOW + 2 * MIN)]
    decision = run(race_then_wait, instance, codec, journal, now=NOW + 3 * MIN, signals=inbox)

    assert output(codec, decision) == [1, "c1"]
    assert decision.consumed == [(1, 3)]
    assert [(e.seq, e.kind, e.state) for e in decision.new_events] == [
        (2, Kind.RUN, State.COMPLETED),
        (3, Kind.SIGNAL, State.COMPLETED),
    ]
    assert decision.fired == []


def test_losing_wait_stays_unresolved_in_later_passes(instance: MakeInstance, codec: Any) -> None:
    journal = commit([], run(race_then_wait, instance, codec, []))
    journal = done(journal, 1, "found", NOW + MIN)
    decided = run(race_then_wait, instance, codec, journal, now=NOW + MIN)
    assert decided.consumed == []
    journal = commit(journal, decided)
    assert [(e.seq, e.kind, e.state) for e in journal] == [
        (0, Kind.SIGNAL, State.SCHEDULED),
        (1, Kind.STEP, State.COMPLETED),
        (2, Kind.RUN, State.COMPLETED),
        (3, Kind.SIGNAL, State.SCHEDULED),
    ]

    inbox = [sig(1, "code", "c1"), sig(2, "code", "c2")]
    decision = run(race_then_wait, instance, codec, journal, now=NOW + HOUR, signals=inbox)

    assert output(codec, decision) == [1, "c1"]
    assert decision.consumed == [(1, 3)]  # the oldest, to the wait the workflow awaits
    assert [e.seq for e in decision.fired] == [3]


def test_race_of_two_signals_takes_only_the_winners(instance: MakeInstance, codec: Any) -> None:
    async def wf(ctx: WorkflowContext) -> Any:
        return await ctx.first(ctx.wait_signal("approve"), ctx.wait_signal("reject"))

    inbox = [sig(1, "reject", "no", at=NOW + 2 * MIN), sig(2, "approve", "yes", at=NOW + MIN)]
    journal = commit([], run(wf, instance, codec, []))

    decision = run(wf, instance, codec, journal, now=NOW + HOUR, signals=inbox)

    assert output(codec, decision) == [0, "yes"]  # sent first
    assert decision.consumed == [(2, 0)]
    assert [e.seq for e in decision.fired] == [0]


def test_race_of_two_waits_of_one_name_takes_one_signal(instance: MakeInstance, codec: Any) -> None:
    async def wf(ctx: WorkflowContext) -> Any:
        won = await ctx.first(ctx.wait_signal("x"), ctx.wait_signal("x"))
        return [won, await ctx.wait_signal("x")]

    inbox = [sig(1, "x", "a"), sig(2, "x", "b")]

    decision = run(wf, instance, codec, [], signals=inbox)

    assert output(codec, decision) == [[0, "a"], "b"]
    assert decision.consumed == [(1, 0), (2, 3)]


def test_timed_out_wait_in_a_race_against_a_step(instance: MakeInstance, codec: Any) -> None:
    async def wf(ctx: WorkflowContext) -> Any:
        try:
            return await ctx.first(ctx.wait_signal("ok", timeout=HOUR), ctx.step("s"))
        except SignalTimeout:
            return "timed out"

    journal = commit([], run(wf, instance, codec, []))
    before = done(journal, 1, "S", NOW + 30 * MIN)  # the step finished before the deadline
    after = done(journal, 1, "S", NOW + 2 * HOUR)

    step_wins = run(wf, instance, codec, before, now=NOW + 3 * HOUR)
    wait_loses = run(wf, instance, codec, after, now=NOW + 3 * HOUR)

    assert output(codec, step_wins) == [1, "S"]
    assert step_wins.fired == []  # the losing wait is not even journaled as timed out
    assert output(codec, wait_loses) == "timed out"
    assert [(e.seq, e.state) for e in wait_loses.fired] == [(0, State.FAILED)]


def test_decided_race_with_a_pending_winning_wait_is_stuck(
    instance: MakeInstance, codec: Any
) -> None:
    journal = race_started(instance, codec)
    record = Event(
        seq=2,
        kind=Kind.RUN,
        name="ctx.first",
        input=codec.dumps([[0, 1], {}]),
        state=State.COMPLETED,
        scheduled_at=NOW,
        output=codec.dumps(0),
        completed_at=NOW,
    )

    decision = run(
        verify_or_expire, instance, codec, [*journal, record], signals=[sig(1, "verified")]
    )

    assert decision.status is Status.STUCK
    assert decision.failure is not None
    assert decision.failure.type == "InvalidJournal"
    assert decision.consumed == []


# -- ctx.gather ------------------------------------------------------------------------------


async def charge_and_confirm(ctx: WorkflowContext) -> Any:
    return await ctx.gather(ctx.step("charge"), ctx.wait_signal("confirmed", timeout=DAY))


def test_signal_wait_inside_a_gather(instance: MakeInstance, codec: Any) -> None:
    d0 = run(charge_and_confirm, instance, codec, [])
    assert [(e.seq, e.kind) for e in d0.new_events] == [(0, Kind.STEP), (1, Kind.SIGNAL)]
    assert d0.steps == [ScheduleStep(0, "charge", (), {})]
    assert d0.wake_at == NOW + DAY
    journal = commit([], d0)

    # the signal comes first: journaled and consumed now, the gather still waits
    inbox = [sig(1, "confirmed", "ok")]
    d1 = run(charge_and_confirm, instance, codec, journal, now=NOW + MIN, signals=inbox)
    assert d1.status is Status.RUNNING
    assert d1.consumed == [(1, 1)]
    assert [(e.seq, e.state) for e in d1.fired] == [(1, State.COMPLETED)]
    assert d1.wake_at is None  # no deadline to wait on any more: only the step
    journal = commit(journal, d1)

    journal = done(journal, 0, "receipt", NOW + HOUR)
    d2 = run(charge_and_confirm, instance, codec, journal, now=NOW + HOUR, signals=left(inbox, d1))
    assert output(codec, d2) == ["receipt", "ok"]
    assert d2.consumed == []


def test_timed_out_wait_inside_a_gather_raises_once_all_are_final(
    instance: MakeInstance, codec: Any
) -> None:
    async def wf(ctx: WorkflowContext) -> Any:
        try:
            return await ctx.gather(ctx.step("charge"), ctx.wait_signal("confirmed", timeout=DAY))
        except SignalTimeout as exc:
            return str(exc)

    journal = commit([], run(wf, instance, codec, []))

    timed_out = run(wf, instance, codec, journal, now=NOW + 2 * DAY)
    assert timed_out.status is Status.RUNNING  # the step is still pending
    assert [(e.seq, e.state) for e in timed_out.fired] == [(1, State.FAILED)]
    journal = done(commit(journal, timed_out), 0, "receipt")

    end = run(wf, instance, codec, journal, now=NOW + 3 * DAY)
    assert output(codec, end) == "no signal 'confirmed' within 1 day, 0:00:00"


def test_gather_of_two_waits_of_one_name_in_arrival_order(
    instance: MakeInstance, codec: Any
) -> None:
    async def wf(ctx: WorkflowContext) -> Any:
        return await ctx.gather(ctx.wait_signal("vote"), ctx.step("s"), ctx.wait_signal("vote"))

    journal = commit([], run(wf, instance, codec, []))
    journal = done(journal, 1, "S")
    inbox = [sig(4, "vote", "first"), sig(8, "vote", "second")]

    decision = run(wf, instance, codec, journal, now=NOW + MIN, signals=inbox)

    assert output(codec, decision) == ["first", "S", "second"]
    assert decision.consumed == [(4, 0), (8, 2)]


# -- a journal that does not match, bad arguments --------------------------------------------


def test_wait_on_another_signal_than_the_journal_is_stuck(
    instance: MakeInstance, codec: Any
) -> None:
    journal = [wait(codec, 0, "approved")]

    decision = run(verify, instance, codec, journal, signals=[sig(1, "verified")])

    assert decision.status is Status.STUCK
    assert decision.failure is not None
    assert decision.failure.type == "NonDeterminismError"
    assert decision.failure.message == (
        "workflow 'wf' (id 'wf-1') does not replay its journal: at seq 0 the journal holds "
        "signal 'approved' but the code asked for signal 'verified'. " + FIX
    )
    assert (decision.consumed, decision.fired, decision.new_events) == ([], [], [])


def test_wait_where_the_journal_holds_a_step_is_stuck(
    instance: MakeInstance, codec: Any, event: Callable[..., Event]
) -> None:
    decision = run(verify, instance, codec, [event(0, "verified")])

    assert decision.status is Status.STUCK
    assert decision.failure is not None
    assert "holds step 'verified' but the code asked for signal 'verified'" in (
        decision.failure.message
    )


def test_undecodable_deadline_is_stuck(instance: MakeInstance, codec: Any) -> None:
    journal = [dataclasses.replace(wait(codec, 0, "verified"), input=codec.dumps(["soon"]))]

    decision = run(verify, instance, codec, journal)

    assert decision.status is Status.STUCK
    assert decision.failure is not None
    assert decision.failure.type == "SerializationError"
    assert "the deadline of the signal wait at seq 0" in decision.failure.message


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("x", -1), "ValueError: ctx.wait_signal() needs a timeout > 0, got -1"),
        (("x", 0), "ValueError: ctx.wait_signal() needs a timeout > 0, got 0"),
        (
            ("x", timedelta(0)),
            "ValueError: ctx.wait_signal() needs a timeout > 0, got datetime.timedelta(0)",
        ),
        (
            ("x", float("inf")),
            "ValueError: ctx.wait_signal() needs a finite timeout (or None to wait forever), "
            "got inf",
        ),
        (
            ("x", "3d"),
            "TypeError: ctx.wait_signal() takes a timeout as a datetime.timedelta, a number of "
            "seconds or None, got 'str'",
        ),
        (
            ("x", True),
            "TypeError: ctx.wait_signal() takes a timeout as a datetime.timedelta, a number of "
            "seconds or None, got 'bool'",
        ),
        (
            ("x", 10**20),
            "ValueError: ctx.wait_signal() timeout 100000000000000000000 seconds is too long",
        ),
        ((42,), "TypeError: ctx.wait_signal() takes the signal's name as a str, got 'int'"),
        (("",), "ValueError: ctx.wait_signal() needs a non-empty signal name"),
    ],
)
def test_bad_arguments_raise_at_the_call_and_journal_nothing(
    instance: MakeInstance, codec: Any, args: tuple[Any, ...], error: str
) -> None:
    async def wf(ctx: WorkflowContext) -> str:
        try:
            ctx.wait_signal(*args)
        except (TypeError, ValueError) as exc:
            return f"{type(exc).__name__}: {exc}"
        return "not raised"

    decision = run(wf, instance, codec, [], signals=[sig(1, "x")])

    assert output(codec, decision) == error
    assert (decision.new_events, decision.consumed) == ([], [])
