"""The worker main process's beat: which step messages it holds, for as long as it lives.

A prefork worker prefetches messages (``worker_prefetch_multiplier`` x concurrency; 4 x
by Celery's default) and holds them unacked until a pool process runs them. If the whole
worker dies, the broker keeps them in its unacked set until the visibility timeout (an
hour on Redis), and the steps never started: no start mark, no heartbeat. So the main
process beats a row of the store listing the durable steps it holds (reserved or
running) and the instances whose orchestrator pass it holds: as soon as a message is
received (``task_received``; messages arriving within :data:`BATCH` seconds share one
write), when the set changes, and every ``durable_heartbeat_interval`` anyway. When the
beats stop for as long as a running step's would, the tick releases its steps that never
started (:func:`release_dead_workers`), and they are sent again within the same bound as
a started one; so are the steps a dead worker's pass committed and may have died before
publishing (scheduled after its last beat, named by no beat:
``Store.release_orphaned_steps``). A worker killed within one write of receiving a
message leaves a message no beat names: on Redis, the tick then puts such messages back
in their queues from kombu's ``unacked`` hash (:mod:`.unacked`); on RabbitMQ the broker
requeues a dead consumer's messages itself.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

from celery.signals import task_received

from celery_durable.errors import DurableError
from celery_durable.runtime.ids import RESUME_TASK
from celery_durable.runtime.steps import DurableStep, parse_step_task_id

if TYPE_CHECKING:
    from celery_durable.runtime.durable import Durable

logger = logging.getLogger("celery_durable")

#: How often the held set is looked at when no message arrives.
MIN_GAP = 0.2

#: The shortest time between two beats: messages received closer together share one.
BATCH = 0.02

#: How long a received message counts as held before it shows in Celery's reserved set.
RECEIVED_GRACE = 2.0

#: How long a fork waits for a beat in progress (a store out of reach must not stop the
#: worker from replacing its pool processes for long).
FORK_WAIT = 5.0


class _ForkGuard:
    """Keeps a fork from copying the beat thread in the middle of a store call.

    The prefork pool forks replacement processes from the main process, where the beat
    thread runs. A fork copies only the forking thread: a lock that the beat thread held
    in the database driver or SQLAlchemy at that moment would stay locked for ever in
    the child. Each beat runs under this guard, and a fork waits for it (up to
    :data:`FORK_WAIT` seconds) through ``os.register_at_fork``.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._held_for_fork = False
        os.register_at_fork(
            before=self._before, after_in_parent=self._after, after_in_child=self._in_child
        )

    def _before(self) -> None:
        self._held_for_fork = self.lock.acquire(timeout=FORK_WAIT)

    def _after(self) -> None:
        if self._held_for_fork:
            self._held_for_fork = False
            self.lock.release()

    def _in_child(self) -> None:
        self.lock = threading.Lock()
        self._held_for_fork = False


_FORK_GUARD = _ForkGuard()


class WorkerBeat:
    """The thread, in a worker's main process, that beats the steps it holds."""

    def __init__(self, durable: Durable) -> None:
        self._durable = durable
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._received: dict[tuple[str, int, int], float] = {}
        self._thread: threading.Thread | None = None

    def received(self, request: Any) -> None:
        """A message was just received (``task_received``, in the consumer): beat soon,
        listing it, so that the window in which a worker holds a step nobody knows of is
        the time of one write, not a beat interval."""
        identity = self._held(request)
        if identity is not None:
            self._received[identity] = time.monotonic()
            self._wake.set()

    def start(self) -> None:
        """Start beating (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="durable-worker-beat")
            self._thread.daemon = True
            self._thread.start()

    def stop(self) -> None:
        """Stop beating and remove this worker's row (a clean shutdown)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        try:
            self._durable.store.forget_worker(self.worker_id)
        except DurableError as exc:
            logger.warning("worker beat: cannot remove %s (%s)", self.worker_id, exc)

    def held(self) -> list[tuple[str, int, int]]:
        """The durable steps whose messages this worker holds now (reserved or running)."""
        from celery.worker import state

        for _ in range(5):
            try:
                requests = list(state.reserved_requests)
                break
            except RuntimeError:  # the set changed while it was copied
                continue
        else:
            return []
        now = time.monotonic()
        found = set()
        for identity, at in list(self._received.items()):
            if now - at < RECEIVED_GRACE:
                found.add(identity)
            else:
                self._received.pop(identity, None)
        for request in requests:
            reserved = self._held(request)
            if reserved is not None:
                found.add(reserved)
        return sorted(found)

    def _held(self, request: Any) -> tuple[str, int, int] | None:
        """What a request of this worker holds: a step ``(id, run, seq)``, or
        ``(id, -1, -1)`` for an orchestrator pass of instance ``id`` (whose commit may
        schedule steps the worker then dies before sending)."""
        task = getattr(request, "task", None)
        task_id = getattr(request, "id", None)
        if isinstance(task, DurableStep) and task.durable is self._durable:
            return parse_step_task_id(task_id)
        if (
            getattr(task, "name", None) == RESUME_TASK
            and getattr(task, "durable", None) is self._durable
            and isinstance(task_id, str)
            and ":resume:" in task_id
        ):
            return (task_id.rsplit(":resume:", 1)[0], -1, -1)
        return None

    def _loop(self) -> None:
        last: list[tuple[str, int, int]] | None = None
        last_beat = 0.0
        while not self._stop.is_set():
            self._wake.wait(MIN_GAP)
            self._wake.clear()
            if self._stop.is_set():
                break
            with _FORK_GUARD.lock:
                interval = self._durable.settings.heartbeat_interval
                held = self.held()
                now = time.monotonic()
                if held == last and now - last_beat < interval:
                    continue
                try:
                    self._durable.store.beat_worker(self.worker_id, self._durable.now(), held)
                except DurableError as exc:
                    logger.warning("worker beat of %s failed: %s", self.worker_id, exc)
                    continue
                last, last_beat = held, now
            time.sleep(BATCH)  # messages arriving meanwhile share the next beat


def release_dead_workers(durable: Durable) -> int:
    """Release the never-started steps held by workers whose beats stopped (the tick).

    Returns:
        How many steps were released: each is sent again by its instance's next pass.
    """
    from celery_durable.runtime.unacked import restore_unrecorded  # (import cycle)

    now = durable.now()
    # Read before the dead rows go: a step some worker's beat named is released below, or
    # held by a live worker; either way its message is not put back from the broker.
    listed, any_dead = durable.store.held_steps(now - durable.silence_limit)
    if not any_dead:
        return 0  # most ticks: one read of the worker rows
    # A step a dead worker's pass committed and the worker died before publishing: no
    # message anywhere. It was sent after the worker's last beat (less one beat).
    orphans = durable.store.release_orphaned_steps(
        silent_since=now - durable.silence_limit,
        overdue_at=now - durable.redrive_after,
        wake_by=now,
        slack=durable.settings.heartbeat_interval,
    )
    if orphans:
        logger.warning(
            "tick: %d step(s) a dead worker scheduled and may not have sent; sending them again",
            orphans,
        )
    released = orphans + durable.store.release_dead_workers(
        silent_since=now - durable.silence_limit,
        overdue_at=now - durable.redrive_after,
        wake_by=now,
    )
    if released:
        logger.warning(
            "tick: %d step message(s) held by dead workers released; sending them again",
            released,
        )
    try:
        # Messages a dead worker received within one write of its death: no beat named
        # them (Redis only; RabbitMQ gives a dead consumer's messages back by itself).
        released += restore_unrecorded(durable, listed)
    except Exception as exc:  # the broker out of reach: the step timeout still bounds it
        logger.warning("tick: cannot look at the broker's unacked messages (%s)", exc)
    return released


def start_worker_beat(durable: Durable, sender: Any) -> WorkerBeat | None:
    """Start the beat in a worker main process whose app is ``durable``'s."""
    app = getattr(sender, "app", None)
    if app is not durable.app:
        return None
    beat = WorkerBeat(durable)
    task_received.connect(_forward_to(beat), weak=False)
    beat.start()
    return beat


def _forward_to(beat: WorkerBeat) -> Any:
    def on_received(sender: Any = None, request: Any = None, **_: Any) -> None:
        beat.received(request)

    return on_received
