"""Durable timers and the tick, with a real worker (and embedded beat) on real Redis."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import redis
from celery import Celery

from celery_durable import ConfigurationError, Durable, Status, WorkflowContext
from celery_durable.testing import Clock
from runtime.waiting import wait_for, waiting_on


@pytest.fixture
def app(app: Celery, tmp_path: Any) -> Celery:
    app.conf.update(
        durable_tick_interval=0.5,
        durable_eta_max=2,
        durable_step_timeout=3,
        beat_schedule_filename=str(tmp_path / "beat-schedule"),
    )
    return app


def broker_etas(redis_url: str, queue: str) -> list[float]:
    """Seconds from now to the ETA of every message of ``queue`` the broker holds, queued
    or unacked (other tests' apps share the Redis server, with queues of their own)."""
    client = redis.Redis.from_url(redis_url)
    messages: list[dict[str, Any]] = []
    for raw in client.lrange(queue, 0, -1):
        messages.append(json.loads(raw))
    for raw in client.hvals("unacked"):  # fetched by a worker, held until due
        message, _exchange, routing_key = json.loads(raw)
        if routing_key == queue:
            messages.append(message)
    now = datetime.now(timezone.utc)
    out = []
    for message in messages:
        eta = message.get("headers", {}).get("eta") if isinstance(message, dict) else None
        if eta:
            out.append((datetime.fromisoformat(eta) - now).total_seconds())
    return out


def test_short_timer_fires_once_never_early(durable: Durable, worker: Any) -> None:
    marks: list[datetime] = []

    @durable.step
    def mark() -> None:
        marks.append(datetime.now(timezone.utc))

    @durable.workflow
    async def wf(ctx: WorkflowContext) -> str:
        await ctx.step(mark)
        await ctx.sleep(1.0)
        await ctx.step(mark)
        return "woke"

    with worker():
        handle = wf.delay()
        assert handle.result(timeout=30) == "woke"
    timer = handle.history()[1]
    assert timer.kind.value == "timer"
    (fire_at,) = timer.args
    assert timer.completed_at is not None
    assert timer.completed_at >= fire_at  # journaled firing is never before its time
    assert marks[1] >= fire_at
    assert marks[1] - marks[0] >= timedelta(seconds=1)
    assert [e.state.value for e in handle.history()] == ["completed"] * 3


@pytest.mark.broker("redis")  # inspects the Redis queue
def test_long_timer_lives_in_the_store_and_the_tick_fires_it(
    durable: Durable, worker: Any, redis_url: str
) -> None:
    @durable.step
    def noop() -> None:
        return None

    @durable.workflow
    async def wf(ctx: WorkflowContext) -> str:
        await ctx.step(noop)
        await ctx.sleep(4)  # longer than durable_eta_max (2 s): no ETA message
        return "woke"

    with worker(beat=True):
        handle = wf.delay()
        wait_for(lambda: waiting_on(handle, "timer"))
        instance = durable.store.get(handle.id)
        assert instance is not None
        assert instance.wake_at == handle.history()[-1].args[0]
        assert all(
            eta <= 2.0 for eta in broker_etas(redis_url, durable.app.conf.task_default_queue)
        )
        assert handle.result(timeout=30) == "woke"
    timer = handle.history()[-1]
    (fire_at,) = timer.args
    assert timer.completed_at is not None
    # Fired by the tick: never before its time, and about a tick (0.5 s) after it; the
    # bound is loose because a loaded 2-core CI machine delays beat and the worker.
    assert fire_at <= timer.completed_at <= fire_at + timedelta(seconds=5)


@pytest.mark.broker("redis")  # inspects the Redis queue
def test_no_broker_message_carries_an_eta_beyond_eta_max(
    durable: Durable, worker: Any, redis_url: str
) -> None:
    @durable.workflow
    async def sleeper(ctx: WorkflowContext, seconds: float) -> None:
        await ctx.sleep(seconds)

    with worker(beat=True):
        handles = [sleeper.delay(s) for s in (0.5, 1.5, 3, 30, 3600, 86400 * 365)]
        wait_for(lambda: all(len(h.history()) == 1 for h in handles))
        etas = broker_etas(redis_url, durable.app.conf.task_default_queue)
        assert etas, "the short timers must be sent as ETA messages"
        assert max(etas) <= 2.0
        wait_for(lambda: handles[2].status() == Status.COMPLETED, timeout=20)
    assert [h.status() for h in handles[3:]] == [Status.RUNNING] * 3


def test_schedule_runs_a_year_in_seconds_with_the_testing_clock(
    durable: Durable, worker: Any
) -> None:
    sent: list[tuple[str, datetime]] = []
    clock = Clock()
    durable.clock = clock

    @durable.step
    def send_mail(subject: str) -> None:
        sent.append((subject, clock()))

    @durable.workflow
    async def schedule(ctx: WorkflowContext) -> None:
        await ctx.step(send_mail, "welcome")
        await ctx.sleep(timedelta(days=30))
        await ctx.step(send_mail, "30 days")
        await ctx.sleep(timedelta(days=335))
        await ctx.step(send_mail, "a year")

    with worker(beat=True):
        handle = schedule.delay()
        started = clock()
        for count, days in ((1, 30), (2, 335)):
            wait_for(lambda c=count: len(sent) == c and waiting_on(handle, "timer"))
            time.sleep(1.0)  # ticks come and go: nothing fires before its time
            assert len(sent) == count
            clock.advance(days=days)
        handle.result(timeout=30)
    assert [s for s, _ in sent] == ["welcome", "30 days", "a year"]
    assert sent[1][1] - started >= timedelta(days=30)
    assert sent[2][1] - started >= timedelta(days=365)
    timers = [e for e in handle.history() if e.kind.value == "timer"]
    assert all(t.completed_at and t.completed_at >= t.args[0] for t in timers)


@pytest.mark.broker("redis")  # inspects the Redis queue
def test_lost_start_message_is_recovered_by_the_tick(
    durable: Durable, worker: Any, redis_url: str, app: Celery
) -> None:
    @durable.workflow
    async def wf(ctx: WorkflowContext) -> str:
        return "started"

    handle = wf.delay()
    # The broker loses the message (e.g. Redis restarted without persistence).
    client = redis.Redis.from_url(redis_url)
    assert client.delete(app.conf.task_default_queue) == 1
    with worker(beat=True):
        # durable_step_timeout is 3 s: then the instance is overdue and the tick re-drives it.
        assert handle.result(timeout=30) == "started"


def test_two_ticks_at_once_claim_each_instance_once(durable: Durable) -> None:
    clock = Clock()
    durable.clock = clock

    @durable.workflow
    async def wf(ctx: WorkflowContext) -> None:
        return None

    sent: list[str] = []
    lock = threading.Lock()

    def send_resume(instance_id: str, countdown: float | None = None, producer: Any = None) -> bool:
        with lock:
            sent.append(instance_id)
        return True

    durable.send_resume = send_resume  # type: ignore[method-assign]
    ids = {wf.delay().id for _ in range(300)}
    sent.clear()
    clock.advance(seconds=60)  # every start is now overdue
    counts: list[int] = []
    threads = [threading.Thread(target=lambda: counts.append(durable.recover())) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(counts) == 300
    assert sorted(sent) == sorted(ids)
    assert durable.recover() == 0  # claimed instances are leased, not due again at once


def test_eta_max_must_stay_below_the_visibility_timeout(app: Celery) -> None:
    app.conf.durable_eta_max = 4000
    app.conf.broker_transport_options = {"visibility_timeout": 3600}
    durable = Durable(app)
    with pytest.raises(ConfigurationError, match=r"durable_eta_max \(4000 s\) must be below"):
        _ = durable.settings
