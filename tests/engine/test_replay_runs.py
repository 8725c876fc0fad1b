"""Runs (``continue_as_new``): each run has its own identity, and nothing else changes."""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from celery_durable.engine import WorkflowContext, replay
from celery_durable.engine.commands import Decision
from celery_durable.engine.journal import Event, Instance, State, Status

NOW = datetime(2024, 3, 1, 9, 30, tzinfo=timezone.utc)

MakeInstance = Callable[..., Instance]


def in_run(instance: Instance, run: int) -> Instance:
    """``instance`` as it stands in its ``run``-th run (after ``run - 1`` restarts)."""
    return dataclasses.replace(instance, run=run)


def commit(journal: list[Event], decision: Decision) -> list[Event]:
    fired = {e.seq: e for e in decision.fired}
    return [fired.get(e.seq, e) for e in journal] + list(decision.new_events)


async def fan_out(ctx: WorkflowContext, n: int) -> Any:
    """A step, a child with a default id and one with a given id, and two uuid4 values."""
    keys = [str(ctx.uuid4()), str(ctx.uuid4())]
    await ctx.step("tick", n, key=keys[0])
    return await ctx.gather(
        ctx.child("bank.transfer", n), ctx.child("bank.audit", workflow_id="audit-1")
    )


def test_run_number_is_the_instance_run(instance: MakeInstance, codec: Any) -> None:
    seen: list[int] = []

    async def wf(ctx: WorkflowContext) -> None:
        seen.append(ctx.run_number)

    for run in (1, 2, 7):
        replay(wf, in_run(instance(), run), [], codec=codec, now=NOW)

    assert seen == [1, 2, 7]


def test_default_child_ids_carry_the_run_after_the_first(
    instance: MakeInstance, codec: Any
) -> None:
    ids = {}
    for run in (1, 2, 3):
        inst = in_run(instance(1), run)
        first = replay(fan_out, inst, [], codec=codec, now=NOW)
        journal = commit([], first)
        journal = [dataclasses.replace(journal[0], state=State.COMPLETED, output="null")]
        second = replay(fan_out, inst, journal, codec=codec, now=NOW)
        ids[run] = [c.workflow_id for c in second.children]
        again = replay(fan_out, inst, journal, codec=codec, now=NOW)
        assert again.children == second.children  # stable within a run

    assert ids == {
        1: ["wf-1:1", "audit-1"],  # run 1 keeps the ids it always had
        2: ["wf-1:1~2", "audit-1"],  # a given id is the caller's: the same in every run
        3: ["wf-1:1~3", "audit-1"],
    }


def test_child_journal_records_hold_the_run_s_child_id(instance: MakeInstance, codec: Any) -> None:
    async def wf(ctx: WorkflowContext) -> Any:
        return await ctx.child("bank.transfer", "acc-1")

    decision = replay(wf, in_run(instance(), 2), [], codec=codec, now=NOW)

    [event] = decision.new_events
    assert codec.loads(event.input) == [["wf-1:0~2", "acc-1"], {}]
    assert [(c.seq, c.workflow_id) for c in decision.children] == [(0, "wf-1:0~2")]


def test_uuid4_differs_between_runs_and_is_stable_within_one(
    instance: MakeInstance, codec: Any
) -> None:
    async def wf(ctx: WorkflowContext) -> list[str]:
        return [str(ctx.uuid4()) for _ in range(3)]

    def values(run: int) -> list[str]:
        decision = replay(wf, in_run(instance(), run), [], codec=codec, now=NOW)
        assert decision.status is Status.COMPLETED
        return codec.loads(decision.output)  # type: ignore[no-any-return]

    runs = {run: values(run) for run in (1, 2, 3)}

    assert {run: values(run) for run in (1, 2, 3)} == runs  # every replay: the same
    every = [value for run_values in runs.values() for value in run_values]
    assert len(set(every)) == 9  # unique across calls and runs
    assert all(uuid.UUID(value).version == 4 for value in every)
    # run 1 keeps the values it had before runs were numbered (journals in flight)
    assert runs[1] == [
        str(uuid.UUID(bytes=hashlib.sha256(f"wf-1\x00{n}".encode()).digest()[:16], version=4))
        for n in range(3)
    ]


def test_step_commands_are_the_same_in_every_run(instance: MakeInstance, codec: Any) -> None:
    # The run's identity goes to the runtime's task ids, not into the step's journal record.
    async def wf(ctx: WorkflowContext, n: int) -> Any:
        first = await ctx.step("tick", n)
        return await ctx.gather(ctx.step("tock", first, at=n), ctx.run(lambda: n * 2))

    decisions = {}
    for run in (1, 2):
        inst = in_run(instance(5), run)
        first = replay(wf, inst, [], codec=codec, now=NOW)
        journal = commit([], first)
        journal[0] = dataclasses.replace(journal[0], state=State.COMPLETED, output=codec.dumps("t"))
        decisions[run] = (first, replay(wf, inst, journal, codec=codec, now=NOW))

    assert decisions[1] == decisions[2]
    assert [s.name for s in decisions[2][1].steps] == ["tock"]
