"""The deterministic helpers of WorkflowContext: now, uuid4, is_replaying, logger."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from celery_durable.engine import WorkflowContext, replay
from celery_durable.engine.journal import Event, Instance, State, Status

T1 = datetime(2024, 3, 1, 9, 0, tzinfo=timezone.utc)
T2 = T1 + timedelta(days=3)
T3 = T2 + timedelta(days=30)

MakeInstance = Callable[..., Instance]


def completed(event: Event, output: str = "null") -> Event:
    """What the runtime journals once the step ``event`` schedules has run."""
    return dataclasses.replace(
        event, state=State.COMPLETED, output=output, completed_at=event.scheduled_at
    )


def test_context_names_its_instance(instance: MakeInstance, codec: Any) -> None:
    seen: list[tuple[str, str]] = []

    async def wf(ctx: WorkflowContext) -> None:
        seen.append((ctx.workflow_id, ctx.workflow_name))

    replay(wf, instance(id="order-7", workflow="shop.order"), [], codec=codec, now=T1)

    assert seen == [("order-7", "shop.order")]


async def timed(ctx: WorkflowContext) -> list[str]:
    started = ctx.now()
    await ctx.step("a")
    after_a = ctx.now()
    await ctx.step("b")
    return [started.isoformat(), after_a.isoformat(), ctx.now().isoformat()]


def test_now_is_the_time_of_the_pass_that_first_reached_the_point(
    instance: MakeInstance, codec: Any
) -> None:
    first = replay(timed, instance(), [], codec=codec, now=T1)
    journal = [completed(first.new_events[0])]
    second = replay(timed, instance(), journal, codec=codec, now=T2)
    journal.append(completed(second.new_events[0]))
    third = replay(timed, instance(), journal, codec=codec, now=T3)

    assert [e.scheduled_at for e in journal] == [T1, T2]
    assert third.status is Status.COMPLETED
    assert codec.loads(third.output) == [T1.isoformat(), T2.isoformat(), T3.isoformat()]
    # A later replay (e.g. after a lost commit) sees the same times up to the journal's end.
    again = replay(timed, instance(), journal, codec=codec, now=T3 + timedelta(hours=5))
    assert codec.loads(again.output)[:2] == [T1.isoformat(), T2.isoformat()]


async def ids(ctx: WorkflowContext) -> list[str]:
    first = ctx.uuid4()
    await ctx.step("a")
    return [str(first), str(ctx.uuid4()), str(ctx.uuid4())]


def test_uuid4_is_stable_across_replays_and_distinct(instance: MakeInstance, codec: Any) -> None:
    first = replay(ids, instance(), [], codec=codec, now=T1)
    journal = [completed(first.new_events[0])]
    one = codec.loads(replay(ids, instance(), journal, codec=codec, now=T2).output)
    two = codec.loads(replay(ids, instance(), journal, codec=codec, now=T3).output)
    other = codec.loads(replay(ids, instance(id="wf-2"), journal, codec=codec, now=T2).output)

    assert one == two
    assert len(set(one)) == 3
    assert set(one).isdisjoint(other)
    assert all(uuid.UUID(value).version == 4 for value in one)
    assert all(uuid.UUID(value).variant == uuid.RFC_4122 for value in one)


def test_uuid4_is_derived_from_the_workflow_id_and_call_number(
    instance: MakeInstance, codec: Any
) -> None:
    async def wf(ctx: WorkflowContext) -> str:
        return str(ctx.uuid4())

    decision = replay(wf, instance(id="wf-1"), [], codec=codec, now=T1)

    raw = bytearray(hashlib.sha256(b"wf-1\x000").digest()[:16])
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # RFC 4122 variant
    assert codec.loads(decision.output) == str(uuid.UUID(bytes=bytes(raw)))
    assert codec.loads(decision.output) == "0428131a-c086-4ff2-acee-410d2f1a62c0"


async def observed(ctx: WorkflowContext, seen: list[tuple[str, bool]]) -> None:
    seen.append(("start", ctx.is_replaying))
    await ctx.step("a")
    seen.append(("after a", ctx.is_replaying))
    await ctx.step("b")


def test_is_replaying_is_true_until_the_journal_end(instance: MakeInstance, codec: Any) -> None:
    journal = [
        completed(replay(observed_with([]), instance(), [], codec=codec, now=T1).new_events[0])
    ]

    seen: list[tuple[str, bool]] = []
    replay(observed_with(seen), instance(), journal, codec=codec, now=T2)

    assert seen == [("start", True), ("after a", False)]


def test_is_replaying_before_a_pending_step(instance: MakeInstance, codec: Any) -> None:
    first = replay(observed_with([]), instance(), [], codec=codec, now=T1)
    journal = [dataclasses.replace(first.new_events[0], state=State.STARTED)]

    seen: list[tuple[str, bool]] = []
    decision = replay(observed_with(seen), instance(), journal, codec=codec, now=T2)

    assert seen == [("start", True)]
    assert decision.new_events == []


def observed_with(seen: list[tuple[str, bool]]) -> Callable[[WorkflowContext], Any]:
    async def wf(ctx: WorkflowContext) -> None:
        await observed(ctx, seen)

    return wf


async def chatty(ctx: WorkflowContext) -> None:
    ctx.logger.info("starting")
    try:
        await ctx.step("a")
        ctx.logger.warning("a done")
        await ctx.step("b")
    finally:
        ctx.logger.error("leaving")


def test_logger_is_quiet_during_replay(
    instance: MakeInstance, codec: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="wf")

    first = replay(chatty, instance(), [], codec=codec, now=T1)
    assert [r.getMessage() for r in caplog.records] == ["starting"]
    caplog.clear()

    journal = [completed(first.new_events[0])]
    replay(chatty, instance(), journal, codec=codec, now=T2)
    assert [r.getMessage() for r in caplog.records] == ["a done"]
    [record] = caplog.records
    assert record.name == "wf"
    assert record.workflow_id == "wf-1"  # type: ignore[attr-defined]
    assert record.workflow_name == "wf"  # type: ignore[attr-defined]
    caplog.clear()

    journal.append(Event(1, journal[0].kind, "b", "[[], {}]", State.COMPLETED, T2, output="null"))
    decision = replay(chatty, instance(), journal, codec=codec, now=T3)
    assert decision.status is Status.COMPLETED
    assert [r.getMessage() for r in caplog.records] == ["leaving"]
