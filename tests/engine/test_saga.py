"""ctx.saga(): compensations registered as the workflow goes, run in reverse on failure."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import pytest

from celery_durable.engine import WorkflowContext, replay
from celery_durable.engine.commands import Decision, ScheduleStep
from celery_durable.engine.journal import Event, Failure, Instance, Kind, State, Status
from celery_durable.errors import SerializationError, StepFailed, WorkflowCancelled

NOW = datetime(2024, 3, 1, 9, 30, tzinfo=timezone.utc)
TRANSFER_FAILED = Failure("TransferFailed", "insufficient funds", "Traceback (remote) ...")
ROLLBACK_FAILED = Failure("RollbackFailed", "ledger offline")

MakeInstance = Callable[..., Instance]


@dataclass
class Task:
    """Stands in for a @durable.step task: the engine only reads ``name``."""

    name: str


start_transfer = Task("bank.start_transfer")
rollback_transfer = Task("bank.rollback_transfer")


def commit(journal: list[Event], decision: Decision) -> list[Event]:
    return [*journal, *decision.new_events]


def done(journal: list[Event], seq: int, output: Any = None) -> list[Event]:
    event = dataclasses.replace(
        journal[seq], state=State.COMPLETED, output=json.dumps(output), completed_at=NOW
    )
    return [*journal[:seq], event, *journal[seq + 1 :]]


def failed(journal: list[Event], seq: int, failure: Failure) -> list[Event]:
    event = dataclasses.replace(journal[seq], state=State.FAILED, failure=failure, completed_at=NOW)
    return [*journal[:seq], event, *journal[seq + 1 :]]


def drive(
    wf: Any,
    inst: Instance,
    codec: Any,
    outcomes: dict[int, Any],
    failure_exceptions: tuple[type[BaseException], ...] = (),
) -> tuple[Decision, list[Event]]:
    """Run passes until the workflow ends, journaling ``outcomes[seq]`` for each step sent
    (a Failure fails it, anything else is its result)."""
    journal: list[Event] = []
    for _ in range(20):
        decision = replay(
            wf, inst, journal, codec=codec, now=NOW, failure_exceptions=failure_exceptions
        )
        journal = commit(journal, decision)
        if decision.status is not Status.RUNNING:
            return decision, journal
        assert decision.steps, "blocked without anything to wait for"
        for step in decision.steps:
            outcome = outcomes.get(step.seq)
            if isinstance(outcome, Failure):
                journal = failed(journal, step.seq, outcome)
            else:
                journal = done(journal, step.seq, outcome)
    raise AssertionError("the workflow did not end")


def sent(journal: list[Event], codec: Any) -> list[tuple[int, str, Any, State]]:
    return [(e.seq, e.name, codec.loads(e.input)[0], e.state) for e in journal]


# -- the seed's money transfer, as a saga -------------------------------------------------


async def money_transfer(ctx: WorkflowContext, src: str, dst: str, amount: int) -> list[str]:
    async with ctx.saga() as saga:
        src_tran = await ctx.step(start_transfer, src, -amount)
        saga.compensate(rollback_transfer, src, src_tran)
        dst_tran = await ctx.step(start_transfer, dst, +amount)
        saga.compensate(rollback_transfer, dst, dst_tran)
        return [src_tran, dst_tran]


def test_transfer_failure_rolls_back_the_first_booking_then_fails(
    instance: MakeInstance, codec: Any
) -> None:
    inst = instance("alice", "bob", 100)
    alice, bob = '[["alice", -100], {}]', '[["bob", 100], {}]'
    journal = [Event(0, Kind.STEP, "bank.start_transfer", alice, State.COMPLETED, NOW, '"t-1"')]
    journal.append(
        Event(1, Kind.STEP, "bank.start_transfer", bob, State.FAILED, NOW, None, TRANSFER_FAILED)
    )

    # the second booking failed: the compensation of the first is sent, nothing else
    decision = replay(money_transfer, inst, journal, codec=codec, now=NOW)
    assert decision.status is Status.RUNNING
    assert decision.steps == [ScheduleStep(2, "bank.rollback_transfer", ("alice", "t-1"), {})]
    assert [(e.seq, e.kind, e.state) for e in decision.new_events] == [
        (2, Kind.STEP, State.SCHEDULED)
    ]

    # while it runs, the workflow waits (and its exception is not raised yet)
    journal = commit(journal, decision)
    waiting = replay(money_transfer, inst, journal, codec=codec, now=NOW)
    assert (waiting.status, waiting.new_events, waiting.steps) == (Status.RUNNING, [], [])

    # compensated: the original failure propagates; the instance fails with its type
    journal = done(journal, 2)
    decision = replay(money_transfer, inst, journal, codec=codec, now=NOW)
    assert decision.status is Status.FAILED
    assert decision.failure == TRANSFER_FAILED
    assert (decision.new_events, decision.steps) == ([], [])


def test_transfer_that_succeeds_compensates_nothing(instance: MakeInstance, codec: Any) -> None:
    decision, journal = drive(
        money_transfer, instance("alice", "bob", 100), codec, {0: "t-1", 1: "t-2"}
    )

    assert decision.status is Status.COMPLETED
    assert codec.loads(decision.output) == ["t-1", "t-2"]
    assert [e.name for e in journal] == ["bank.start_transfer", "bank.start_transfer"]


def test_failure_before_any_registration_compensates_nothing(
    instance: MakeInstance, codec: Any
) -> None:
    decision, journal = drive(
        money_transfer, instance("alice", "bob", 100), codec, {0: TRANSFER_FAILED}
    )

    assert decision.failure == TRANSFER_FAILED
    assert len(journal) == 1


# -- order, failures of compensations ------------------------------------------------------


async def three_bookings(ctx: WorkflowContext) -> str:
    try:
        async with ctx.saga() as saga:
            for account in ["a", "b", "c", "d"]:
                tran = await ctx.step("book", account)
                saga.compensate("unbook", account, tran=tran)
    except StepFailed as e:
        failures = getattr(e, "compensation_failures", [])
        return f"{e.type} after {len(failures)} failed compensation(s)"
    return "booked"


def test_compensations_run_in_reverse_order(instance: MakeInstance, codec: Any) -> None:
    outcomes = {0: "ta", 1: "tb", 2: "tc", 3: TRANSFER_FAILED}

    decision, journal = drive(three_bookings, instance(), codec, outcomes)

    assert codec.loads(decision.output) == "TransferFailed after 0 failed compensation(s)"
    assert sent(journal, codec)[3:] == [
        (3, "book", ["d"], State.FAILED),
        (4, "unbook", ["c"], State.COMPLETED),
        (5, "unbook", ["b"], State.COMPLETED),
        (6, "unbook", ["a"], State.COMPLETED),
    ]
    assert [codec.loads(e.input)[1] for e in journal[4:]] == [
        {"tran": "tc"},
        {"tran": "tb"},
        {"tran": "ta"},
    ]


def test_failed_compensation_is_journaled_and_the_others_still_run(
    instance: MakeInstance, codec: Any
) -> None:
    outcomes = {0: "ta", 1: "tb", 2: "tc", 3: TRANSFER_FAILED, 4: ROLLBACK_FAILED}

    decision, journal = drive(three_bookings, instance(), codec, outcomes)

    assert [(e.seq, e.name, e.state) for e in journal[4:]] == [
        (4, "unbook", State.FAILED),
        (5, "unbook", State.COMPLETED),
        (6, "unbook", State.COMPLETED),
    ]
    assert codec.loads(decision.output) == "TransferFailed after 1 failed compensation(s)"


async def fragile(ctx: WorkflowContext) -> None:
    async with ctx.saga() as saga:
        saga.compensate("undo-1")
        saga.compensate("undo-2")
        saga.compensate("undo-3")
        await ctx.step("do")


def test_original_exception_carries_the_compensation_failures(
    instance: MakeInstance, codec: Any
) -> None:
    seen: list[Any] = []

    async def wf(ctx: WorkflowContext) -> None:
        try:
            await fragile(ctx)
        except StepFailed as e:
            seen.append(e)

    outcomes = {0: TRANSFER_FAILED, 1: ROLLBACK_FAILED, 3: Failure("Gone", "already undone")}

    decision, journal = drive(wf, instance(), codec, outcomes)

    assert decision.status is Status.COMPLETED
    assert [(e.name, e.state) for e in journal] == [
        ("do", State.FAILED),
        ("undo-3", State.FAILED),
        ("undo-2", State.COMPLETED),
        ("undo-1", State.FAILED),
    ]
    [error] = seen
    assert (error.type, error.message) == ("TransferFailed", "insufficient funds")
    assert [(f.type, f.message) for f in error.compensation_failures] == [
        ("RollbackFailed", "ledger offline"),
        ("Gone", "already undone"),
    ]
    assert error.__notes__ == [
        "2 compensation step(s) failed while the saga rolled back:\n"
        "  - step 'undo-3': RollbackFailed: ledger offline\n"
        "  - step 'undo-1': Gone: already undone"
    ]


def test_uncaught_failure_reports_the_compensation_failures_in_its_details(
    instance: MakeInstance, codec: Any
) -> None:
    decision, _ = drive(fragile, instance(), codec, {0: TRANSFER_FAILED, 2: ROLLBACK_FAILED})

    assert decision.status is Status.FAILED
    assert decision.failure is not None
    assert (decision.failure.type, decision.failure.message) == (
        "TransferFailed",
        "insufficient funds",
    )
    assert decision.failure.details == (
        "Traceback (remote) ...\n\n"
        "1 compensation step(s) failed while the saga rolled back:\n"
        "  - step 'undo-2': RollbackFailed: ledger offline"
    )


def test_a_listed_failure_exception_triggers_compensation(
    instance: MakeInstance, codec: Any
) -> None:
    async def wf(ctx: WorkflowContext) -> None:
        async with ctx.saga() as saga:
            await ctx.step("reserve")
            saga.compensate("release")
            raise ValueError("bad address")

    decision, journal = drive(
        wf, instance(), codec, {1: ROLLBACK_FAILED}, failure_exceptions=(ValueError,)
    )

    assert [(e.name, e.state) for e in journal] == [
        ("reserve", State.COMPLETED),
        ("release", State.FAILED),
    ]
    assert decision.failure is not None
    assert (decision.failure.type, decision.failure.message) == ("ValueError", "bad address")
    assert decision.failure.details is not None
    assert decision.failure.details.count("step 'release': RollbackFailed: ledger offline") == 1


def test_a_cancellation_triggers_compensation(instance: MakeInstance, codec: Any) -> None:
    # WorkflowCancelled is not an Exception (user code does not swallow it), yet a
    # cancelled saga rolls back
    async def wf(ctx: WorkflowContext) -> str:
        try:
            async with ctx.saga() as saga:
                saga.compensate("release")
                raise WorkflowCancelled
        except WorkflowCancelled:
            return "cancelled"

    decision, journal = drive(wf, instance(), codec, {})

    assert codec.loads(decision.output) == "cancelled"
    assert [e.name for e in journal] == ["release"]


def test_closing_a_workflow_blocked_in_a_saga_runs_no_compensation(
    instance: MakeInstance, codec: Any
) -> None:
    # each pass that blocks closes the coroutine (GeneratorExit at its await): not a failure
    async def wf(ctx: WorkflowContext) -> None:
        async with ctx.saga() as saga:
            saga.compensate("release")
            await ctx.step("slow")

    decision = replay(wf, instance(), [], codec=codec, now=NOW)

    assert decision.status is Status.RUNNING
    assert decision.steps == [ScheduleStep(0, "slow", (), {})]
    assert [e.name for e in decision.new_events] == ["slow"]


def test_compensations_inside_gather_failures(instance: MakeInstance, codec: Any) -> None:
    async def wf(ctx: WorkflowContext) -> Any:
        async with ctx.saga() as saga:
            hotel, flight = await ctx.gather(ctx.step("hotel"), ctx.step("flight"))
            saga.compensate("cancel_hotel", hotel)
            saga.compensate("cancel_flight", flight)
            await ctx.step("car")

    decision, journal = drive(wf, instance(), codec, {0: "H", 1: "F", 2: TRANSFER_FAILED})

    assert decision.failure == TRANSFER_FAILED
    assert sent(journal, codec)[3:] == [
        (3, "cancel_flight", ["F"], State.COMPLETED),
        (4, "cancel_hotel", ["H"], State.COMPLETED),
    ]


def test_nested_sagas_each_compensate_and_report(instance: MakeInstance, codec: Any) -> None:
    seen: list[Any] = []

    async def wf(ctx: WorkflowContext) -> None:
        try:
            async with ctx.saga() as outer:
                outer.compensate("outer-undo")
                async with ctx.saga() as inner:
                    inner.compensate("inner-undo")
                    await ctx.step("do")
        except StepFailed as e:
            seen.append(e)

    outcomes = {0: TRANSFER_FAILED, 1: ROLLBACK_FAILED, 2: Failure("Boom", "b")}

    drive(wf, instance(), codec, outcomes)

    [error] = seen
    assert [f.type for f in error.compensation_failures] == ["RollbackFailed", "Boom"]
    assert len(error.__notes__) == 2


# -- errors at the call site --------------------------------------------------------------


def test_compensate_checks_its_arguments_at_once(instance: MakeInstance, codec: Any) -> None:
    async def wf(ctx: WorkflowContext) -> list[str]:
        messages = []
        async with ctx.saga() as saga:
            calls: list[Callable[[], None]] = [
                lambda: saga.compensate("undo", object()),
                lambda: saga.compensate(42),
            ]
            for call in calls:
                try:
                    call()
                except (SerializationError, TypeError) as e:
                    messages.append(type(e).__name__)
        return messages

    decision = replay(wf, instance(), [], codec=codec, now=NOW)

    assert codec.loads(decision.output) == ["SerializationError", "TypeError"]
    assert decision.new_events == []


def test_saga_is_for_one_block(instance: MakeInstance, codec: Any) -> None:
    async def wf(ctx: WorkflowContext) -> str:
        saga = ctx.saga()
        async with saga:
            pass
        try:
            async with saga:
                pass
        except RuntimeError as e:
            return str(e)
        return "not raised"

    decision = replay(wf, instance(), [], codec=codec, now=NOW)

    assert codec.loads(decision.output) == (
        "a ctx.saga() is used for one `async with` block; make a new one"
    )


@pytest.mark.skipif(sys.version_info >= (3, 11), reason="Python 3.10 has no add_note")
def test_notes_without_add_note() -> None:
    from celery_durable.engine.saga import _attach

    error = StepFailed("T", "m")
    _attach(error, [("undo", StepFailed("U", "n"))])

    assert error.__notes__ == [
        "1 compensation step(s) failed while the saga rolled back:\n  - step 'undo': U: n"
    ]
