"""Step messages a Redis worker received and died with before it could list them.

A worker's main process lists the step messages it holds within one write of receiving
them (:mod:`.liveness`); a worker killed inside that write leaves a message that no
beat names. RabbitMQ hands such a message back as soon as the dead consumer's connection
drops; Redis keeps it in kombu's ``unacked`` hash until the visibility timeout (an hour).
So when the tick finds a worker whose beats stopped, it also looks there: a durable step
message delivered longer ago than two beats, whose step never started, and that no live
worker's beat holds, belonged to a dead worker — it is put back in its queue (kombu's own
restore, atomic with removing it from ``unacked``), where a live worker takes it.

Queued messages are never touched (they are not in ``unacked``), nor messages a live
worker holds (its beats list them), nor steps that started (their heartbeats speak).
"""

from __future__ import annotations

import json
import logging
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from celery_durable.engine.journal import State
from celery_durable.runtime.ids import parse_step_task_id

if TYPE_CHECKING:
    from celery_durable.runtime.durable import Durable

logger = logging.getLogger("celery_durable")

Held = tuple[str, int, int]


def restore_unrecorded(durable: Durable, listed: set[Held]) -> int:
    """Put back in their queues the never-started step messages in Redis's ``unacked``
    that no worker's beat names and that were delivered more than two beats ago.

    Args:
        durable: the runtime (its app's broker, its store).
        listed: the steps the workers' beats name, alive or dead (a dead worker's are
            released through the journal instead; a live worker's are its own).

    Returns:
        How many messages were put back (0 on brokers other than Redis).
    """
    with durable.app.connection_for_write() as conn:
        if getattr(conn.transport, "driver_type", None) != "redis":
            return 0  # RabbitMQ requeues a dead consumer's unacked messages itself
        channel: Any = conn.default_channel
        client = channel.client
        age = 2 * durable.settings.heartbeat_interval
        ceiling = time.time() - age
        tags = client.zrange(channel.unacked_index_key, ceiling, 0, desc=True, byscore=True)
        if not tags:
            return 0
        found: dict[Any, Held] = {}
        for tag, payload in zip(tags, client.hmget(channel.unacked_key, tags), strict=True):
            identity = _step_of(payload)
            if identity is not None and identity not in listed:
                found[tag] = identity
        if not found:
            return 0
        unstarted = _never_started(durable, set(found.values()), age)
        restored = 0
        for tag, identity in found.items():
            if identity in unstarted:
                channel.qos.restore_by_tag(tag, client)
                restored += 1
        if restored:
            logger.warning(
                "tick: %d step message(s) received by dead workers before they could say so "
                "put back in their queues",
                restored,
            )
        return restored


def _step_of(payload: Any) -> Held | None:
    """The step a message of kombu's ``unacked`` hash carries, if it is one."""
    if payload is None:
        return None
    try:
        raw = json.loads(payload)[0]
        task_id = raw["headers"]["id"]
    except (ValueError, TypeError, KeyError, IndexError):
        return None
    return parse_step_task_id(task_id) if isinstance(task_id, str) else None


def _never_started(durable: Durable, steps: set[Held], age: float) -> set[Held]:
    """Those of ``steps`` whose journal record is of that run, scheduled (never started)
    and sent at least ``age`` seconds ago (a retry waiting for its due time is not)."""
    ids = sorted({instance_id for instance_id, _, _ in steps})
    runs = {instance.id: instance.run for instance in durable.store.get_many(ids)}
    pending = durable.store.pending_events(ids)
    sent_before = durable.now() - timedelta(seconds=age)
    unstarted = set()
    for instance_id, run, seq in steps:
        if runs.get(instance_id) != run:
            continue
        for event in pending.get(instance_id, ()):
            if (
                event.seq == seq
                and event.state is State.SCHEDULED
                and (event.heartbeat_at or event.scheduled_at) <= sent_before
            ):
                unstarted.add((instance_id, run, seq))
    return unstarted
