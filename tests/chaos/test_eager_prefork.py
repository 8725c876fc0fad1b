"""Eager chains (a step's commit hands the next step to the same task) under crashes, on
real ``celery worker --pool=prefork`` subprocesses, ``celery beat``, Redis, SQLite and
PostgreSQL.

A handed step has no message of its own: the commit that scheduled it journaled it as
started (attempt 1), and the pool process that committed runs it next. The promise under
test: if that process dies before or while running it, the step is a started step that
falls silent, so the tick sends it again within ``durable_heartbeat_interval`` x 5 + a
tick (one loss counted in its ``resends``), the chain's own message finds its step
journaled and runs nothing again, and the workflow completes with every other step run
exactly once. A handed step that kills its process every time fails as ``StepLost``.

Every step run is a line of the record file (``eager<index> <key>#<attempt> start|end pid
time``); a handed step is told apart from a published one by the journal (its start mark
is the commit that scheduled it: ``started_at == scheduled_at``) and by the workers' logs
(Celery logs ``Task ...[<id>] received`` for each message, never for a handed step).
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from servers import create_database

from celery_durable import Durable, Status, WorkflowHandle, faults
from celery_durable.client import start
from celery_durable.engine.journal import Event, State
from chaos import report
from chaos.apps import Record, read_records
from chaos.cluster import Cluster, Proc, wait_for
from chaos.trust_app import SHORT, make_app
from chaos.trust_workflows import EAGER_CHAIN, EAGER_POISON, EAGER_SLEEP_SECONDS

HEARTBEAT = 0.5
TICK = 0.5
#: How long a started step may be silent before it is presumed lost (5 heartbeats).
SILENCE = HEARTBEAT * 5
#: Process scheduling, a pass and a publish between the tick and the step's new start.
SLACK = 3.0
#: A step whose process died is sent again within this many seconds of its death.
RESEND_BOUND = SILENCE + TICK + SLACK
#: The sleeping step outlives the silence limit: only its beats keep it from a re-send.
assert EAGER_SLEEP_SECONDS > SILENCE

SETTINGS = {
    # Long enough that no queued step is ever taken for lost: only silence counts here.
    "TRUST_STEP_TIMEOUT": "10",
    "TRUST_HEARTBEAT_INTERVAL": str(HEARTBEAT),
    "TRUST_TICK_INTERVAL": str(TICK),
    "TRUST_MAX_RESENDS": "1",
    "TRUST_CRASH_POINTS": "1",
}

#: Three quick steps, one that sleeps (handed by the third's commit), three more quick.
ACTIONS = ["quick", "quick", "quick", "sleep", "quick", "quick", "quick"]
SLEEPER = ACTIONS.index("sleep")
EXPECTED = [f"{action}-{index}" for index, action in enumerate(ACTIONS)]

_databases = itertools.count()


@dataclass
class Eager:
    """One cluster (beat and a prefork worker), the test process's app on the same store
    and queue, and the record file the steps write."""

    cluster: Cluster
    durable: Durable
    record: Path
    flags: Path
    worker: Proc
    queue: str
    redis_url: str

    def start(self, workflow: str, *args: Any) -> WorkflowHandle[Any]:
        return start(self.durable, workflow, args, {})

    def records(self, workflow_id: str, label: str, event: str = "start") -> list[Record]:
        return [
            r
            for r in read_records(self.record)
            if r.label == label and r.event == event and r.key.startswith(f"{workflow_id}:")
        ]

    def faults(self) -> list[Record]:
        return [r for r in read_records(self.record) if r.label == "fault"]

    def events(self, workflow_id: str) -> list[Event]:
        loaded = self.durable.store.load(workflow_id)
        assert loaded is not None
        return loaded[1]

    def received(self, task_id: str) -> int:
        """How many messages of ``task_id`` the workers received (Celery logs each)."""
        return sum(
            1
            for proc in self.cluster.procs
            for line in proc.log_text().splitlines()
            if line.endswith(f"[{task_id}] received")
        )

    def resends_logged(self, workflow_id: str, seq: int) -> int:
        """How many times recovery logged that it sent step ``seq`` again."""
        line = f"workflow {workflow_id}: step {seq} (trust.eager_step) shows no sign of life"
        return sum(proc.log_text().count(line) for proc in self.cluster.procs)

    def result(self, handle: WorkflowHandle[Any], timeout: float = 30) -> Any:
        try:
            return handle.result(timeout=timeout)
        except TimeoutError:
            print(self.cluster.logs())
            raise

    def wait(self, predicate: Any, timeout: float, what: str) -> None:
        try:
            wait_for(predicate, timeout, what)
        except AssertionError:
            print(self.cluster.logs())
            raise


@pytest.fixture(params=["sqlite", "postgresql"])
def eager(
    request: pytest.FixtureRequest, tmp_path: Path, redis_url: str, postgres_url: str
) -> Iterator[Eager]:
    if request.param == "sqlite":
        store = f"sqlite:///{tmp_path}/journal.sqlite3"
    else:
        store = create_database(postgres_url, f"eager_{os.getpid()}_{next(_databases)}")
    root = tmp_path / "run"
    flags = root / "flags"
    flags.mkdir(parents=True)
    record = root / "records.txt"
    env = {
        "TRUST_BROKER": redis_url,
        "TRUST_STORE": store,
        "TRUST_QUEUE": f"eager-{uuid.uuid4().hex[:8]}",
        "TRUST_RECORD": str(record),
        "TRUST_DIR": str(flags),
        **SETTINGS,
    }
    app, durable = make_app(env)
    _ = durable.store  # the schema exists before the workers race to create it
    cluster = Cluster(root, env, app_module="chaos.trust_app")
    try:
        cluster.beat("beat")
        worker = cluster.worker("worker1", concurrency=2)
        cluster.wait_ready(worker)
        eager = Eager(cluster, durable, record, flags, worker, env["TRUST_QUEUE"], redis_url)
        _warm_up(eager)
        yield eager
    finally:
        cluster.stop_all()
        durable.store.close()
        app.close()


def _warm_up(eager: Eager) -> None:
    """Have each pool process run a step first: a cold process's first step opens its
    store connection inside the chain's ``durable_eager_seconds`` (over 1 s seen on a
    busy machine), and the steps after it would be published rather than handed."""
    handles = [eager.start(SHORT, 1) for _ in range(4)]  # 0.3 s steps: both processes
    for handle in handles:
        assert eager.result(handle) == 0


def _wait_for_sleeper(eager: Eager, workflow_id: str) -> Record:
    """The sleeping step's first run, once it started; checks it was handed over."""
    eager.wait(
        lambda: eager.records(workflow_id, f"eager{SLEEPER}"), 30, "the sleeping step started"
    )
    run = eager.records(workflow_id, f"eager{SLEEPER}")[0]
    assert run.key == f"{workflow_id}:{SLEEPER}#1"
    _assert_handed(eager, workflow_id, SLEEPER)
    # The whole chain so far ran in the process the sleeping step runs in.
    chain = [eager.records(workflow_id, f"eager{i}")[0] for i in range(SLEEPER)]
    assert {r.pid for r in chain} == {run.pid}
    return run


def _assert_handed(eager: Eager, workflow_id: str, seq: int) -> None:
    """Step ``seq`` (still running its first run) was handed over: the commit that
    scheduled it marked it started, and no message of it was ever received."""
    event = eager.events(workflow_id)[seq]
    assert event.state is State.STARTED
    assert event.attempts == 1
    assert event.started_at is not None
    assert event.started_at == event.scheduled_at
    assert eager.received(f"{workflow_id}:{seq}") == 0


def _assert_each_ran_once_but(eager: Eager, workflow_id: str, killed: int) -> None:
    """Every step ended exactly once; the ``killed`` one started twice (the run killed
    and its re-send), the others once; the journal agrees."""
    for index in range(len(ACTIONS)):
        starts = [r.key for r in eager.records(workflow_id, f"eager{index}")]
        ends = [r.key for r in eager.records(workflow_id, f"eager{index}", "end")]
        key = f"{workflow_id}:{index}"
        if index == killed:
            assert starts == [f"{key}#1", f"{key}#2"], starts
            assert ends == [f"{key}#2"], ends
        else:
            assert starts == [f"{key}#1"], starts
            assert ends == [f"{key}#1"], ends
    # Sent again once, by recovery (the chain's own message ran nothing again).
    assert [eager.resends_logged(workflow_id, seq) for seq in range(len(ACTIONS))] == [
        1 if seq == killed else 0 for seq in range(len(ACTIONS))
    ]
    events = eager.events(workflow_id)
    assert [e.state for e in events] == [State.COMPLETED] * len(ACTIONS)
    assert [(e.attempts, e.resends) for e in events] == [
        (2, 1) if e.seq == killed else (1, 0) for e in events
    ]


def _redeliver(eager: Eager) -> list[str]:
    """Put the messages a dead worker held unacked back in the queue, as Redis does once
    its visibility timeout (an hour by default) has passed; their task ids."""
    client = redis.Redis.from_url(eager.redis_url)
    ids = []
    try:
        for tag, raw in client.hgetall("unacked").items():
            message, _exchange, routing_key = json.loads(raw)
            if routing_key != eager.queue:
                continue  # another test's
            message["headers"]["redelivered"] = True
            message["properties"]["delivery_info"]["redelivered"] = True
            with client.pipeline(transaction=True) as pipe:
                pipe.rpush(eager.queue, json.dumps(message))  # the next one consumed
                pipe.hdel("unacked", tag)
                pipe.zrem("unacked_index", tag)
                pipe.execute()
            ids.append(str(message["headers"]["id"]))
    finally:
        client.close()
    return ids


def _resent_at(eager: Eager, workflow_id: str, index: int, after: float) -> float:
    """When step ``index`` started again after ``after`` (waits for it)."""

    def again() -> list[Record]:
        return [r for r in eager.records(workflow_id, f"eager{index}") if r.at > after]

    eager.wait(again, RESEND_BOUND + 20, f"step {index} sent again")
    return min(r.at for r in again())


# ---------------------------------------------------------------------- no crash


@pytest.mark.timeout(60)
def test_a_long_handed_step_beats_and_is_not_sent_again(eager: Eager) -> None:
    """The baseline: the sleeping step is handed over and outlives the silence limit on
    its beats alone; the step after it is published (the chain ran past
    ``durable_eager_seconds``) and starts a chain of its own."""
    handle = eager.start(EAGER_CHAIN, ACTIONS)
    _wait_for_sleeper(eager, handle.id)
    assert eager.result(handle) == EXPECTED
    time.sleep(SILENCE + TICK)  # a re-send of any step would start in this time
    for index in range(len(ACTIONS)):
        assert len(eager.records(handle.id, f"eager{index}")) == 1
        assert eager.resends_logged(handle.id, index) == 0
    events = eager.events(handle.id)
    assert [(e.state, e.attempts, e.resends) for e in events] == [(State.COMPLETED, 1, 0)] * len(
        ACTIONS
    )
    messages = [seq for seq in range(len(ACTIONS)) if eager.received(f"{handle.id}:{seq}")]
    assert messages == [0, SLEEPER + 1]


# ---------------------------------------------------------------------- 1


@pytest.mark.timeout(60)
def test_pool_process_killed_in_a_handed_step_sends_only_that_step_again(
    eager: Eager,
) -> None:
    handle = eager.start(EAGER_CHAIN, ACTIONS)
    run = _wait_for_sleeper(eager, handle.id)
    # Past its first beats, so the silence counts from a heartbeat, not the commit.
    time.sleep(max(0.0, run.at + 2 * HEARTBEAT + 0.2 - time.time()))
    beating = eager.events(handle.id)[SLEEPER]
    assert beating.heartbeat_at != beating.started_at, "the handed step beats"
    killed_at = time.time()
    assert killed_at < run.at + EAGER_SLEEP_SECONDS - 0.5  # while it sleeps
    os.kill(run.pid, signal.SIGKILL)  # the pool process only; its worker lives on
    again = _resent_at(eager, handle.id, SLEEPER, killed_at)
    report.LINES.append(
        f"eager: pool process killed in a handed step: sent again {again - killed_at:.1f} s "
        f"after the kill (bound {RESEND_BOUND:.1f} s)"
    )
    assert again - killed_at < RESEND_BOUND
    assert eager.result(handle) == EXPECTED
    _assert_each_ran_once_but(eager, handle.id, SLEEPER)
    rerun = eager.records(handle.id, f"eager{SLEEPER}")[1]
    assert rerun.pid != run.pid
    assert eager.received(f"{handle.id}:{SLEEPER}") == 1  # the re-send, its only message
    assert eager.worker.popen.poll() is None


# ---------------------------------------------------------------------- 2


@pytest.mark.timeout(60)
@pytest.mark.parametrize("redelivered", [False, True], ids=["held", "redelivered"])
def test_worker_group_killed_in_a_handed_step_completes_on_a_new_worker(
    eager: Eager, redelivered: bool
) -> None:
    """The chain's own message (step 0's) dies unacked with the worker: Redis gives it
    back only after its visibility timeout (``held``), or at once (``redelivered``: it
    then reaches the new worker first and must run nothing again)."""
    handle = eager.start(EAGER_CHAIN, ACTIONS)
    run = _wait_for_sleeper(eager, handle.id)
    time.sleep(max(0.0, run.at + 0.5 - time.time()))
    killed_at = time.time()
    assert killed_at < run.at + EAGER_SLEEP_SECONDS - 0.5  # while it sleeps
    eager.cluster.kill(eager.worker)  # main process and pool: nothing acked or requeued
    if redelivered:
        assert f"{handle.id}:0" in _redeliver(eager)
    worker2 = eager.cluster.worker("worker2", concurrency=2)
    eager.cluster.wait_ready(worker2)
    ready_at = time.time()
    again = _resent_at(eager, handle.id, SLEEPER, killed_at)
    due = max(killed_at + SILENCE + TICK, ready_at)
    report.LINES.append(
        f"eager: worker group killed in a handed step ({'redelivered' if redelivered else 'held'}"
        f"): sent again {again - killed_at:.1f} s "
        f"after the kill, {again - ready_at:.1f} s after the new worker was ready"
    )
    assert again - due < SLACK
    assert eager.result(handle) == EXPECTED
    _assert_each_ran_once_but(eager, handle.id, SLEEPER)
    assert eager.records(handle.id, f"eager{SLEEPER}")[1].at > ready_at
    assert handle.status() == Status.COMPLETED
    assert eager.received(f"{handle.id}:0") == (2 if redelivered else 1)
    journaled = f"step 0 of {handle.id} already journaled; not run again"
    assert (journaled in worker2.log_text()) is redelivered


# ---------------------------------------------------------------------- 3


@pytest.mark.timeout(60)
def test_process_killed_right_after_the_commit_that_handed_a_step(eager: Eager) -> None:
    """Step 1 arms its process to die at its own commit, which journals its outcome and
    marks step 2 started (handed over): step 2's code never runs in that process; the
    tick sends it again and every step takes effect once."""
    handle = eager.start(EAGER_CHAIN, ["quick", "arm", "quick", "quick"])
    assert eager.result(handle) == ["quick-0", "arm-1", "quick-2", "quick-3"]
    (fault,) = eager.faults()
    assert fault.key == faults.AFTER_COMMIT
    assert not (eager.flags / f"{faults.AFTER_COMMIT}.{fault.pid}").exists()
    key = f"{handle.id}"
    runs = {i: eager.records(handle.id, f"eager{i}") for i in range(4)}
    ends = {i: eager.records(handle.id, f"eager{i}", "end") for i in range(4)}
    # Steps 0 and 1 ran (once) in the process that died; step 1 was handed over by 0.
    assert [(r.key, r.pid) for r in runs[0] + runs[1]] == [
        (f"{key}:0#1", fault.pid),
        (f"{key}:1#1", fault.pid),
    ]
    assert eager.received(f"{key}:1") == 0
    # Step 2 ran only once, elsewhere, as the re-send of a step its commit had started.
    assert [r.key for r in runs[2]] == [f"{key}:2#2"]
    assert runs[2][0].pid != fault.pid
    assert eager.received(f"{key}:2") == 1
    assert [eager.resends_logged(key, seq) for seq in range(4)] == [0, 0, 1, 0]
    assert [r.key for r in runs[3]] == [f"{key}:3#1"]
    assert [len(ends[i]) for i in range(4)] == [1, 1, 1, 1]
    events = eager.events(handle.id)
    assert [(e.state, e.attempts, e.resends) for e in events] == [
        (State.COMPLETED, 1, 0),
        (State.COMPLETED, 1, 0),
        (State.COMPLETED, 2, 1),  # the attempt its commit marked, and the re-send
        (State.COMPLETED, 1, 0),
    ]
    resent_after = runs[2][0].at - fault.at
    report.LINES.append(
        f"eager: process killed right after the commit that handed a step: sent again "
        f"{resent_after:.1f} s after (bound {RESEND_BOUND:.1f} s)"
    )
    assert resent_after < RESEND_BOUND
    assert eager.worker.popen.poll() is None


# ---------------------------------------------------------------------- 4


@pytest.mark.timeout(60)
def test_a_handed_poison_step_fails_as_step_lost_and_compensates(eager: Eager) -> None:
    handle = eager.start(EAGER_POISON)
    result = eager.result(handle, 40)
    assert result.startswith("StepLost: step 'trust.eager_step' (seq 1) was lost 2 times"), result
    key = handle.id
    first = eager.records(key, "eager0")
    poison = eager.records(key, "eager1")
    # Its first run handed over by step 0 (same process, no message), then one re-send.
    assert [(r.key, r.pid) for r in poison[:1]] == [(f"{key}:1#1", first[0].pid)]
    assert [r.key for r in poison] == [f"{key}:1#1", f"{key}:1#2"]
    assert eager.received(f"{key}:1") == 1
    assert eager.resends_logged(key, 1) == 1  # the tick's, after the handed run's death
    assert [r.key for r in first] == [f"{key}:0#1"]
    assert len(eager.records(key, "eager_undo")) == 1  # compensated, once
    events = eager.events(key)
    step = events[1]
    assert step.state is State.FAILED
    assert step.failure is not None
    assert step.failure.type == "StepLost"
    assert (step.attempts, step.resends) == (2, 1)
    assert handle.status() == Status.COMPLETED
    assert eager.worker.popen.poll() is None  # the worker itself survived every loss
