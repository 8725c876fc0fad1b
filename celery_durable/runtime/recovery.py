"""When an instance must be looked at next, and the tick that looks.

Every pending or running instance carries a ``wake_at``: the earliest of its timers' fire
times and its pending steps' deadlines. Nothing else keeps a workflow alive: a resume
message with an ETA is only a shortcut for a short timer, and a step's own message only
a shortcut for its result. If any message is lost (a killed worker, a broker restarted
without persistence, a crash between a commit and its publish), ``wake_at`` comes due and
the tick sends the instance's orchestrator a new message. The orchestrator then fires
due timers and sends again the steps that show no sign of life.

A step's deadline:

* not started (no worker has marked it started): sent + ``durable_step_timeout``: the
  message is presumed lost after waiting that long in the queue (a message merely queued
  behind a backlog is not sent twice sooner). A step that Celery retries counts as sent
  at the retry's due time;
* started (every step is marked started before its code runs): its last heartbeat (or
  start) + ``durable_heartbeat_interval`` x ``HEARTBEAT_MISSES``: the worker running it
  is presumed dead, even if it died in the step's first milliseconds. Such a step is
  sent again at most ``durable_max_resends`` times; once more and it fails with
  ``StepFailed`` of type ``"StepLost"`` (:func:`lost_for_good`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from celery_durable.engine.journal import Event, Kind

if TYPE_CHECKING:
    from celery_durable.runtime.durable import Durable

#: Missed heartbeats after which a running step's worker is presumed dead.
HEARTBEAT_MISSES = 5

#: How many due instances one claim takes.
CLAIM_BATCH = 500


@dataclass(frozen=True)
class Wake:
    """What a pass decided about time: when to look again, and which steps to send again."""

    at: datetime | None
    resend: tuple[Event, ...] = ()
    eta: datetime | None = None
    """The fire time of a timer near enough to be sent as a resume message with an ETA."""


def plan(
    durable: Durable,
    now: datetime,
    pending: Iterable[Event],
    new: Iterable[Event],
    timer_at: datetime | None,
    *,
    children: bool = False,
) -> Wake:
    """Decide an instance's next ``wake_at`` after a pass that leaves it waiting.

    Args:
        durable: the runtime (its settings).
        now: the pass's time.
        pending: journaled steps still without an outcome.
        new: the events this pass creates (steps scheduled, timers set, runs).
        timer_at: the earliest fire time of the timers (and signal-wait deadlines) the
            workflow waits on.
        children: the workflow waits on child workflows: a child that ends wakes its
            parent with a message; in case that message is lost, look again after a
            step timeout.
    """
    settings = durable.settings
    step_timeout = timedelta(seconds=settings.step_timeout)
    heartbeat_timeout = timedelta(seconds=settings.heartbeat_interval * HEARTBEAT_MISSES)
    candidates: list[datetime] = []
    resend: list[Event] = []
    eta = None
    new = list(new)
    if timer_at is not None:
        # Only a timer set by this pass gets its ETA message: a later pass (another
        # step's result, a duplicate) must not send it again and again.
        fresh = any(event.kind in (Kind.TIMER, Kind.SIGNAL) for event in new)
        if fresh and timer_at - now <= timedelta(seconds=settings.eta_max):
            eta = timer_at
            # The ETA message fires it; the tick is the backup if that message is lost.
            candidates.append(timer_at + timedelta(seconds=settings.tick_interval * 2))
        else:
            candidates.append(timer_at)
    for event in pending:
        if event.kind is not Kind.STEP:
            continue
        if event.started_at is not None and event.heartbeat_at is not None:
            deadline = event.heartbeat_at + heartbeat_timeout
        else:
            deadline = (event.heartbeat_at or event.scheduled_at) + step_timeout
        if deadline <= now:
            resend.append(event)
            deadline = now + step_timeout
        candidates.append(deadline)
    if children or any(event.kind is Kind.STEP for event in new):
        candidates.append(now + step_timeout)
    return Wake(at=min(candidates) if candidates else None, resend=tuple(resend), eta=eta)


def _silent_since(durable: Durable, event: Event, now: datetime) -> bool:
    """A started step whose last sign of life is older than the heartbeat timeout."""
    timeout = timedelta(seconds=durable.settings.heartbeat_interval * HEARTBEAT_MISSES)
    return (
        event.started_at is not None
        and event.heartbeat_at is not None
        and event.heartbeat_at + timeout <= now
    )


def lost_for_good(durable: Durable, now: datetime, events: Iterable[Event]) -> list[Event]:
    """The started steps whose worker fell silent once more after ``durable_max_resends``
    re-sends: a poison step (it kills its worker every time) that must fail, not loop."""
    limit = durable.settings.max_resends
    return [
        event
        for event in events
        if event.kind is Kind.STEP
        and not event.state.is_final
        and event.resends >= limit
        and _silent_since(durable, event, now)
    ]


def recover(durable: Durable, limit: int | None = None) -> int:
    """Send a resume message to every instance whose ``wake_at`` has come (the tick),
    after releasing the never-started steps held by workers whose beats stopped.

    Claims due instances in batches (two ticks running at once never claim the same
    instance) and pushes each claimed ``wake_at`` one step timeout ahead, so an instance
    whose resume message is lost again is claimed again later.

    Returns:
        How many instances were sent a resume message.
    """
    from celery_durable.runtime import observe  # (import cycle)
    from celery_durable.runtime.liveness import release_dead_workers  # (import cycle)

    # Steps whose messages a dead worker held unstarted come due now: claimed below.
    release_dead_workers(durable)
    sent = 0
    now = durable.now()
    late = None
    if durable.metrics is not None:
        from celery_durable.stores.due import oldest_due  # (SQLAlchemy: loaded by the store)

        late = oldest_due(durable.store, now)  # how late this tick is: one index probe
    lease_until = now + timedelta(seconds=durable.settings.step_timeout)
    while limit is None or sent < limit:
        batch = CLAIM_BATCH if limit is None else min(CLAIM_BATCH, limit - sent)
        claimed = durable.store.claim_due(now, lease_until, batch)
        done = _send_resumes(durable, claimed)
        sent += done
        if done < len(claimed) or len(claimed) < batch:
            break  # the broker is down (the rest were handed back), or nothing more due
    observe.ticked(durable, late, now, sent)
    return sent


def _send_resumes(durable: Durable, claimed: list[str]) -> int:
    """Send the claimed instances their resume messages, with one producer (one broker
    connection and channel) for the batch. From the first that cannot be sent (the
    broker is down) on, the claimed instances are handed back (``wake_at`` now) unsent,
    for the next tick.

    Returns:
        How many were sent.
    """
    if not claimed:
        return 0
    sent = 0
    try:
        with durable.app.producer_or_acquire() as producer:
            for instance_id in claimed:
                if not durable.send_resume(instance_id, producer=producer):
                    break
                sent += 1
    except durable.broker_errors:
        pass
    if sent < len(claimed):
        now = durable.now()
        for instance_id in claimed[sent:]:
            durable.store.pull_wake_at(instance_id, now)
    return sent
