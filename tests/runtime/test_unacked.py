"""A step message a worker received and died with before any beat named it (Redis).

A subprocess takes the step's message from the real Redis queue without acking it and
dies (``os._exit``): the message sits in kombu's ``unacked`` hash, which Redis would
hand back only after its hour-long visibility timeout. When the tick finds a worker
whose beats stopped, it puts such a message back in its queue — but never one a beat
names (a live worker holds it, or the journal releases it), one whose step started, or
one delivered less than two beats ago.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from datetime import timedelta
from typing import Any

import pytest
import redis
from celery import Celery

from celery_durable import Durable, WorkflowContext
from celery_durable.runtime.liveness import release_dead_workers

TAKE_AND_DIE = """
import os, sys
from kombu import Connection
with Connection(sys.argv[1]) as conn:
    queue = conn.SimpleQueue(sys.argv[2])
    message = queue.get(timeout=10)
    print(message.headers["id"], flush=True)
    os._exit(0)  # killed: no ack, no restore at shutdown
"""


@pytest.fixture
def order(app: Celery, durable: Durable) -> Any:
    app.conf.durable_heartbeat_interval = 0.25  # two beats: 0.5 s

    @durable.step
    def pack(item: str) -> str:
        return item

    @durable.workflow
    async def ship(ctx: WorkflowContext, item: str) -> str:
        return str(await ctx.step(pack, item))

    return ship


def _take_and_die(broker_url: str, queue: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", TAKE_AND_DIE, broker_url, queue],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return out.stdout.strip()


def _queued(broker_url: str, queue: str) -> tuple[int, set[str]]:
    """How many messages wait in ``queue``, and the task ids kombu's ``unacked`` holds
    (other tests' leftovers included: the Redis database is the session's)."""
    client = redis.Redis.from_url(broker_url)
    try:
        ids = set()
        for payload in client.hvals("unacked"):
            with contextlib.suppress(ValueError, KeyError, IndexError, TypeError):
                ids.add(json.loads(payload)[0]["headers"]["id"])
        return int(client.llen(queue)), ids
    finally:
        client.close()


@pytest.mark.broker("redis")
def test_a_message_no_beat_named_goes_back_to_its_queue(
    app: Celery, durable: Durable, order: Any, broker_url: str
) -> None:
    queue = app.conf.task_default_queue
    handle = order.delay("book")  # its first pass publishes the step's message
    step = f"{handle.id}:0"
    assert _queued(broker_url, queue)[0] == 1
    assert _take_and_die(broker_url, queue) == step
    assert _queued(broker_url, queue)[0] == 0
    assert step in _queued(broker_url, queue)[1]  # lost until the visibility timeout
    durable.store.beat_worker("dead-worker", durable.now() - timedelta(minutes=1), [])
    time.sleep(0.6)

    assert release_dead_workers(durable) == 1
    waiting, unacked = _queued(broker_url, queue)
    assert (waiting, step in unacked) == (1, False)  # back in its queue, not sent twice
    assert release_dead_workers(durable) == 0  # the dead worker's row went


@pytest.mark.broker("redis")
def test_messages_named_started_or_just_delivered_are_left_alone(
    app: Celery, durable: Durable, order: Any, broker_url: str
) -> None:
    queue = app.conf.task_default_queue
    named, started, young = order.delay("a"), order.delay("b"), order.delay("c")
    for _ in range(2):
        _take_and_die(broker_url, queue)
    now = durable.now()
    durable.store.start_step(started.id, 1, 0, "runtime.test_unacked.pack", now, now)
    durable.store.beat_worker("live-worker", now, [(named.id, 1, 0)])
    time.sleep(0.6)
    _take_and_die(broker_url, queue)  # delivered less than two beats before the tick
    durable.store.beat_worker("live-worker", durable.now(), [(named.id, 1, 0)])
    durable.store.beat_worker("dead-worker", durable.now() - timedelta(minutes=1), [])

    assert release_dead_workers(durable) == 0
    waiting, unacked = _queued(broker_url, queue)
    assert waiting == 0
    assert {f"{h.id}:0" for h in (named, started, young)} <= unacked
