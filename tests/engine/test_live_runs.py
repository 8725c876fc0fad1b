"""Sticky execution: a kept coroutine continued pass after pass decides exactly what a
full replay of the same journal decides.

Each scenario runs a workflow pass by pass as the runtime would (commit the decision,
then settle one pending event: a step's result or failure, a signal, a cancel request,
the clock moving past a timer), and at every pass compares ``LiveRun.resume`` with
``replay`` over the same journal, inbox and time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pytest
from conftest import T0, JsonCodec  # type: ignore[import-not-found]

from celery_durable.engine import WorkflowContext
from celery_durable.engine.commands import Decision
from celery_durable.engine.journal import Event, Failure, Instance, Kind, Signal, State, Status
from celery_durable.engine.live import LiveRun, replay_live
from celery_durable.engine.replay import replay
from celery_durable.errors import StepFailed, WorkflowCancelled


@dataclass
class Task:
    name: str


charge = Task("charge")
refund = Task("refund")
ship = Task("ship")


@dataclass
class World:
    """What happens between passes: step outcomes, signals and cancels by pass number."""

    fail: set[str] = field(default_factory=set)
    """Step names that fail (StepFailed of type "Declined")."""
    signals: dict[int, list[tuple[str, Any]]] = field(default_factory=dict)
    cancel_at: int | None = None
    step: timedelta = timedelta(seconds=30)
    """How far the clock moves between passes."""


def _apply(events: list[Event], decision: Decision) -> list[Event]:
    journal = list(events)
    for done in decision.fired:
        journal[done.seq] = done
    for new in decision.new_events:
        if new.seq < len(journal):
            journal[new.seq] = new
        else:
            journal.append(new)
    return journal


def _settle(events: list[Event], codec: JsonCodec, world: World, now: datetime) -> list[Event]:
    """Journal the outcome of the oldest pending step (as its worker would)."""
    journal = list(events)
    for event in journal:
        if event.kind is Kind.STEP and not event.state.is_final:
            args, _ = codec.loads(event.input or "[[], {}]")
            if event.name in world.fail:
                outcome = dataclasses.replace(
                    event,
                    state=State.FAILED,
                    failure=Failure("Declined", f"{event.name} declined"),
                    completed_at=now,
                )
            else:
                outcome = dataclasses.replace(
                    event,
                    state=State.COMPLETED,
                    output=codec.dumps([event.name, *args]),
                    completed_at=now,
                )
            journal[event.seq] = outcome
            break
    return journal


def _same(live: Decision, full: Decision, where: str) -> None:
    assert live == full, f"{where}: continued {live!r}\n  replayed {full!r}"


def run_both(workflow: Callable[..., Any], world: World, *args: Any) -> list[Decision]:
    """Drive ``workflow`` to its end both ways; returns the decisions (all checked equal)."""
    codec = JsonCodec()
    instance = Instance(
        id="wf-live",
        workflow="wf",
        status=Status.RUNNING,
        input=codec.dumps([list(args), {}]),
        serializer=codec.name,
        created_at=T0,
        updated_at=T0,
    )
    events: list[Event] = []
    inbox: list[Signal] = []
    next_signal = 1
    cancel = False
    now = T0
    live: LiveRun | None = None
    decisions = []
    continued = 0
    for number in range(60):
        for name, payload in world.signals.get(number, []):
            inbox.append(Signal(next_signal, name, codec.dumps(payload), now))
            next_signal += 1
        cancel = cancel or world.cancel_at == number
        common: dict[str, Any] = {
            "codec": codec,
            "now": now,
            "resolve_step": lambda task: task.name,
        }
        full = replay(
            workflow, instance, list(events), signals=list(inbox), **common, cancel_requested=cancel
        )
        decision = None
        if live is not None:
            decision = live.resume(
                instance, list(events), now=now, signals=list(inbox), cancel_requested=cancel
            )
            continued += decision is not None
            if decision is None or not live.waiting:
                live = None
        if decision is None:
            if live is not None:
                live.close()
            decision, live = replay_live(
                workflow,
                instance,
                list(events),
                signals=list(inbox),
                cancel_requested=cancel,
                **common,
            )
        _same(decision, full, f"pass {number}")
        decisions.append(decision)
        if decision.status is not Status.RUNNING or decision.restart_input is not None:
            assert live is None
            break
        taken = {signal_id for signal_id, _ in decision.consumed}
        inbox = [signal for signal in inbox if signal.id not in taken]
        events = _apply(events, decision)
        if any(e.kind == Kind.CANCEL for e in decision.new_events):
            cancel = False  # journaled: the request is spent (as the commit clears it)
        now += world.step
        events = _settle(events, codec, world, now)
    else:
        pytest.fail("the workflow did not end in 60 passes")
    assert continued >= len(decisions) - 2, "the kept coroutine was not continued"
    return decisions


async def sequence(ctx: WorkflowContext, n: int) -> list[Any]:
    results = []
    for i in range(n):
        results.append(await ctx.step(charge, i))
        ctx.set_status({"done": i + 1})
    return results


async def fan_out(ctx: WorkflowContext) -> Any:
    first = await ctx.step(charge, 0)
    both = await ctx.gather(ctx.step(charge, 1), ctx.step(ship, 2))
    local = await ctx.run(lambda: 7)
    return [first, both, local]


async def race(ctx: WorkflowContext) -> Any:
    winner = await ctx.first(ctx.step(charge, 1), ctx.sleep(timedelta(minutes=10)))
    await ctx.sleep(timedelta(seconds=45))
    stamp = ctx.now().isoformat()
    return [winner, stamp, str(ctx.uuid4())]


async def signals(ctx: WorkflowContext) -> Any:
    approved = await ctx.wait_signal("approve", timeout=timedelta(minutes=5))
    try:
        late = await ctx.wait_signal("late", timeout=timedelta(seconds=50))
    except Exception as exc:  # SignalTimeout
        late = type(exc).__name__
    more = await ctx.first(ctx.wait_signal("a"), ctx.wait_signal("b"))
    return [approved, late, more, await ctx.step(ship, approved)]


async def saga(ctx: WorkflowContext, n: int) -> Any:
    async with ctx.saga() as s:
        for i in range(n):
            await ctx.step(charge, i)
            s.compensate(refund, i)
        await ctx.step(ship, n)
    return "shipped"


async def cancellable(ctx: WorkflowContext) -> Any:
    done = []
    try:
        for i in range(6):
            done.append(await ctx.step(charge, i))
    except WorkflowCancelled:
        await ctx.step(refund, len(done))
        raise
    return done


async def restarts(ctx: WorkflowContext, left: int) -> Any:
    await ctx.step(charge, left)
    if left:
        ctx.continue_as_new(left - 1)
    return "end"


async def caught(ctx: WorkflowContext) -> Any:
    try:
        await ctx.step(ship, 1)
    except StepFailed as failed:
        return await ctx.step(refund, failed.type)
    return "unreachable"


async def patched_twice(ctx: WorkflowContext) -> str:
    await ctx.step(charge, 1)
    if ctx.patched("ship-first"):
        await ctx.step(ship, 1)
    await ctx.sleep(timedelta(seconds=10))
    ctx.deprecate_patch("old-id")
    return "shipped" if ctx.patched("ship-first") else "not shipped"


def test_patches_journaled_by_a_continued_pass() -> None:
    decisions = run_both(patched_twice, World())
    assert decisions[-1].status is Status.COMPLETED
    assert decisions[-1].output == '"shipped"'
    markers = [e for d in decisions for e in d.new_events if e.kind is Kind.PATCH]
    assert [e.name for e in markers] == ["ship-first"]


def test_a_sequence_of_steps() -> None:
    decisions = run_both(sequence, World(), 8)
    assert decisions[-1].status is Status.COMPLETED


def test_gather_and_a_local_run() -> None:
    assert run_both(fan_out, World())[-1].status is Status.COMPLETED


def test_a_race_and_timers() -> None:
    assert run_both(race, World(step=timedelta(minutes=4)))[-1].status is Status.COMPLETED


def test_signals_timeouts_and_a_signal_race() -> None:
    world = World(signals={2: [("approve", "yes")], 5: [("b", 2), ("a", 1)]})
    assert run_both(signals, world)[-1].status is Status.COMPLETED


def test_a_saga_that_compensates() -> None:
    decisions = run_both(saga, World(fail={"ship"}), 4)
    assert decisions[-1].status is Status.FAILED
    refunds = [s for d in decisions for s in d.steps if s.name == "refund"]
    assert [s.args for s in refunds] == [(3,), (2,), (1,), (0,)]


@pytest.mark.parametrize("at", [0, 1, 3])
def test_a_cancel_between_passes(at: int) -> None:
    assert run_both(cancellable, World(cancel_at=at))[-1].status is Status.CANCELLED


def test_continue_as_new_ends_the_kept_run() -> None:
    assert run_both(restarts, World(), 2)[-1].restart_input is not None


def test_a_caught_step_failure() -> None:
    assert run_both(caught, World(fail={"ship"}))[-1].status is Status.COMPLETED


def test_a_journal_that_is_not_the_one_suspended_on_is_refused(codec: JsonCodec) -> None:
    instance = Instance(
        id="wf-live",
        workflow="wf",
        status=Status.RUNNING,
        input=codec.dumps([[3], {}]),
        serializer=codec.name,
        created_at=T0,
        updated_at=T0,
    )
    decision, live = replay_live(
        sequence, instance, [], codec=codec, now=T0, resolve_step=lambda t: t.name
    )
    assert live is not None
    assert live.waiting
    assert live.length == 1
    # A journal that grew elsewhere (another process's passes): not continued, closed.
    longer = [*decision.new_events, *decision.new_events]
    assert live.resume(instance, longer, now=T0) is None
    assert not live.waiting
