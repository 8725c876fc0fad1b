"""ctx.child: child workflows started once, awaited with their result or failure."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from celery_durable.engine import WorkflowContext, replay
from celery_durable.engine.commands import Decision, StartChild
from celery_durable.engine.journal import Event, Failure, Instance, Kind, State, Status
from celery_durable.errors import SerializationError, StepFailed

NOW = datetime(2024, 3, 1, 9, 30, tzinfo=timezone.utc)
LATER = NOW + timedelta(minutes=5)
TRANSFER_FAILED = Failure("TransferFailed", "insufficient funds", "Traceback ...")

MakeInstance = Callable[..., Instance]


@dataclass
class Workflow:
    """Stands in for a registered workflow: the engine only reads ``name``."""

    name: str


transfer = Workflow("bank.transfer")


def commit(journal: list[Event], decision: Decision) -> list[Event]:
    fired = {e.seq: e for e in decision.fired}
    return [fired.get(e.seq, e) for e in journal] + list(decision.new_events)


def child(
    codec: Any,
    child_id: str,
    status: Status,
    *,
    output: Any = None,
    failure: Failure | None = None,
    workflow: str = "bank.transfer",
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    parent_id: str | None = "wf-1",
) -> Instance:
    return Instance(
        id=child_id,
        workflow=workflow,
        status=status,
        input=codec.dumps([list(args), kwargs or {}]),
        serializer=codec.name,
        created_at=NOW,
        updated_at=LATER,
        output=codec.dumps(output) if status is Status.COMPLETED else None,
        failure=failure,
        parent_id=parent_id,
    )


PAY_ARGS: dict[str, Any] = {"args": ("acc-1",), "kwargs": {"amount": 10}}
"""The arguments ``pay`` starts its child with."""


def run(
    wf: Any,
    instance: MakeInstance,
    codec: Any,
    journal: list[Event],
    children: dict[str, Instance] | None = None,
) -> Decision:
    return replay(wf, instance(), journal, codec=codec, now=NOW, children=children or {})


async def pay(ctx: WorkflowContext) -> Any:
    receipt = await ctx.child(transfer, "acc-1", amount=10)
    await ctx.step("notify", receipt)
    return receipt


def test_first_pass_journals_the_child_and_starts_it(instance: MakeInstance, codec: Any) -> None:
    decision = run(pay, instance, codec, [])

    assert decision.status is Status.RUNNING
    assert decision.new_events == [
        Event(
            0,
            Kind.CHILD,
            "bank.transfer",
            codec.dumps([["wf-1:0", "acc-1"], {"amount": 10}]),
            State.SCHEDULED,
            NOW,
        )
    ]
    assert decision.children == [
        StartChild(0, "wf-1:0", "bank.transfer", codec.dumps([["acc-1"], {"amount": 10}]))
    ]
    assert decision.steps == []


def test_explicit_id_and_name_string(instance: MakeInstance, codec: Any) -> None:
    async def wf(ctx: WorkflowContext) -> Any:
        await ctx.run(lambda: 1)
        return await ctx.child("bank.transfer", workflow_id="transfer-42")

    decision = run(wf, instance, codec, [])

    assert decision.children == [StartChild(1, "transfer-42", "bank.transfer", "[[], {}]")]
    assert codec.loads(decision.new_events[1].input) == [["transfer-42"], {}]


def test_running_or_unknown_child_keeps_the_parent_waiting(
    instance: MakeInstance, codec: Any
) -> None:
    journal = commit([], run(pay, instance, codec, []))

    for children in ({}, {"wf-1:0": child(codec, "wf-1:0", Status.RUNNING, **PAY_ARGS)}):
        decision = run(pay, instance, codec, journal, children)
        assert (decision.status, decision.new_events, decision.fired, decision.children) == (
            Status.RUNNING,
            [],
            [],
            [],
        )


def test_completed_child_gives_its_result(instance: MakeInstance, codec: Any) -> None:
    journal = commit([], run(pay, instance, codec, []))
    children = {"wf-1:0": child(codec, "wf-1:0", Status.COMPLETED, output={"tx": 7}, **PAY_ARGS)}

    decision = run(pay, instance, codec, journal, children)

    assert decision.status is Status.RUNNING
    assert decision.fired == [
        dataclasses.replace(
            journal[0], state=State.COMPLETED, output=codec.dumps({"tx": 7}), completed_at=NOW
        )
    ]
    [notify] = decision.steps
    assert notify.args == ({"tx": 7},)
    assert decision.children == []  # never started twice


def test_failed_child_raises_step_failed_with_its_type(instance: MakeInstance, codec: Any) -> None:
    caught: list[StepFailed] = []

    async def wf(ctx: WorkflowContext) -> Any:
        try:
            return await ctx.child(transfer)
        except StepFailed as exc:
            caught.append(exc)
            raise

    journal = commit([], run(wf, instance, codec, []))
    children = {"wf-1:0": child(codec, "wf-1:0", Status.FAILED, failure=TRANSFER_FAILED)}

    decision = run(wf, instance, codec, journal, children)

    assert [(e.type, e.message) for e in caught] == [("TransferFailed", "insufficient funds")]
    assert decision.status is Status.FAILED
    assert decision.failure == TRANSFER_FAILED
    assert decision.fired == [
        dataclasses.replace(
            journal[0], state=State.FAILED, failure=TRANSFER_FAILED, completed_at=NOW
        )
    ]


@pytest.mark.parametrize(
    "failure", [Failure("WorkflowCancelled", "cancelled"), None, Failure("Terminated", "x")]
)
def test_cancelled_child_raises_step_failed_workflow_cancelled(
    instance: MakeInstance, codec: Any, failure: Failure | None
) -> None:
    async def wf(ctx: WorkflowContext) -> Any:
        try:
            return await ctx.child(transfer)
        except StepFailed as exc:
            return exc.type

    journal = commit([], run(wf, instance, codec, []))
    children = {"wf-1:0": child(codec, "wf-1:0", Status.CANCELLED, failure=failure)}

    decision = run(wf, instance, codec, journal, children)

    assert (decision.status, decision.output) == (Status.COMPLETED, '"WorkflowCancelled"')


def test_stuck_child_keeps_the_parent_waiting(instance: MakeInstance, codec: Any) -> None:
    journal = commit([], run(pay, instance, codec, []))
    stuck = child(codec, "wf-1:0", Status.STUCK, failure=Failure("X", "y"), **PAY_ARGS)
    children = {"wf-1:0": stuck}

    assert run(pay, instance, codec, journal, children).fired == []


def test_two_children_in_parallel_with_gather(instance: MakeInstance, codec: Any) -> None:
    async def wf(ctx: WorkflowContext) -> Any:
        return await ctx.gather(ctx.child(transfer, 1), ctx.child(transfer, 2))

    decision = run(wf, instance, codec, [])
    assert [(c.seq, c.workflow_id) for c in decision.children] == [(0, "wf-1:0"), (1, "wf-1:1")]
    journal = commit([], decision)

    one_done = {"wf-1:1": child(codec, "wf-1:1", Status.COMPLETED, output="b", args=(2,))}
    half = run(wf, instance, codec, journal, one_done)
    assert half.status is Status.RUNNING
    assert [e.seq for e in half.fired] == [1]
    journal = commit(journal, half)

    both = {**one_done, "wf-1:0": child(codec, "wf-1:0", Status.COMPLETED, output="a", args=(1,))}
    ended = run(wf, instance, codec, journal, both)
    assert (ended.status, codec.loads(ended.output or "")) == (Status.COMPLETED, ["a", "b"])
    assert [e.seq for e in ended.fired] == [0]


def test_child_in_a_race_with_a_timer(instance: MakeInstance, codec: Any) -> None:
    async def wf(ctx: WorkflowContext) -> Any:
        return await ctx.first(ctx.child(transfer), ctx.sleep(timedelta(hours=1)))

    journal = commit([], run(wf, instance, codec, []))
    children = {"wf-1:0": child(codec, "wf-1:0", Status.COMPLETED, output="tx")}

    decision = run(wf, instance, codec, journal, children)

    assert (decision.status, codec.loads(decision.output or "")) == (Status.COMPLETED, [0, "tx"])


def test_changed_child_name_is_stuck(instance: MakeInstance, codec: Any) -> None:
    journal = commit([], run(pay, instance, codec, []))

    async def wf(ctx: WorkflowContext) -> Any:
        return await ctx.child("bank.refund", "acc-1", amount=10)

    decision = run(wf, instance, codec, journal)

    assert decision.status is Status.STUCK
    assert decision.failure is not None
    assert "child 'bank.transfer'" in decision.failure.message
    assert "child 'bank.refund'" in decision.failure.message


def test_unencodable_arguments_fail_at_the_call_site(instance: MakeInstance, codec: Any) -> None:
    async def wf(ctx: WorkflowContext) -> Any:
        try:
            await ctx.child(transfer, object())
        except SerializationError as exc:
            return str(exc)

    decision = run(wf, instance, codec, [])

    assert decision.status is Status.COMPLETED
    assert "child workflow 'bank.transfer'" in (decision.output or "")
    assert decision.new_events == []


@pytest.mark.parametrize(
    ("workflow", "kwargs", "error"),
    [
        (object(), {}, TypeError),
        (transfer, {"workflow_id": 3}, TypeError),
        (transfer, {"workflow_id": ""}, ValueError),
    ],
)
def test_bad_child_calls_raise_at_the_call_site(
    instance: MakeInstance,
    codec: Any,
    workflow: Any,
    kwargs: dict[str, Any],
    error: type[Exception],
) -> None:
    async def wf(ctx: WorkflowContext) -> Any:
        try:
            ctx.child(workflow, **kwargs)
        except error:
            return "raised"

    assert run(wf, instance, codec, []).output == '"raised"'
