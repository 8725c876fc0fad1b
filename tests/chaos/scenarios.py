"""A worker SIGKILLed in the middle of a step: the durable workflow, and the bare chain.

Shared by ``test_worker_killed.py`` and ``bench/recovery.py``. Each scenario starts its
own worker + beat subprocesses on the given broker and store, kills the worker's process
group 1.5 s (by default) into the 4 s middle step, starts a replacement worker at once, and
measures how long after the kill the work completes, if it does within the wait.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import redis
from celery import chain

from celery_durable import HistoryEvent, Status
from celery_durable.client import start
from chaos.apps import KILL_WORKFLOW, ChaosApp, Record, make_app, read_records, settings_env
from chaos.cluster import Cluster, wait_for

#: Seconds into the slow step at which the worker is killed.
KILL_INTO_STEP = 1.5


@dataclass
class KillRun:
    """What one scenario observed."""

    completed: bool
    waited: float
    """Seconds waited after the kill (for completion, or in vain)."""
    recovery: float | None = None
    """Seconds from the SIGKILL to completion (the journal's commit, or the last task's end)."""
    records: list[Record] = field(default_factory=list)
    history: list[HistoryEvent] = field(default_factory=list)
    stranded: list[str] = field(default_factory=list)
    """Task names of this test's messages still in Redis's ``unacked`` hash at the end."""
    logs: str = ""

    def starts(self, label: str) -> list[Record]:
        return [r for r in self.records if r.label == label and r.event == "start"]

    def ends(self, label: str) -> list[Record]:
        return [r for r in self.records if r.label == label and r.event == "end"]


def unacked(broker: str, queue: str) -> list[tuple[str, str | None]]:
    """``(task name, eta)`` of each message fetched from ``queue`` and never acked (kombu's
    Redis transport keeps them in the ``unacked`` hash until ``visibility_timeout``)."""
    client = redis.Redis.from_url(broker)
    try:
        out = []
        for raw in client.hvals("unacked"):
            message, _exchange, routing_key = json.loads(raw)
            if routing_key == queue:
                headers = message.get("headers", {})
                out.append((headers.get("task", "?"), headers.get("eta")))
        return out
    finally:
        client.close()


def unacked_tasks(broker: str, queue: str) -> list[str]:
    """Task names of :func:`unacked` messages."""
    return [task for task, _eta in unacked(broker, queue)]


class Setup:
    """An app (in this process, to send work) and a cluster (subprocesses) on one queue,
    with the record file its tasks write. ``close()`` stops everything."""

    def __init__(self, root: Path, broker: str, store: str, eta_max: float = 2.0) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.broker = broker
        self.queue = f"chaos-{uuid.uuid4().hex[:8]}"
        self.record = root / "records.txt"
        env = settings_env(
            broker=broker, store=store, queue=self.queue, record=self.record, eta_max=eta_max
        )
        self.chaos: ChaosApp = make_app(
            broker=broker, store=store, queue=self.queue, record=self.record, eta_max=eta_max
        )
        _ = self.chaos.durable.store  # create the schema before the workers race to
        self.cluster = Cluster(root, env)
        self.closed = False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.cluster.stop_all()
        finally:
            self.chaos.durable.store.close()
            self.chaos.app.close()


def _kill_mid_step(setup: Setup, label: str, kill_into: float) -> float:
    """Wait until ``label`` starts, kill the worker ``kill_into`` seconds into it, start
    another at once; the wall-clock time of the kill."""
    wait_for(lambda: _started(setup, label), 30, f"{label} started")
    (first,) = [r for r in read_records(setup.record) if r.label == label]
    time.sleep(max(0.0, first.at + kill_into - time.time()))
    killed_at = time.time()
    setup.cluster.kill(setup.cluster.procs[0])
    setup.cluster.worker("worker2")
    return killed_at


def _started(setup: Setup, label: str) -> bool:
    return any(r.label == label and r.event == "start" for r in read_records(setup.record))


def durable_kill(
    root: Path,
    broker: str,
    store: str,
    timeout: float = 20.0,
    kill_into: float = KILL_INTO_STEP,
) -> KillRun:
    """Workflow A -> B (4 s) -> C; the worker dies ``kill_into`` seconds into B; wait up to
    ``timeout`` for the workflow to complete."""
    setup = Setup(root, broker, store)
    run = KillRun(completed=False, waited=0.0)
    try:
        worker1 = setup.cluster.worker("worker1")
        setup.cluster.beat("beat")
        setup.cluster.wait_ready(worker1)
        handle = start(setup.chaos.durable, KILL_WORKFLOW, (), {})
        killed_at = _kill_mid_step(setup, "B", kill_into)
        journal = setup.chaos.durable.store
        deadline = time.monotonic() + timeout
        instance = journal.get(handle.id)
        while instance is not None and not instance.status.is_terminal:
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
            instance = journal.get(handle.id)
        assert instance is not None
        run.waited = time.time() - killed_at
        run.completed = instance.status is Status.COMPLETED
        if run.completed:
            run.recovery = instance.updated_at.timestamp() - killed_at
        run.history = handle.history()
        run.records = read_records(setup.record)
        run.stranded = unacked_tasks(broker, setup.queue)
        return run
    except BaseException:
        setup.close()
        print(setup.cluster.logs())
        raise
    finally:
        setup.close()
        run.logs = setup.cluster.logs()


def chain_kill(root: Path, broker: str, store: str, wait: float = 30.0) -> KillRun:
    """``chain(a, b (4 s), c)`` with ``acks_late`` and ``reject_on_worker_lost``; the worker
    dies 1.5 s into b; wait ``wait`` seconds for c to run."""
    setup = Setup(root, broker, store)
    run = KillRun(completed=False, waited=0.0)
    try:
        worker1 = setup.cluster.worker("worker1")
        setup.cluster.beat("beat")  # as in the durable run (its tick finds nothing to do)
        setup.cluster.wait_ready(worker1)
        a, b, c = setup.chaos.chain_tasks
        chain(a.si(), b.si(), c.si()).apply_async()
        killed_at = _kill_mid_step(setup, "chain_B", KILL_INTO_STEP)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            run.records = read_records(setup.record)
            if any(r.label == "chain_C" and r.event == "end" for r in run.records):
                break
            time.sleep(0.1)
        run.waited = time.time() - killed_at
        run.records = read_records(setup.record)
        done = run.ends("chain_C")
        run.completed = bool(done)
        if done:
            run.recovery = done[0].at - killed_at
        run.stranded = unacked_tasks(broker, setup.queue)
        return run
    except BaseException:
        setup.close()
        print(setup.cluster.logs())
        raise
    finally:
        setup.close()
        run.logs = setup.cluster.logs()


def describe(history: list[HistoryEvent]) -> list[dict[str, Any]]:
    """The journal as plain data, for assertion messages."""

    def iso(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    return [
        {
            "seq": e.seq,
            "kind": e.kind.value,
            "name": e.name,
            "state": e.state.value,
            "attempts": e.attempts,
            "started_at": iso(e.started_at),
            "completed_at": iso(e.completed_at),
        }
        for e in history
    ]
