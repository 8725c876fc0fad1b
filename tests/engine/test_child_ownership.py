"""Child workflows a parent owns: foreign ids conflict, parent-close policies, awaited children."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from celery_durable.engine import WorkflowContext, replay
from celery_durable.engine.commands import Decision, StartChild
from celery_durable.engine.journal import Event, Instance, Kind, State, Status
from celery_durable.errors import StepFailed

NOW = datetime(2024, 3, 1, 9, 30, tzinfo=timezone.utc)
LATER = NOW + timedelta(minutes=5)

MakeInstance = Callable[..., Instance]


def child(
    codec: Any,
    *,
    id: str = "doc-1",  # noqa: A002
    workflow: str = "billing.refund",
    parent_id: str | None = "wf-1",
    args: tuple[Any, ...] = ("bob",),
    kwargs: dict[str, Any] | None = None,
    status: Status = Status.COMPLETED,
    output: Any = "refund for bob",
    run: int = 1,
) -> Instance:
    return Instance(
        id=id,
        workflow=workflow,
        status=status,
        input=codec.dumps([list(args), kwargs or {}]),
        serializer=codec.name,
        created_at=NOW,
        updated_at=LATER,
        output=codec.dumps(output) if status is Status.COMPLETED else None,
        parent_id=parent_id,
        run=run,
    )


async def refund(ctx: WorkflowContext) -> Any:
    try:
        return await ctx.child("billing.refund", "bob", workflow_id="doc-1")
    except StepFailed as exc:
        return [exc.type, exc.message]


def journaled(wf: Any, instance: MakeInstance, codec: Any) -> list[Event]:
    """The journal after the first pass of ``wf``: its children issued, pending."""
    return list(replay(wf, instance(), [], codec=codec, now=NOW).new_events)


def settle(wf: Any, instance: MakeInstance, codec: Any, *children: Instance) -> Decision:
    journal = journaled(wf, instance, codec)
    return replay(
        wf, instance(), journal, codec=codec, now=NOW, children={c.id: c for c in children}
    )


# -- WorkflowIdConflict -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("foreign", "owner"),
    [
        (
            {"parent_id": "wf-9", "workflow": "billing.invoice", "output": "invoice for alice"},
            "instance 'doc-1' of workflow 'billing.invoice' (parent 'wf-9')",
        ),
        (
            {"parent_id": None, "workflow": "billing.invoice", "output": "invoice for alice"},
            "instance 'doc-1' of workflow 'billing.invoice' (no parent)",
        ),
        (
            {"parent_id": "wf-9"},  # the same workflow, another parent's child
            "instance 'doc-1' of workflow 'billing.refund' (parent 'wf-9')",
        ),
        (
            {"workflow": "billing.invoice"},  # our id, yet another workflow
            "a child of workflow 'billing.invoice', not 'billing.refund'",
        ),
        (
            {"args": ("alice",), "output": "refund for alice"},  # our id, other arguments
            "a child of workflow 'billing.refund' started with other arguments",
        ),
        (
            {"args": (), "kwargs": {"who": "bob"}},  # the same value, passed another way
            "a child of workflow 'billing.refund' started with other arguments",
        ),
    ],
)
def test_a_foreign_child_fails_the_call_with_workflow_id_conflict(
    instance: MakeInstance, codec: Any, foreign: dict[str, Any], owner: str
) -> None:
    decision = settle(refund, instance, codec, child(codec, **foreign))

    message = (
        f"child workflow id 'doc-1' already belongs to {owner}; pass "
        "ctx.child(..., workflow_id=...) an id of its own"
    )
    assert decision.status is Status.COMPLETED  # the workflow caught it
    assert codec.loads(decision.output) == ["WorkflowIdConflict", message]
    [resolved] = decision.fired
    assert (resolved.seq, resolved.kind, resolved.state) == (0, Kind.CHILD, State.FAILED)
    assert resolved.failure is not None
    assert (resolved.failure.type, resolved.failure.message) == ("WorkflowIdConflict", message)
    assert resolved.output is None  # the foreign result is never journaled


def test_an_uncaught_conflict_fails_the_parent(instance: MakeInstance, codec: Any) -> None:
    async def wf(ctx: WorkflowContext) -> Any:
        return await ctx.child("billing.refund", "bob", workflow_id="doc-1")

    decision = settle(wf, instance, codec, child(codec, parent_id="wf-9"))

    assert decision.status is Status.FAILED
    assert decision.failure is not None
    assert decision.failure.type == "WorkflowIdConflict"


def test_a_conflict_is_journaled_once_and_then_replayed(instance: MakeInstance, codec: Any) -> None:
    journal = journaled(refund, instance, codec)
    foreign = {"doc-1": child(codec, parent_id="wf-9")}
    first = replay(refund, instance(), journal, codec=codec, now=NOW, children=foreign)

    again = replay(refund, instance(), first.fired, codec=codec, now=LATER, children={})

    assert (again.status, again.output, again.fired) == (Status.COMPLETED, first.output, [])


@pytest.mark.parametrize(
    "owned",
    [
        {},
        {"kwargs": {}},  # equal input, encoded the same
        {"status": Status.RUNNING},  # not ended: the parent waits
        {"run": 2, "args": ("bob", 2)},  # the child continued as new: other input, still ours
    ],
)
def test_an_owned_child_with_equal_arguments_is_no_conflict(
    instance: MakeInstance, codec: Any, owned: dict[str, Any]
) -> None:
    mine = child(codec, **owned)

    decision = settle(refund, instance, codec, mine)

    if mine.status is Status.COMPLETED:
        assert (decision.status, codec.loads(decision.output)) == (
            Status.COMPLETED,
            "refund for bob",
        )
    else:
        assert (decision.status, decision.fired) == (Status.RUNNING, [])


def test_an_owned_child_whose_input_is_encoded_differently_is_no_conflict(
    instance: MakeInstance, codec: Any
) -> None:
    async def wf(ctx: WorkflowContext) -> Any:
        return await ctx.child("billing.refund", a=1, b=2, workflow_id="doc-1")

    mine = dataclasses.replace(child(codec), input='[[], {"b": 2, "a": 1}]')

    decision = settle(wf, instance, codec, mine)

    assert (decision.status, codec.loads(decision.output)) == (Status.COMPLETED, "refund for bob")


def test_a_default_child_id_of_an_earlier_run_is_not_this_run_s_child(
    instance: MakeInstance, codec: Any
) -> None:
    async def wf(ctx: WorkflowContext) -> Any:
        return await ctx.child("billing.refund", "bob")

    second_run = dataclasses.replace(instance(), run=2)
    issued = replay(wf, second_run, [], codec=codec, now=NOW)
    run_one_child = child(codec, id="wf-1:0")

    decision = replay(
        wf,
        second_run,
        issued.new_events,
        codec=codec,
        now=NOW,
        children={run_one_child.id: run_one_child},  # not what run 2 waits on
    )

    assert [c.workflow_id for c in issued.children] == ["wf-1:0~2"]
    assert (decision.status, decision.fired) == (Status.RUNNING, [])


# -- on_parent_close ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "policy"),
    [({}, "terminate"), *(({"on_parent_close": p}, p) for p in ("terminate", "cancel", "abandon"))],
)
def test_start_child_carries_the_parent_close_policy(
    instance: MakeInstance, codec: Any, given: dict[str, str], policy: str
) -> None:
    async def wf(ctx: WorkflowContext) -> Any:
        return await ctx.child("billing.refund", "bob", **given)

    decision = replay(wf, instance(), [], codec=codec, now=NOW)

    assert decision.children == [
        StartChild(0, "wf-1:0", "billing.refund", '[["bob"], {}]', parent_close=policy)
    ]
    # the policy is not an argument of the child: its journal record does not hold it
    assert codec.loads(decision.new_events[0].input) == [["wf-1:0", "bob"], {}]


@pytest.mark.parametrize("policy", ["kill", "Terminate", "", None])
def test_an_unknown_parent_close_policy_raises_at_the_call_site(
    instance: MakeInstance, codec: Any, policy: Any
) -> None:
    async def wf(ctx: WorkflowContext) -> Any:
        try:
            ctx.child("billing.refund", on_parent_close=policy)
        except ValueError as exc:
            return str(exc)
        return "not raised"

    decision = replay(wf, instance(), [], codec=codec, now=NOW)

    assert codec.loads(decision.output) == (
        f"ctx.child() on_parent_close must be one of terminate, cancel, abandon, not {policy!r}"
    )
    assert (decision.new_events, decision.children) == ([], [])


def test_changing_the_policy_of_a_journaled_child_is_no_replay_error(
    instance: MakeInstance, codec: Any
) -> None:
    async def v1(ctx: WorkflowContext) -> Any:
        return await ctx.child("billing.refund", "bob")

    async def v2(ctx: WorkflowContext) -> Any:
        return await ctx.child("billing.refund", "bob", on_parent_close="abandon")

    decision = replay(v2, instance(), journaled(v1, instance, codec), codec=codec, now=NOW)

    assert decision.status is Status.RUNNING
    assert [c.parent_close for c in decision.awaited_children] == ["abandon"]


# -- awaited_children ---------------------------------------------------------------------


async def fan_out(ctx: WorkflowContext) -> Any:
    done = await ctx.child("a.done", on_parent_close="cancel")  # seq 0
    both = await ctx.gather(
        ctx.child("b.pending", 1, on_parent_close="abandon"),  # seq 1
        ctx.child("c.pending", workflow_id="c-1"),  # seq 2
    )
    return [done, both, await ctx.child("d.later")]  # seq 3


def child_event(codec: Any, seq: int, name: str, child_id: str, *args: Any) -> Event:
    return Event(seq, Kind.CHILD, name, codec.dumps([[child_id, *args], {}]), State.SCHEDULED, NOW)


def test_awaited_children_are_the_journaled_pending_children_reached(
    instance: MakeInstance, codec: Any
) -> None:
    journal = [
        dataclasses.replace(
            child_event(codec, 0, "a.done", "wf-1:0"), state=State.COMPLETED, output='"A"'
        ),
        child_event(codec, 1, "b.pending", "wf-1:1", 1),
        child_event(codec, 2, "c.pending", "c-1"),
    ]

    decision = replay(fan_out, instance(), journal, codec=codec, now=NOW)

    assert decision.status is Status.RUNNING
    assert decision.awaited_children == [
        StartChild(1, "wf-1:1", "b.pending", "[[1], {}]", parent_close="abandon"),
        StartChild(2, "c-1", "c.pending", "[[], {}]", parent_close="terminate"),
    ]
    assert (decision.children, decision.new_events) == ([], [])  # none started again


def test_a_child_issued_in_the_pass_is_started_not_awaited(
    instance: MakeInstance, codec: Any
) -> None:
    journal = [
        dataclasses.replace(
            child_event(codec, 0, "a.done", "wf-1:0"), state=State.COMPLETED, output='"A"'
        ),
        child_event(codec, 1, "b.pending", "wf-1:1", 1),
    ]

    decision = replay(fan_out, instance(), journal, codec=codec, now=NOW)

    assert [c.seq for c in decision.awaited_children] == [1]
    assert decision.children == [StartChild(2, "c-1", "c.pending", "[[], {}]")]


def test_awaited_children_of_a_later_run_carry_its_ids(instance: MakeInstance, codec: Any) -> None:
    second_run = dataclasses.replace(instance(), run=2)
    journal = [child_event(codec, 0, "a.done", "wf-1:0~2")]

    decision = replay(fan_out, second_run, journal, codec=codec, now=NOW)

    assert decision.awaited_children == [
        StartChild(0, "wf-1:0~2", "a.done", "[[], {}]", parent_close="cancel")
    ]


def test_no_awaited_children_when_the_pass_parks(instance: MakeInstance, codec: Any) -> None:
    async def wf(ctx: WorkflowContext) -> Any:
        await ctx.child("a.done", on_parent_close="cancel")
        await ctx.child("b.pending", "changed")

    journal = [
        child_event(codec, 0, "a.done", "wf-1:0"),
        child_event(codec, 1, "b.pending", "wf-1:1", "original"),
    ]
    mine = dataclasses.replace(child(codec, id="wf-1:0", workflow="a.done", args=()), output='"A"')

    decision = replay(wf, instance(), journal, codec=codec, now=NOW, children={mine.id: mine})

    assert decision.status is Status.STUCK
    assert decision.awaited_children == []
