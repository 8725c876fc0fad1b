"""Eager next step and sticky execution (issue 10) on a real worker and Redis, both stores:
a run of quick steps goes without a broker message per step, and everything that must
not run eagerly (another queue, a rate limit, a time limit, a gather, the setting off)
is published as before; signals racing with the run, failures, compensations and Celery
retries come out as they do without it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from celery.signals import before_task_publish

from celery_durable import Durable, WorkflowContext, WorkflowFailed, WorkflowStuck, current_step
from celery_durable.runtime.ids import parse_step_task_id
from runtime.waiting import wait_for


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Any, postgres_db_url: str) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/journal.sqlite3"
    return postgres_db_url


@pytest.fixture
def published() -> Iterator[list[str]]:
    """The task ids of the step messages published while the test runs."""
    sent: list[str] = []
    lock = threading.Lock()

    def record(headers: Any = None, **_: Any) -> None:
        task_id = (headers or {}).get("id")
        if parse_step_task_id(task_id) is not None:
            with lock:
                sent.append(task_id)

    before_task_publish.connect(record, weak=False)
    yield sent
    before_task_publish.disconnect(record)


def test_a_run_of_quick_steps_takes_one_message(
    durable: Durable, worker: Any, published: list[str]
) -> None:
    keys: list[tuple[str, int]] = []

    @durable.step
    def add(x: int) -> int:
        info = current_step()
        assert info is not None
        keys.append((info.idempotency_key, info.attempt))
        return x + 1

    @durable.workflow
    async def count(ctx: WorkflowContext, n: int) -> int:
        x = 0
        for _ in range(n):
            x = await ctx.step(add, x)
        return x

    with worker():
        handle = count.delay(30)
        assert handle.result(timeout=30) == 30
    assert published == [f"{handle.id}:0"]  # the first step; the others ran in its task
    assert keys == [(f"{handle.id}:{seq}", 1) for seq in range(30)]
    history = handle.history()
    assert [event.attempts for event in history] == [1] * 30
    assert all(e.started_at is not None and e.completed_at is not None for e in history)
    assert durable.live.hits >= 29  # each pass continued the suspended workflow


def test_the_bound_publishes_the_next_step(
    app: Celery, durable: Durable, worker: Any, published: list[str]
) -> None:
    app.conf.durable_eager_steps = 4

    @durable.step
    def add(x: int) -> int:
        return x + 1

    @durable.workflow
    async def count(ctx: WorkflowContext, n: int) -> int:
        x = 0
        for _ in range(n):
            x = await ctx.step(add, x)
        return x

    with worker():
        handle = count.delay(12)
        assert handle.result(timeout=30) == 12
    # Each message's task runs its step and 4 more: seq 0, 5, 10 are published.
    assert published == [f"{handle.id}:{seq}" for seq in (0, 5, 10)]


def test_turned_off_every_step_is_a_message(
    app: Celery, durable: Durable, worker: Any, published: list[str]
) -> None:
    app.conf.durable_eager_steps = 0

    @durable.step
    def add(x: int) -> int:
        return x + 1

    @durable.workflow
    async def count(ctx: WorkflowContext, n: int) -> int:
        x = 0
        for _ in range(n):
            x = await ctx.step(add, x)
        return x

    with worker():
        handle = count.delay(5)
        assert handle.result(timeout=30) == 5
    assert published == [f"{handle.id}:{seq}" for seq in range(5)]


def test_other_queues_rate_limits_time_limits_and_gathers_are_published(
    app: Celery, durable: Durable, worker: Any, published: list[str]
) -> None:
    other = f"{app.conf.task_default_queue}-other"
    app.conf.task_routes = {"eager.elsewhere": {"queue": other}}

    @durable.step
    def plain(x: int) -> int:
        return x + 1

    @durable.step(name="eager.elsewhere")
    def elsewhere(x: int) -> int:
        return x + 1

    @durable.step(rate_limit="1000/s")
    def limited(x: int) -> int:
        return x + 1

    @durable.step(time_limit=30)
    def bounded(x: int) -> int:
        return x + 1

    @durable.workflow
    async def mix(ctx: WorkflowContext) -> int:
        x = await ctx.step(plain, 0)  # seq 0: published (the first)
        x = await ctx.step(elsewhere, x)  # seq 1: another queue
        x = await ctx.step(plain, x)  # seq 2: from the other queue: published
        x = await ctx.step(limited, x)  # seq 3: a rate limit
        x = await ctx.step(plain, x)  # seq 4: eager (after a rate-limited step? see below)
        x = await ctx.step(bounded, x)  # seq 5: a time limit
        x = await ctx.step(plain, x)  # seq 6: from a time-limited task: published
        a, b = await ctx.gather(ctx.step(plain, x), ctx.step(plain, x))  # seq 7, 8
        return int(a + b)

    with worker(queues=[app.conf.task_default_queue, other]):
        handle = mix.delay()
        assert handle.result(timeout=30) == 16
    seqs = sorted(parse_step_task_id(task_id)[2] for task_id in published)  # type: ignore[index]
    # seq 4 runs eagerly after seq 3 (a rate limit applies to the message that carries
    # it, and seq 4 has none); everything else is a message of its own.
    assert seqs == [0, 1, 2, 3, 5, 6, 7, 8]


def test_failures_and_compensations_run_in_the_chain(durable: Durable, worker: Any) -> None:
    undone: list[int] = []

    @durable.step
    def book(i: int) -> int:
        if i == 5:
            raise ValueError("sold out")
        return i

    @durable.step
    def unbook(i: int) -> None:
        undone.append(i)

    @durable.workflow
    async def trip(ctx: WorkflowContext) -> str:
        async with ctx.saga() as saga:
            for i in range(6):
                await ctx.step(book, i)
                saga.compensate(unbook, i)
        return "booked"

    with worker():
        handle = trip.delay()
        with pytest.raises(WorkflowFailed) as failed:
            handle.result(timeout=30)
    assert failed.value.type == "ValueError"
    assert undone == [4, 3, 2, 1, 0]


def test_a_celery_retry_in_the_chain_is_a_message(durable: Durable, worker: Any) -> None:
    attempts: list[int] = []

    @durable.step
    def first() -> int:
        return 1

    @durable.step(bind=True, max_retries=3)
    def flaky(self: Any, x: int) -> int:
        info = current_step()
        assert info is not None
        attempts.append(info.attempt)
        if len(attempts) < 3:
            raise self.retry(countdown=0.1)
        return x + 1

    @durable.workflow
    async def wf(ctx: WorkflowContext) -> int:
        x = await ctx.step(first)
        x = await ctx.step(flaky, x)
        return int(await ctx.step(first) + x)

    with worker():
        handle = wf.delay()
        assert handle.result(timeout=30) == 3
    assert attempts == [1, 2, 3]
    assert [event.attempts for event in handle.history()] == [1, 3, 1]


def test_signals_racing_with_the_chain_are_all_taken(durable: Durable, worker: Any) -> None:
    @durable.step
    def add(x: int) -> int:
        return x + 1

    @durable.workflow
    async def wf(ctx: WorkflowContext, n: int, signals: int) -> list[Any]:
        x = 0
        for _ in range(n):
            x = await ctx.step(add, x)
        got = [await ctx.wait_signal("s") for _ in range(signals)]
        return [x, got]

    with worker():
        handle = wf.delay(200, 10)
        for i in range(10):
            handle.signal("s", i)  # each bumps the version under the running chain
        assert handle.result(timeout=60) == [200, list(range(10))]
    assert [event.attempts for event in handle.history() if event.kind.value == "step"] == [1] * 200


def test_the_first_pass_runs_in_the_caller(
    app: Celery, durable: Durable, published: list[str]
) -> None:
    @durable.step
    def add(x: int) -> int:
        return x + 1

    @durable.workflow
    async def wf(ctx: WorkflowContext) -> int:
        token = await ctx.run(lambda: 41)  # local: journaled by the first pass
        return int(await ctx.step(add, token))

    handle = wf.delay()  # no worker: only the caller's pass happened
    history = handle.history()
    assert handle.status() == "running"
    assert [(e.kind.value, e.state.value) for e in history] == [
        ("run", "completed"),
        ("step", "scheduled"),
    ]
    assert published == [f"{handle.id}:1"]  # the step, from here; no resume message


def test_turned_off_the_first_pass_is_a_workers(
    app: Celery, durable: Durable, worker: Any, published: list[str]
) -> None:
    app.conf.durable_start_in_caller = False

    @durable.step
    def add(x: int) -> int:
        return x + 1

    @durable.workflow
    async def wf(ctx: WorkflowContext) -> int:
        return int(await ctx.step(add, 1))

    handle = wf.delay()
    assert handle.status() == "pending"
    assert handle.history() == []
    with worker():
        assert handle.result(timeout=30) == 2


def test_a_cancel_during_a_chain_stops_it_and_compensates(durable: Durable, worker: Any) -> None:
    undone: list[int] = []
    gate = threading.Event()

    @durable.step
    def book(i: int) -> int:
        if i == 20:
            gate.wait(10)  # the cancel lands while the chain runs
        return i

    @durable.step
    def unbook(i: int) -> None:
        undone.append(i)

    @durable.workflow
    async def trip(ctx: WorkflowContext) -> str:
        async with ctx.saga() as saga:
            for i in range(100):
                await ctx.step(book, i)
                saga.compensate(unbook, i)
        return "booked"

    with worker():
        handle = trip.delay()
        wait_for(lambda: len(handle.history()) > 20)
        handle.cancel()
        gate.set()
        with pytest.raises(WorkflowFailed) as failed:
            handle.result(timeout=30)
    assert failed.value.type == "WorkflowCancelled"
    booked = [e for e in handle.history() if e.name.endswith(".book")]
    assert 20 < len(booked) < 100
    # Every step the workflow saw booked is compensated, newest first. The one in flight
    # when the cancel landed is too if its outcome's pass came first; if the cancel's
    # pass came first, the cancel was thrown at its await (as documented) and the saga
    # never registered its compensation.
    assert undone in (
        list(range(len(booked) - 1, -1, -1)),
        list(range(len(booked) - 2, -1, -1)),
    )


def test_a_bug_before_the_first_wait_parks_the_instance_not_the_caller(
    durable: Durable, worker: Any
) -> None:
    @durable.workflow
    async def broken(ctx: WorkflowContext) -> None:
        raise KeyError("bug")  # in the first pass, which runs in the caller

    handle = broken.delay()  # returns: the caller's pass is not committed, a worker's is
    with worker(), pytest.raises(WorkflowStuck) as stuck:
        handle.result(timeout=30)
    assert stuck.value.type == "KeyError"


def test_a_pass_that_sends_a_lost_step_again_publishes_the_next_one(
    app: Celery, durable: Durable, worker: Any, published: list[str]
) -> None:
    app.conf.durable_step_timeout = 1  # the step no worker takes is soon overdue
    app.conf.durable_eager_seconds = 10  # (so that slowish's task would hand on)
    nowhere = f"{app.conf.task_default_queue}-nowhere"
    app.conf.task_routes = {"eager.unserved": {"queue": nowhere}}

    @durable.step(name="eager.unserved")
    def unserved() -> str:
        return "never"

    @durable.step
    def quick(x: int) -> int:
        return x + 1

    @durable.step
    def slowish(x: int) -> int:
        time.sleep(1.3)  # longer than the step timeout: unserved is overdue again
        return x + 1

    @durable.workflow
    async def wf(ctx: WorkflowContext) -> int:
        index, _ = await ctx.first(ctx.step(unserved), ctx.step(quick, 0))  # seq 0, 1
        assert index == 1
        await ctx.sleep(1.5)  # seq 3 (the race record is seq 2): its pass resends seq 0
        x = await ctx.step(slowish, 1)  # seq 4: published by the timer's pass
        return int(await ctx.step(quick, x))  # seq 5: its pass also resends seq 0

    with worker():
        handle = wf.delay()
        assert handle.result(timeout=30) == 3
    sent = [parse_step_task_id(task_id)[2] for task_id in published]  # type: ignore[index]
    assert sent.count(0) >= 3  # unserved, sent again by the timer's pass and seq 4's
    assert 5 in sent  # published, not handed: that commit also re-sent a step
    assert handle.history()[5].attempts == 1  # run once, not marked then found silent
