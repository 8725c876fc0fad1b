"""Durable timers: ctx.sleep / ctx.sleep_until, firing, wake_at, the journaled fire time."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone
from typing import Any

import pytest

from celery_durable.engine import WorkflowContext, replay
from celery_durable.engine.commands import Decision, ScheduleStep
from celery_durable.engine.journal import Event, Failure, Instance, Kind, State, Status

NOW = datetime(2024, 3, 1, 9, 30, tzinfo=timezone.utc)
DAY = timedelta(days=1)
US = timedelta(microseconds=1)
FIX = (
    "Deploy code that replays this journal (or restore the previous code, or branch with "
    "ctx.patched()), then retry the instance."
)

MakeInstance = Callable[..., Instance]
MakeEvent = Callable[..., Event]


def fire_time(codec: Any, event: Event) -> Any:
    """The fire time a timer event journals (decoded as history views decode a step's input)."""
    assert event.input is not None
    [[fire_at], kwargs] = codec.loads(event.input)
    assert kwargs == {}
    return fire_at


def commit(journal: list[Event], decision: Decision) -> list[Event]:
    """What the runtime commits: fired timers replace their events, new events append."""
    fired = {e.seq: e for e in decision.fired}
    return [fired.get(e.seq, e) for e in journal] + list(decision.new_events)


def step_done(journal: list[Event], seq: int, output: Any, at: datetime) -> list[Event]:
    """A worker journals the result of step ``seq``."""
    done = dataclasses.replace(
        journal[seq], state=State.COMPLETED, output=json.dumps(output), completed_at=at
    )
    return [*journal[:seq], done, *journal[seq + 1 :]]


def assert_waits(decision: Decision, wake_at: datetime) -> None:
    """Blocked on a timer: RUNNING, nothing new, nothing fired, a pass wanted at ``wake_at``."""
    assert decision.status is Status.RUNNING
    assert decision.new_events == []
    assert decision.steps == []
    assert decision.fired == []
    assert decision.wake_at == wake_at


async def nap(ctx: WorkflowContext) -> str:
    await ctx.sleep(timedelta(days=30))
    return await ctx.step("after")  # type: ignore[no-any-return]


# -- issuing, waiting, firing -------------------------------------------------------------


def test_first_pass_issues_a_timer_and_waits(instance: MakeInstance, codec: Any) -> None:
    decision = replay(nap, instance(), [], codec=codec, now=NOW)

    assert decision.status is Status.RUNNING
    [event] = decision.new_events
    assert event == Event(
        seq=0,
        kind=Kind.TIMER,
        name="sleep",
        input=event.input,
        state=State.SCHEDULED,
        scheduled_at=NOW,
    )
    assert fire_time(codec, event) == NOW + 30 * DAY
    assert decision.wake_at == NOW + 30 * DAY
    assert decision.steps == []
    assert decision.fired == []
    assert decision.output is None
    assert decision.failure is None


def test_pass_before_the_fire_time_waits_again(
    instance: MakeInstance, codec: Any, timer: MakeEvent
) -> None:
    fire_at = NOW + 30 * DAY
    journal = [timer(0, fire_at, at=NOW)]

    assert_waits(replay(nap, instance(), journal, codec=codec, now=fire_at - US), fire_at)
    assert_waits(replay(nap, instance(), journal, codec=codec, now=NOW), fire_at)


def test_pass_at_the_fire_time_fires_it_and_goes_on(
    instance: MakeInstance, codec: Any, timer: MakeEvent
) -> None:
    fire_at = NOW + 30 * DAY
    pending = timer(0, fire_at, at=NOW)

    decision = replay(nap, instance(), [pending], codec=codec, now=fire_at)

    assert decision.status is Status.RUNNING
    assert decision.fired == [
        dataclasses.replace(pending, state=State.COMPLETED, completed_at=fire_at)
    ]
    assert pending.state is State.SCHEDULED  # the journal handed in is not modified
    assert [(e.seq, e.kind, e.name, e.scheduled_at) for e in decision.new_events] == [
        (1, Kind.STEP, "after", fire_at)
    ]
    assert decision.steps == [ScheduleStep(1, "after", (), {})]
    assert decision.wake_at is None  # now waiting on a step


def test_timer_fired_in_the_pass_that_completes_the_workflow_is_in_its_decision(
    instance: MakeInstance, codec: Any, timer: MakeEvent
) -> None:
    async def wf(ctx: WorkflowContext) -> str:
        await ctx.sleep(60)
        return "done"

    pending = timer(0, NOW + timedelta(seconds=60), at=NOW)
    later = NOW + timedelta(minutes=5)

    decision = replay(wf, instance(), [pending], codec=codec, now=later)

    assert decision.status is Status.COMPLETED
    assert decision.output == codec.dumps("done")
    assert decision.fired == [
        dataclasses.replace(pending, state=State.COMPLETED, completed_at=later)
    ]
    assert decision.new_events == []
    assert decision.wake_at is None


def test_timer_fired_in_the_pass_where_the_workflow_fails_is_in_its_decision(
    instance: MakeInstance, codec: Any, timer: MakeEvent
) -> None:
    async def wf(ctx: WorkflowContext) -> None:
        await ctx.sleep(60)
        raise LookupError("gone")

    pending = timer(0, NOW + timedelta(seconds=60), at=NOW)

    decision = replay(
        wf, instance(), [pending], codec=codec, now=NOW + DAY, failure_exceptions=(LookupError,)
    )

    assert decision.status is Status.FAILED
    assert decision.failure is not None
    assert (decision.failure.type, decision.failure.message) == ("LookupError", "gone")
    assert decision.fired == [
        dataclasses.replace(pending, state=State.COMPLETED, completed_at=NOW + DAY)
    ]
    assert decision.wake_at is None

    # Unlisted, the same exception is a bug: the pass parks and the timer fires again later.
    parked = replay(wf, instance(), [pending], codec=codec, now=NOW + DAY)
    assert parked.status is Status.STUCK
    assert (parked.fired, parked.new_events) == ([], [])


def test_stuck_pass_after_a_timer_fired_carries_nothing(
    instance: MakeInstance, codec: Any, timer: MakeEvent
) -> None:
    async def wf(ctx: WorkflowContext) -> None:
        await ctx.sleep(60)
        await ctx.run(int)
        await asyncio.sleep(0)

    journal = [timer(0, NOW + timedelta(seconds=60), at=NOW)]

    decision = replay(wf, instance(), journal, codec=codec, now=NOW + DAY)

    assert decision.status is Status.STUCK
    assert decision.failure is not None
    assert decision.failure.type == "InvalidAwait"
    assert (decision.new_events, decision.steps, decision.fired) == ([], [], [])
    assert decision.wake_at is None


def test_journal_holding_the_fired_timer_just_goes_on(
    instance: MakeInstance, codec: Any, timer: MakeEvent
) -> None:
    fire_at = NOW + 30 * DAY
    journal = [timer(0, fire_at, State.COMPLETED, at=NOW, fired_at=fire_at + DAY)]

    decision = replay(nap, instance(), journal, codec=codec, now=fire_at + 2 * DAY)

    assert decision.status is Status.RUNNING
    assert decision.fired == []
    assert decision.steps == [ScheduleStep(1, "after", (), {})]
    assert decision.wake_at is None


def test_timer_event_with_a_plain_string_kind_fires(
    instance: MakeInstance, codec: Any, timer: MakeEvent
) -> None:
    # a store may hand back the kind as a plain string
    pending = dataclasses.replace(timer(0, NOW, at=NOW - DAY), kind="timer")  # type: ignore[arg-type]

    decision = replay(nap, instance(), [pending], codec=codec, now=NOW)

    assert [e.seq for e in decision.fired] == [0]
    assert decision.steps == [ScheduleStep(1, "after", (), {})]


# -- ctx.now() around timers --------------------------------------------------------------


async def sleepy_clock(ctx: WorkflowContext) -> str:
    await ctx.sleep(timedelta(days=30))
    after = ctx.now()
    await ctx.step("a")
    return after.isoformat()


def test_now_after_a_timer_is_at_or_past_its_fire_time(
    instance: MakeInstance, codec: Any, timer: MakeEvent
) -> None:
    fire_at = NOW + 30 * DAY
    late = fire_at + timedelta(hours=3)

    first = replay(sleepy_clock, instance(), [], codec=codec, now=NOW)
    journal = commit([], first)
    fired = replay(sleepy_clock, instance(), journal, codec=codec, now=late)
    journal = step_done(commit(journal, fired), 1, None, late)
    done = replay(sleepy_clock, instance(), journal, codec=codec, now=late + DAY)

    assert first.wake_at == fire_at
    assert fired.new_events[0].scheduled_at == late
    assert done.status is Status.COMPLETED
    assert done.output is not None
    assert datetime.fromisoformat(codec.loads(done.output)) == late >= fire_at


def test_now_after_a_timer_fired_exactly_on_time_is_its_fire_time(
    instance: MakeInstance, codec: Any
) -> None:
    async def wf(ctx: WorkflowContext) -> str:
        await ctx.sleep(timedelta(days=30))
        return ctx.now().isoformat()

    journal = commit([], replay(wf, instance(), [], codec=codec, now=NOW))
    decision = replay(wf, instance(), journal, codec=codec, now=NOW + 30 * DAY)

    assert decision.output is not None
    assert datetime.fromisoformat(codec.loads(decision.output)) == NOW + 30 * DAY


# -- the seed's Schedule program ----------------------------------------------------------


async def schedule(ctx: WorkflowContext, email: str) -> str:
    await ctx.step("mail.send_welcome", email)
    await ctx.sleep(timedelta(days=30))
    await ctx.step("mail.send_congrats", email, "month")
    await ctx.sleep(timedelta(days=335))
    await ctx.step("mail.send_congrats", email, "year")
    return "done"


def test_schedule_program_pass_by_pass(instance: MakeInstance, codec: Any) -> None:
    inst = instance("ann@example.com")

    def run(journal: list[Event], now: datetime) -> Decision:
        return replay(schedule, inst, journal, codec=codec, now=now)

    # pass 0 (start): the welcome mail is sent
    created = NOW
    d0 = run([], created)
    assert d0.status is Status.RUNNING
    assert d0.steps == [ScheduleStep(0, "mail.send_welcome", ("ann@example.com",), {})]
    assert (d0.fired, d0.wake_at) == ([], None)
    journal = commit([], d0)

    # the step ran; pass 1 sets the 30-day timer from this pass's time
    p1 = created + timedelta(seconds=5)
    journal = step_done(journal, 0, None, p1)
    d1 = run(journal, p1)
    fire1 = p1 + timedelta(days=30)
    [t1] = d1.new_events
    assert (t1.seq, t1.kind, t1.name, t1.state, t1.scheduled_at) == (
        1,
        Kind.TIMER,
        "sleep",
        State.SCHEDULED,
        p1,
    )
    assert fire_time(codec, t1) == fire1 == datetime(2024, 3, 31, 9, 30, 5, tzinfo=timezone.utc)
    assert (d1.status, d1.steps, d1.fired, d1.wake_at) == (Status.RUNNING, [], [], fire1)
    journal = commit(journal, d1)

    # an early resume (a duplicate message, a tick) re-arms without touching the journal
    assert_waits(run(journal, p1 + DAY), fire1)
    assert_waits(run(journal, fire1 - US), fire1)

    # the tick comes a little late: the timer fires and the month mail is sent in one pass
    p2 = fire1 + timedelta(seconds=2)
    d2 = run(journal, p2)
    assert d2.status is Status.RUNNING
    assert d2.fired == [dataclasses.replace(t1, state=State.COMPLETED, completed_at=p2)]
    assert [(e.seq, e.kind, e.scheduled_at) for e in d2.new_events] == [(2, Kind.STEP, p2)]
    assert d2.steps == [ScheduleStep(2, "mail.send_congrats", ("ann@example.com", "month"), {})]
    assert d2.wake_at is None
    journal = commit(journal, d2)
    assert journal[1].state is State.COMPLETED

    # the mail was sent; pass 3 sets the 335-day timer from ctx.now() (this pass's time)
    p3 = p2 + timedelta(minutes=1)
    journal = step_done(journal, 2, None, p3)
    d3 = run(journal, p3)
    fire2 = p3 + timedelta(days=335)
    [t3] = d3.new_events
    assert (t3.seq, t3.kind, t3.state, t3.scheduled_at) == (3, Kind.TIMER, State.SCHEDULED, p3)
    assert fire_time(codec, t3) == fire2 == datetime(2025, 3, 1, 9, 31, 7, tzinfo=timezone.utc)
    assert (d3.status, d3.steps, d3.fired, d3.wake_at) == (Status.RUNNING, [], [], fire2)
    journal = commit(journal, d3)

    assert_waits(run(journal, fire2 - US), fire2)

    # exactly on time: it fires, the year mail goes out
    d4 = run(journal, fire2)
    assert d4.fired == [dataclasses.replace(t3, state=State.COMPLETED, completed_at=fire2)]
    assert d4.steps == [ScheduleStep(4, "mail.send_congrats", ("ann@example.com", "year"), {})]
    assert (d4.status, d4.wake_at) == (Status.RUNNING, None)
    journal = commit(journal, d4)

    # last mail sent: done, nothing else fired or pending
    p5 = fire2 + timedelta(seconds=3)
    journal = step_done(journal, 4, None, p5)
    d5 = run(journal, p5)
    assert (d5.status, d5.output) == (Status.COMPLETED, codec.dumps("done"))
    assert (d5.new_events, d5.steps, d5.fired, d5.wake_at) == ([], [], [], None)
    assert [(e.seq, e.kind, e.state) for e in journal] == [
        (0, Kind.STEP, State.COMPLETED),
        (1, Kind.TIMER, State.COMPLETED),
        (2, Kind.STEP, State.COMPLETED),
        (3, Kind.TIMER, State.COMPLETED),
        (4, Kind.STEP, State.COMPLETED),
    ]


# -- timers that fire at once -------------------------------------------------------------


def test_sleep_until_a_past_time_fires_in_the_same_pass(instance: MakeInstance, codec: Any) -> None:
    when = NOW - DAY

    async def wf(ctx: WorkflowContext) -> str:
        await ctx.sleep_until(when)
        return await ctx.step("next")  # type: ignore[no-any-return]

    decision = replay(wf, instance(), [], codec=codec, now=NOW)

    assert decision.status is Status.RUNNING
    timer_event, step_event = decision.new_events
    assert (timer_event.kind, timer_event.name, timer_event.state) == (
        Kind.TIMER,
        "sleep",
        State.COMPLETED,
    )
    assert (timer_event.scheduled_at, timer_event.completed_at) == (NOW, NOW)
    assert timer_event.output is None
    assert fire_time(codec, timer_event) == when
    assert step_event.seq == 1
    assert decision.steps == [ScheduleStep(1, "next", (), {})]
    assert (decision.fired, decision.wake_at) == ([], None)


@pytest.mark.parametrize("delay", [0, 0.0, timedelta(0)])
def test_zero_sleep_fires_in_the_same_pass(
    instance: MakeInstance, codec: Any, delay: float | timedelta
) -> None:
    async def wf(ctx: WorkflowContext) -> str:
        result = await ctx.sleep(delay)  # type: ignore[func-returns-value]
        return f"slept, got {result!r}"

    decision = replay(wf, instance(), [], codec=codec, now=NOW)

    assert decision.status is Status.COMPLETED
    assert decision.output == codec.dumps("slept, got None")
    [event] = decision.new_events
    assert (event.kind, event.state, event.completed_at) == (Kind.TIMER, State.COMPLETED, NOW)
    assert fire_time(codec, event) == NOW
    assert (decision.fired, decision.wake_at) == ([], None)


def test_sleep_until_now_fires_at_once(instance: MakeInstance, codec: Any) -> None:
    async def wf(ctx: WorkflowContext) -> None:
        await ctx.sleep_until(ctx.now())

    decision = replay(wf, instance(), [], codec=codec, now=NOW)

    assert decision.status is Status.COMPLETED
    assert decision.new_events[0].state is State.COMPLETED


# -- the fire time ------------------------------------------------------------------------


def test_seconds_may_be_int_or_float(instance: MakeInstance, codec: Any) -> None:
    async def wf(ctx: WorkflowContext, seconds: float) -> None:
        await ctx.sleep(seconds)

    whole = replay(wf, instance(90), [], codec=codec, now=NOW)
    fraction = replay(wf, instance(1.5), [], codec=codec, now=NOW)

    assert whole.wake_at == NOW + timedelta(seconds=90)
    assert fraction.wake_at == NOW + timedelta(seconds=1.5)
    assert fire_time(codec, fraction.new_events[0]) == NOW + timedelta(milliseconds=1500)


def test_sleep_until_an_aware_time_in_another_zone_is_journaled_in_utc(
    instance: MakeInstance, codec: Any
) -> None:
    paris = timezone(timedelta(hours=1))
    when = datetime(2024, 12, 24, 18, 0, tzinfo=paris)

    async def wf(ctx: WorkflowContext) -> None:
        await ctx.sleep_until(when)

    decision = replay(wf, instance(), [], codec=codec, now=NOW)

    journaled = fire_time(codec, decision.new_events[0])
    assert journaled == when
    assert journaled.utcoffset() == timedelta(0)
    assert decision.wake_at == datetime(2024, 12, 24, 17, 0, tzinfo=timezone.utc)


def test_changed_delay_does_not_move_a_timer_already_set(
    instance: MakeInstance, codec: Any, timer: MakeEvent
) -> None:
    async def wf(ctx: WorkflowContext) -> str:
        await ctx.sleep(timedelta(days=1))  # was 30 days when the timer was set
        return "woke"

    fire_at = NOW + 30 * DAY
    journal = [timer(0, fire_at, at=NOW)]

    assert_waits(replay(wf, instance(), journal, codec=codec, now=NOW + 2 * DAY), fire_at)
    decision = replay(wf, instance(), journal, codec=codec, now=fire_at)
    assert decision.status is Status.COMPLETED
    assert [e.completed_at for e in decision.fired] == [fire_at]


def test_sleep_and_sleep_until_are_the_same_command(
    instance: MakeInstance, codec: Any, timer: MakeEvent
) -> None:
    async def wf(ctx: WorkflowContext) -> str:
        await ctx.sleep_until(datetime(2030, 1, 1, tzinfo=timezone.utc))
        return "woke"

    fire_at = NOW + 30 * DAY
    journal = [timer(0, fire_at, at=NOW)]  # set by ctx.sleep(timedelta(days=30))

    assert_waits(replay(wf, instance(), journal, codec=codec, now=NOW + DAY), fire_at)
    assert replay(wf, instance(), journal, codec=codec, now=fire_at).status is Status.COMPLETED


def test_timer_set_after_one_that_fired_in_the_same_pass(
    instance: MakeInstance, codec: Any
) -> None:
    async def wf(ctx: WorkflowContext) -> None:
        await ctx.sleep(0)
        await ctx.sleep(timedelta(hours=1))

    decision = replay(wf, instance(), [], codec=codec, now=NOW)

    assert [(e.seq, e.state) for e in decision.new_events] == [
        (0, State.COMPLETED),
        (1, State.SCHEDULED),
    ]
    assert decision.wake_at == NOW + timedelta(hours=1)


def test_codec_without_datetimes_journals_the_fire_time_as_iso_text(plain_codec: Any) -> None:
    plain = plain_codec

    async def wf(ctx: WorkflowContext) -> str:
        await ctx.sleep(timedelta(hours=2))
        return "woke"

    inst = Instance(
        id="wf-1",
        workflow="wf",
        status=Status.RUNNING,
        input=plain.dumps([[], {}]),
        serializer="json",
        created_at=NOW,
        updated_at=NOW,
    )
    first = replay(wf, inst, [], codec=plain, now=NOW)
    fire_at = NOW + timedelta(hours=2)

    assert fire_time(plain, first.new_events[0]) == fire_at.isoformat()
    assert first.wake_at == fire_at
    journal = commit([], first)
    assert_waits(replay(wf, inst, journal, codec=plain, now=fire_at - US), fire_at)
    assert replay(wf, inst, journal, codec=plain, now=fire_at).status is Status.COMPLETED


def test_undecodable_fire_time_is_stuck(
    instance: MakeInstance, codec: Any, timer: MakeEvent
) -> None:
    bad = dataclasses.replace(timer(0, NOW, at=NOW), input=codec.dumps([["tomorrow"], {}]))

    decision = replay(nap, instance(), [bad], codec=codec, now=NOW)

    assert decision.status is Status.STUCK
    assert decision.failure is not None
    assert decision.failure.type == "SerializationError"
    assert decision.failure.message.startswith(
        "cannot decode the fire time of the timer at seq 0 of workflow 'wf' (id 'wf-1')"
    )
    assert (decision.new_events, decision.fired, decision.wake_at) == ([], [], None)


# -- errors at the call site --------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda ctx: ctx.sleep(-1), ValueError, "ctx.sleep() needs a delay >= 0, got -1"),
        (lambda ctx: ctx.sleep(-0.5), ValueError, "needs a delay >= 0"),
        (lambda ctx: ctx.sleep(timedelta(seconds=-1)), ValueError, "needs a delay >= 0"),
        (lambda ctx: ctx.sleep(float("inf")), ValueError, "needs a finite delay"),
        (lambda ctx: ctx.sleep(float("nan")), ValueError, "needs a finite delay"),
        (lambda ctx: ctx.sleep(10**12), ValueError, "is too long"),
        (lambda ctx: ctx.sleep(timedelta.max), ValueError, "is too long"),
        (lambda ctx: ctx.sleep("10"), TypeError, "a datetime.timedelta or a number of seconds"),
        (lambda ctx: ctx.sleep(True), TypeError, "got 'bool'"),
        (lambda ctx: ctx.sleep(None), TypeError, "got 'NoneType'"),
        (lambda ctx: ctx.sleep(NOW), TypeError, "use ctx.sleep_until() for a datetime"),
        (
            lambda ctx: ctx.sleep_until(datetime(2030, 1, 1)),
            TypeError,
            "ctx.sleep_until() got the naive datetime 2030-01-01T00:00:00; pass an aware UTC "
            "datetime",
        ),
        (lambda ctx: ctx.sleep_until(date(2030, 1, 1)), TypeError, "takes a datetime, got 'date'"),
        (lambda ctx: ctx.sleep_until(3600), TypeError, "use ctx.sleep() for a delay"),
    ],
)
def test_bad_timer_arguments_raise_at_the_call_site(
    instance: MakeInstance,
    codec: Any,
    call: Callable[[WorkflowContext], Any],
    error: type[Exception],
    message: str,
) -> None:
    async def wf(ctx: WorkflowContext) -> str:
        try:
            await call(ctx)
        except error as e:
            return str(e)
        return "not raised"

    decision = replay(wf, instance(), [], codec=codec, now=NOW)

    assert decision.status is Status.COMPLETED
    assert decision.output is not None
    assert message in codec.loads(decision.output)
    assert (decision.new_events, decision.steps, decision.fired) == ([], [], [])


def test_uncaught_timer_argument_error_parks_the_workflow(
    instance: MakeInstance, codec: Any
) -> None:
    async def wf(ctx: WorkflowContext) -> None:
        await ctx.sleep(-5)

    decision = replay(wf, instance(), [], codec=codec, now=NOW)

    assert decision.status is Status.STUCK
    assert decision.failure is not None
    assert decision.failure.type == "ValueError"
    assert decision.new_events == []


def test_awaiting_a_timer_twice_is_an_error(instance: MakeInstance, codec: Any) -> None:
    async def wf(ctx: WorkflowContext) -> str:
        pause = ctx.sleep(0)
        await pause
        try:
            await pause
        except RuntimeError as e:
            return str(e)
        return "not raised"

    decision = replay(wf, instance(), [], codec=codec, now=NOW)

    assert decision.output is not None
    assert "timer 'sleep' was already awaited; call ctx.sleep(...) again" in codec.loads(
        decision.output
    )


# -- non-determinism ----------------------------------------------------------------------


def test_timer_where_the_journal_holds_a_step_is_stuck(
    instance: MakeInstance, codec: Any, event: MakeEvent
) -> None:
    journal = [event(0, "bank.start_transfer", State.SCHEDULED)]

    decision = replay(nap, instance(), journal, codec=codec, now=NOW)

    assert decision.status is Status.STUCK
    assert decision.failure == Failure(
        "NonDeterminismError",
        "workflow 'wf' (id 'wf-1') does not replay its journal: at seq 0 the journal holds "
        "step 'bank.start_transfer' but the code asked for timer 'sleep'. " + FIX,
    )
    assert (decision.new_events, decision.steps, decision.fired, decision.wake_at) == (
        [],
        [],
        [],
        None,
    )


def test_step_where_the_journal_holds_a_timer_is_stuck(
    instance: MakeInstance, codec: Any, timer: MakeEvent
) -> None:
    async def wf(ctx: WorkflowContext) -> None:
        await ctx.step("mail.send")

    journal = [timer(0, NOW - DAY, at=NOW - 2 * DAY)]  # due: it must not fire either

    decision = replay(wf, instance(), journal, codec=codec, now=NOW)

    assert decision.status is Status.STUCK
    assert decision.failure is not None
    assert (
        "at seq 0 the journal holds timer 'sleep' but the code asked for step 'mail.send'"
        in decision.failure.message
    )
    assert decision.fired == []


def test_workflow_ending_before_a_journaled_timer_is_stuck(
    instance: MakeInstance, codec: Any, timer: MakeEvent
) -> None:
    async def wf(ctx: WorkflowContext) -> str:
        return "no sleep any more"

    decision = replay(wf, instance(), [timer(0, NOW, at=NOW)], codec=codec, now=NOW)

    assert decision.status is Status.STUCK
    assert decision.failure is not None
    assert "at seq 0 the journal holds timer 'sleep' that the code no longer asks for" in (
        decision.failure.message
    )
