"""The SQL stores' registry of live workers and the step messages each one holds.

A worker that prefetched step messages and died holds them in the broker's unacked set
until its visibility timeout (an hour on Redis); those steps never started, so neither a
start mark nor a heartbeat speaks for them. Each worker's main process therefore beats a
row listing the steps it holds (:meth:`WorkerRegistry.beat_worker`); recovery releases the
steps of a worker whose beats stopped (:meth:`WorkerRegistry.release_dead_workers`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import Connection, delete, func, insert, select, update

from celery_durable.engine.journal import Kind, State, Status
from celery_durable.stores.connections import SQLConnections
from celery_durable.stores.rows import aware
from celery_durable.stores.schema import events, instances, workers

#: A step message a worker holds: ``(instance_id, run, seq)``.
Held = tuple[str, int, int]

_LIVE = (Status.PENDING.value, Status.RUNNING.value)


class WorkerRegistry(SQLConnections):
    """Worker rows: beaten by each worker main process, released by recovery."""

    def beat_worker(self, worker_id: str, at: datetime, held: Sequence[Held]) -> None:
        """Record that worker ``worker_id`` is alive at ``at`` and holds ``held``."""
        values = {
            "beat_at": aware(at, "at"),
            "reserved": json.dumps([list(step) for step in held]),
        }
        with self._transaction(write=True) as conn:
            changed = conn.execute(
                update(workers).where(workers.c.worker_id == worker_id).values(**values)
            ).rowcount
            if not changed:
                conn.execute(insert(workers).values(worker_id=worker_id, **values))

    def forget_worker(self, worker_id: str) -> None:
        """Remove a worker that stops cleanly (its messages were acked or requeued)."""
        with self._transaction(write=True) as conn:
            conn.execute(delete(workers).where(workers.c.worker_id == worker_id))

    def held_steps(self, silent_since: datetime) -> tuple[set[Held], bool]:
        """The steps every worker row lists (its worker alive or not), and whether any
        worker's beats stopped before ``silent_since`` (one read of the worker rows)."""
        silent_since = aware(silent_since, "silent_since")
        held: set[Held] = set()
        dead = False
        with self._read() as conn:
            for beat_at, reserved in conn.execute(select(workers.c.beat_at, workers.c.reserved)):
                dead = dead or beat_at < silent_since
                held.update((i, r, s) for i, r, s in json.loads(reserved))
        return held, dead

    def release_orphaned_steps(
        self, silent_since: datetime, overdue_at: datetime, wake_by: datetime, slack: float
    ) -> int:
        """Release the steps a dead worker may have committed and died before publishing.

        For each instance a worker whose last beat is before ``silent_since`` listed
        (a step it held, or ``(id, -1, -1)``: a pass it was running), its later steps
        that are still scheduled, were sent at or after that beat (less ``slack``
        seconds) and that no worker's beat lists get ``heartbeat_at`` = ``overdue_at``,
        and the instance ``wake_at`` <= ``wake_by``: the next pass sends them again. One
        transaction; the dead workers' rows stay (``release_dead_workers`` removes them).

        Returns:
            How many steps were released.
        """
        silent_since = aware(silent_since, "silent_since")
        overdue_at = aware(overdue_at, "overdue_at")
        wake_by = aware(wake_by, "wake_by")
        released = 0
        with self._transaction(write=True) as conn:
            rows = conn.execute(select(workers.c.beat_at, workers.c.reserved)).all()
            listed = {tuple(step) for _, reserved in rows for step in json.loads(reserved)}
            for beat_at, reserved in rows:
                if beat_at >= silent_since:
                    continue
                since = beat_at - timedelta(seconds=slack)
                for instance_id, run, seq in json.loads(reserved):
                    current = conn.execute(
                        select(instances.c.run).where(
                            instances.c.id == instance_id, instances.c.status.in_(_LIVE)
                        )
                    ).scalar_one_or_none()
                    if current is None or (run != -1 and run != current):
                        continue
                    later = conn.execute(
                        select(events.c.seq).where(
                            events.c.instance_id == instance_id,
                            events.c.seq > seq,
                            events.c.kind == Kind.STEP.value,
                            events.c.state == State.SCHEDULED.value,
                            func.coalesce(events.c.heartbeat_at, events.c.scheduled_at) >= since,
                        )
                    ).scalars()
                    orphans = [s for s in later if (instance_id, current, s) not in listed]
                    if not orphans:
                        continue
                    released += conn.execute(
                        update(events)
                        .where(events.c.instance_id == instance_id, events.c.seq.in_(orphans))
                        .values(heartbeat_at=overdue_at)
                    ).rowcount
                    conn.execute(
                        update(instances)
                        .where(
                            instances.c.id == instance_id,
                            (instances.c.wake_at.is_(None)) | (instances.c.wake_at > wake_by),
                        )
                        .values(wake_at=wake_by)
                    )
        return released

    def release_dead_workers(
        self, silent_since: datetime, overdue_at: datetime, wake_by: datetime
    ) -> int:
        """Release the steps held by workers whose last beat is before ``silent_since``.

        Each held step that is still scheduled (never started, not sent again since the
        worker's last beat) gets ``heartbeat_at`` = ``overdue_at`` (its message is taken
        for lost) and its live instance a ``wake_at`` of ``wake_by`` at the latest, so
        that the next pass sends it again; the worker's row goes. One transaction.

        Returns:
            How many steps were released.
        """
        silent_since = aware(silent_since, "silent_since")
        overdue_at = aware(overdue_at, "overdue_at")
        wake_by = aware(wake_by, "wake_by")
        released = 0
        with self._read() as conn:  # most ticks: nobody died, and no write transaction
            if (
                conn.execute(
                    select(workers.c.worker_id).where(workers.c.beat_at < silent_since).limit(1)
                ).first()
                is None
            ):
                return 0
        with self._transaction(write=True) as conn:
            dead = conn.execute(
                select(workers.c.worker_id, workers.c.beat_at, workers.c.reserved)
                .where(workers.c.beat_at < silent_since)
                .with_for_update(skip_locked=True)
            ).all()
            for worker_id, beat_at, reserved in dead:
                for instance_id, run, seq in json.loads(reserved):
                    released += self._release(conn, instance_id, run, seq, beat_at, overdue_at)
                    conn.execute(
                        update(instances)
                        .where(
                            instances.c.id == instance_id,
                            instances.c.status.in_(_LIVE),
                            (instances.c.wake_at.is_(None)) | (instances.c.wake_at > wake_by),
                        )
                        .values(wake_at=wake_by)
                    )
                conn.execute(delete(workers).where(workers.c.worker_id == worker_id))
        return released

    @staticmethod
    def _release(
        conn: Connection, instance_id: str, run: int, seq: int, beat_at: datetime, at: datetime
    ) -> int:
        current_run = select(instances.c.run).where(instances.c.id == instance_id).scalar_subquery()
        result = conn.execute(
            update(events)
            .where(
                events.c.instance_id == instance_id,
                events.c.seq == seq,
                events.c.kind == Kind.STEP.value,
                events.c.state == State.SCHEDULED.value,
                (events.c.heartbeat_at.is_(None)) | (events.c.heartbeat_at <= beat_at),
                current_run == run,
            )
            .values(heartbeat_at=at)
        )
        return int(result.rowcount)
