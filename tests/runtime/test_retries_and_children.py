"""Celery retries vs recovery, unknown workflows, foreign children and parent-close
policies (issue 9, items 4, 5, 6 and 12), on a real worker and Redis, both stores.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import redis
from celery import Celery

from celery_durable import Durable, Status, StepFailed, WorkflowContext, current_step
from celery_durable.client import start
from runtime.waiting import wait_for, waiting_on


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Any, postgres_db_url: str) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/journal.sqlite3"
    return postgres_db_url


def test_celery_retries_longer_than_the_step_timeout_are_not_sent_again(
    app: Celery, durable: Durable, worker: Any
) -> None:
    app.conf.durable_step_timeout = 1  # the retry's countdown (2 s) is longer
    app.conf.durable_heartbeat_interval = 0.2
    attempts: list[tuple[str, int]] = []

    @durable.step(bind=True, max_retries=2)
    def flaky(self: Any) -> str:
        info = current_step()
        assert info is not None
        attempts.append((info.idempotency_key, info.attempt))
        if len(attempts) < 3:
            raise self.retry(countdown=2)
        return "ok"

    @durable.workflow
    async def wf(ctx: WorkflowContext) -> str:
        return str(await ctx.step(flaky))

    with worker():
        handle = wf.delay()
        deadline = time.monotonic() + 30
        while handle.status() != Status.COMPLETED and time.monotonic() < deadline:
            durable.recover()  # the tick, as often as it can be: it must not re-send
            time.sleep(0.1)
        assert handle.result(timeout=1) == "ok"
    key = f"{handle.id}:0"
    assert attempts == [(key, 1), (key, 2), (key, 3)]
    assert handle.history()[0].attempts == 3


@pytest.mark.broker("redis")  # inspects the Redis queue
def test_an_unknown_workflow_waits_with_one_resume_at_a_time(
    app: Celery, durable: Durable, worker: Any, redis_url: str
) -> None:
    app.conf.durable_tick_interval = 0.2
    # The claim's lease: a worker slower than this to take the resume (a loaded machine)
    # would let the next tick send a second one, by design.
    app.conf.durable_step_timeout = 3
    queue = app.conf.task_default_queue
    client = redis.Redis.from_url(redis_url)
    handle = start(durable, "not.deployed", ("x",), {})
    try:
        with worker():
            deadline = time.monotonic() + 8
            most = 0
            while time.monotonic() < deadline:
                durable.recover()
                most = max(most, int(client.llen(queue)) + len(_unacked(client, queue)))
                time.sleep(0.05)
            status = handle.status()
    finally:
        client.close()
    assert most <= 1  # never more than one resume message in flight
    assert status == Status.PENDING
    assert status.note == "waiting for a worker that knows workflow not.deployed"


def _unacked(client: redis.Redis, queue: str) -> list[bytes]:
    import json

    return [raw for raw in client.hvals("unacked") if json.loads(raw)[2] == queue]


def test_a_child_id_owned_by_another_instance_fails_with_workflow_id_conflict(
    durable: Durable, worker: Any
) -> None:
    @durable.workflow
    async def invoice(ctx: WorkflowContext, who: str) -> str:
        return f"invoice for {who}"

    @durable.workflow
    async def refund(ctx: WorkflowContext, who: str) -> str:
        return f"refund for {who}"

    @durable.workflow
    async def parent(ctx: WorkflowContext) -> str:
        try:
            return str(await ctx.child(refund, "bob", workflow_id="doc-1"))
        except StepFailed as failed:
            return f"{failed.type}: {failed.message}"

    with worker():
        assert invoice.apply_async(("alice",), workflow_id="doc-1").result(timeout=30) == (
            "invoice for alice"
        )
        result = parent.delay().result(timeout=30)
    assert result.startswith("WorkflowIdConflict: child workflow id 'doc-1' already belongs to")
    assert durable.handle("doc-1").result(timeout=1) == "invoice for alice"


@pytest.mark.parametrize(
    ("policy", "child_ends"),
    [("terminate", "WorkflowTerminated"), ("cancel", "WorkflowCancelled"), ("abandon", None)],
)
def test_parent_close_policies_on_terminate(
    durable: Durable, worker: Any, policy: str, child_ends: str | None
) -> None:
    @durable.workflow
    async def child(ctx: WorkflowContext) -> Any:
        return await ctx.wait_signal("go")

    @durable.workflow
    async def parent(ctx: WorkflowContext) -> Any:
        return await ctx.child(child, on_parent_close=policy)

    with worker():
        handle = parent.delay()
        kid = durable.handle(f"{handle.id}:0")
        wait_for(lambda: len(durable.list(workflow=child.name)) == 1 and waiting_on(kid, "signal"))
        assert handle.terminate() is True
        if child_ends is None:
            time.sleep(0.5)
            assert kid.status() == Status.RUNNING  # abandoned: it runs on alone
            kid.signal("go", "still here")
            assert kid.result(timeout=30) == "still here"
        else:
            wait_for(lambda: kid.status().state.is_terminal)
            assert kid.status().error is not None
            assert kid.status().error.type == child_ends  # type: ignore[union-attr]


def test_a_parent_that_completes_terminates_the_child_it_left(
    durable: Durable, worker: Any
) -> None:
    release = threading.Event()

    @durable.workflow
    async def slow(ctx: WorkflowContext) -> Any:
        return await ctx.wait_signal("never")

    @durable.workflow
    async def parent(ctx: WorkflowContext) -> int:
        winner, _ = await ctx.first(ctx.child(slow), ctx.sleep(0.2))
        return int(winner)

    with worker():
        handle = parent.delay()
        assert handle.result(timeout=30) == 1  # the timer won the race
        kid = durable.handle(f"{handle.id}:0")
        wait_for(lambda: kid.status().state.is_terminal)
    release.set()
    error = kid.status().error
    assert error is not None
    assert error.type == "WorkflowTerminated"
    assert f"its parent {handle.id} completed" in error.message
