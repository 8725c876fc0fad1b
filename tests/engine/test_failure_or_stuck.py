"""What an exception escaping the workflow does: a failure fails it, a bug parks it.

Journaled outcomes (``StepFailed``, ``SignalTimeout``, a failed child) and the types in
``replay(..., failure_exceptions=...)`` fail the instance; anything else is a bug in the
code: the instance parks as STUCK with its traceback, nothing of the pass is journaled,
and ``ctx.saga()`` compensates for none of it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from celery_durable.engine import WorkflowContext, replay
from celery_durable.engine.commands import Decision, ScheduleStep
from celery_durable.engine.journal import Event, Failure, Instance, Kind, Signal, State, Status
from celery_durable.errors import StepFailed

NOW = datetime(2024, 3, 1, 9, 30, tzinfo=timezone.utc)
TRANSFER_FAILED = Failure("TransferFailed", "insufficient funds", "Traceback (remote) ...")

MakeInstance = Callable[..., Instance]
MakeEvent = Callable[..., Event]


class OutOfStock(Exception):
    """A business failure the workflow declares (``failure_exceptions``)."""


class DiscontinuedItem(OutOfStock):
    """A subclass of a declared failure: a failure too."""


def assert_parked(decision: Decision, failure_type: str) -> Failure:
    """STUCK with the exception's traceback, and nothing of the pass to commit."""
    assert decision.status is Status.STUCK
    assert decision.failure is not None
    assert decision.failure.type == failure_type
    assert decision.failure.details is not None
    assert "Traceback" in decision.failure.details
    assert (decision.new_events, decision.steps, decision.fired) == ([], [], [])
    assert (decision.children, decision.consumed, decision.output) == ([], [], None)
    return decision.failure


async def reserve(ctx: WorkflowContext, error: type[Exception]) -> None:
    """Journals a local run in the pass, then raises ``error``."""
    await ctx.step("shop.check")
    await ctx.run(len, "abc")
    raise error("sku-1")


def run_reserve(
    instance: MakeInstance,
    codec: Any,
    event: MakeEvent,
    error: type[Exception],
    failure_exceptions: tuple[type[BaseException], ...],
) -> Decision:
    return replay(
        lambda ctx: reserve(ctx, error),
        instance(),
        [event(0, "shop.check")],
        codec=codec,
        now=NOW,
        failure_exceptions=failure_exceptions,
    )


@pytest.mark.parametrize("error", [OutOfStock, DiscontinuedItem])
def test_a_listed_exception_or_its_subclass_fails_the_workflow(
    instance: MakeInstance, codec: Any, event: MakeEvent, error: type[Exception]
) -> None:
    decision = run_reserve(instance, codec, event, error, (KeyError, OutOfStock))

    assert decision.status is Status.FAILED
    assert decision.failure is not None
    assert (decision.failure.type, decision.failure.message) == (error.__name__, "sku-1")
    assert decision.failure.details is not None
    assert "Traceback" in decision.failure.details
    # a failure ends the instance with what the pass did: the local run is journaled
    assert [(e.seq, e.kind, e.state) for e in decision.new_events] == [
        (1, Kind.RUN, State.COMPLETED)
    ]


@pytest.mark.parametrize(
    ("error", "failure_exceptions"),
    [
        (ValueError, ()),
        (ValueError, (OutOfStock, KeyError)),  # listed types do not make others failures
        (OutOfStock, (DiscontinuedItem,)),  # a base class of a listed type is not listed
    ],
)
def test_an_unlisted_exception_parks_the_workflow_and_journals_nothing(
    instance: MakeInstance,
    codec: Any,
    event: MakeEvent,
    error: type[Exception],
    failure_exceptions: tuple[type[BaseException], ...],
) -> None:
    decision = run_reserve(instance, codec, event, error, failure_exceptions)

    failure = assert_parked(decision, error.__name__)
    assert failure.message == "sku-1"


def test_step_failed_fails_the_workflow_without_being_listed(
    instance: MakeInstance, codec: Any, event: MakeEvent
) -> None:
    async def wf(ctx: WorkflowContext) -> None:
        await ctx.step("bank.transfer")

    journal = [event(0, "bank.transfer", State.FAILED, failure=TRANSFER_FAILED)]

    decision = replay(wf, instance(), journal, codec=codec, now=NOW)

    assert (decision.status, decision.failure) == (Status.FAILED, TRANSFER_FAILED)


def test_step_failed_raised_by_the_code_fails_the_workflow(
    instance: MakeInstance, codec: Any
) -> None:
    async def wf(ctx: WorkflowContext) -> None:
        raise StepFailed("Rejected", "the order was rejected")

    decision = replay(wf, instance(), [], codec=codec, now=NOW)

    assert decision.status is Status.FAILED
    assert decision.failure == Failure("Rejected", "the order was rejected")


def test_signal_timeout_fails_the_workflow_without_being_listed(
    instance: MakeInstance, codec: Any
) -> None:
    async def wf(ctx: WorkflowContext) -> None:
        await ctx.wait_signal("approved", timeout=timedelta(hours=1))

    issued = replay(wf, instance(), [], codec=codec, now=NOW)

    decision = replay(wf, instance(), issued.new_events, codec=codec, now=NOW + timedelta(hours=2))

    assert decision.status is Status.FAILED
    assert decision.failure is not None
    assert decision.failure.type == "SignalTimeout"
    assert [(e.seq, e.state) for e in decision.fired] == [(0, State.FAILED)]


def test_a_failed_child_fails_the_workflow_without_being_listed(
    instance: MakeInstance, codec: Any
) -> None:
    async def wf(ctx: WorkflowContext) -> Any:
        return await ctx.child("bank.transfer")

    issued = replay(wf, instance(), [], codec=codec, now=NOW)
    child = Instance(
        id="wf-1:0",
        workflow="bank.transfer",
        status=Status.FAILED,
        input=codec.dumps([[], {}]),
        serializer=codec.name,
        created_at=NOW,
        updated_at=NOW,
        failure=TRANSFER_FAILED,
        parent_id="wf-1",
    )

    decision = replay(
        wf, instance(), issued.new_events, codec=codec, now=NOW, children={child.id: child}
    )

    assert (decision.status, decision.failure) == (Status.FAILED, TRANSFER_FAILED)


def test_a_bug_after_a_signal_and_a_timer_took_effect_undoes_both(
    instance: MakeInstance, codec: Any
) -> None:
    async def wf(ctx: WorkflowContext) -> None:
        await ctx.gather(ctx.wait_signal("go"), ctx.sleep(60))
        prices: dict[str, int] = {}
        prices["sku-1"] += 1  # a KeyError from wrong code

    issued = replay(wf, instance(), [], codec=codec, now=NOW)
    inbox = [Signal(1, "go", "null", NOW)]

    decision = replay(
        wf, instance(), issued.new_events, codec=codec, now=NOW + timedelta(hours=1), signals=inbox
    )

    assert_parked(decision, "KeyError")  # the signal stays unread, the timer unfired


# -- ctx.saga() ---------------------------------------------------------------------------


async def booking(ctx: WorkflowContext, error: type[Exception]) -> str:
    async with ctx.saga() as saga:
        hotel = await ctx.step("hotel.book")
        saga.compensate("hotel.cancel", hotel)
        flight = await ctx.step("flight.book", hotel)
        raise error(f"no seat on {flight}")


def booked(event: MakeEvent) -> list[Event]:
    return [
        event(0, "hotel.book", output="H-1"),
        event(1, "flight.book", output="F-1", args=("H-1",)),
    ]


def test_a_bug_inside_a_saga_parks_without_compensating(
    instance: MakeInstance, codec: Any, event: MakeEvent
) -> None:
    def wf(ctx: WorkflowContext) -> Any:
        return booking(ctx, ValueError)

    decision = replay(wf, instance(), booked(event), codec=codec, now=NOW)

    failure = assert_parked(decision, "ValueError")
    assert failure.message == "no seat on F-1"

    # the fixed code goes on from the journal: no rollback was journaled for the bug
    async def fixed(ctx: WorkflowContext) -> str:
        async with ctx.saga() as saga:
            hotel = await ctx.step("hotel.book")
            saga.compensate("hotel.cancel", hotel)
            flight = await ctx.step("flight.book", hotel)
            return f"{hotel} + {flight}"

    resumed = replay(fixed, instance(), booked(event), codec=codec, now=NOW)
    assert (resumed.status, resumed.output) == (Status.COMPLETED, '"H-1 + F-1"')


def test_a_bug_inside_nested_sagas_compensates_in_neither(
    instance: MakeInstance, codec: Any, event: MakeEvent
) -> None:
    async def wf(ctx: WorkflowContext) -> None:
        async with ctx.saga() as outer:
            outer.compensate("outer.undo")
            async with ctx.saga() as inner:
                inner.compensate("inner.undo")
                await ctx.step("do")
                raise TypeError("wrong code")

    decision = replay(wf, instance(), [event(0, "do")], codec=codec, now=NOW)

    assert_parked(decision, "TypeError")


def test_a_listed_failure_inside_a_saga_compensates_then_fails(
    instance: MakeInstance, codec: Any, event: MakeEvent
) -> None:
    def wf(ctx: WorkflowContext) -> Any:
        return booking(ctx, OutOfStock)

    listed = (OutOfStock,)

    compensating = replay(
        wf, instance(), booked(event), codec=codec, now=NOW, failure_exceptions=listed
    )

    assert compensating.status is Status.RUNNING
    assert compensating.steps == [ScheduleStep(2, "hotel.cancel", ("H-1",), {})]
    journal = [*booked(event), event(2, "hotel.cancel", args=("H-1",))]

    decision = replay(wf, instance(), journal, codec=codec, now=NOW, failure_exceptions=listed)

    assert decision.status is Status.FAILED
    assert decision.failure is not None
    assert (decision.failure.type, decision.failure.message) == ("OutOfStock", "no seat on F-1")
    assert decision.new_events == []


def test_a_step_failure_inside_a_saga_still_compensates(
    instance: MakeInstance, codec: Any, event: MakeEvent
) -> None:
    def wf(ctx: WorkflowContext) -> Any:
        return booking(ctx, ValueError)  # never reached: the flight fails first

    journal = [
        event(0, "hotel.book", output="H-1"),
        event(1, "flight.book", State.FAILED, failure=TRANSFER_FAILED, args=("H-1",)),
    ]

    decision = replay(wf, instance(), journal, codec=codec, now=NOW)

    assert decision.steps == [ScheduleStep(2, "hotel.cancel", ("H-1",), {})]
