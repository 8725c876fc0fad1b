"""Issue 9's items 1, 4, 5, 6, 8, 9, 10 and 12 on real ``celery worker --pool=prefork``
subprocesses (and ``celery beat`` where the tick matters), real Redis, SQLite and
PostgreSQL.

The same behaviours as ``tests/runtime/test_runs.py``, ``test_failures.py`` and
``test_retries_and_children.py`` check with in-process thread workers, here across
processes: the workflows live in ``chaos.trust_workflows`` (registered by
``chaos.trust_app``), what a test switches is a flag file the workers read, and step runs
are counted from the record file the steps write.

Two clusters per store, started once for the module: ``shipped`` (one prefork worker,
celery_durable's default settings) and ``ticking`` (a prefork worker and beat with a 1 s
step timeout, 0.5 s heartbeats and a 0.5 s tick: items 4 and 5, where recovery must
leave a Celery retry and an unknown workflow alone however often it looks).
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

from celery_durable import (
    Durable,
    DurableError,
    Status,
    WorkflowFailed,
    WorkflowHandle,
    WorkflowStuck,
)
from celery_durable.client import start
from chaos.apps import Record, read_records
from chaos.cluster import Cluster, wait_for
from chaos.trust_app import make_app
from chaos.trust_workflows import (
    CLAIMS_CHILD,
    INVOICE,
    ORDER,
    PARENT,
    PAY,
    PAY_VERSIONED,
    RETRIES,
    RETRY_COUNTDOWN,
    STRAGGLER,
    TRIP,
    TRIP_SAGA,
)

#: Settings of the ``ticking`` cluster: a Celery retry's countdown (3 s) is longer than
#: the step timeout and than the heartbeat silence limit (5 x 0.5 s).
TICKING = {
    "TRUST_STEP_TIMEOUT": "1",
    "TRUST_HEARTBEAT_INTERVAL": "0.5",
    "TRUST_TICK_INTERVAL": "0.5",
}

#: How long item 5's test watches the queue: a dozen ticks, six step timeouts.
WATCH_SECONDS = 6.0

_databases = itertools.count()


@dataclass
class Trust:
    """One cluster: its processes, the test process's app on the same store and queue,
    the record file and the flag directory."""

    cluster: Cluster
    durable: Durable
    record: Path
    flags: Path
    queue: str
    redis_url: str

    def start(
        self, workflow: str, *args: Any, workflow_id: str | None = None
    ) -> WorkflowHandle[Any]:
        return start(self.durable, workflow, args, {}, workflow_id=workflow_id)

    def flag(self, token: str, name: str) -> None:
        (self.flags / f"{token}.{name}").touch()

    def unflag(self, token: str, name: str) -> None:
        (self.flags / f"{token}.{name}").unlink()

    def runs(self, workflow_id: str, label: str | None = None) -> list[Record]:
        """The step runs (starts) of ``workflow_id``, in order; only ``label``'s if given."""
        return [
            r
            for r in read_records(self.record)
            if r.event == "start"
            and r.key.startswith(f"{workflow_id}:")
            and (label is None or r.label == label)
        ]

    def labels(self, workflow_id: str) -> list[str]:
        return [r.label for r in self.runs(workflow_id)]

    def result(self, handle: WorkflowHandle[Any], timeout: float = 30) -> Any:
        """``handle.result``, with the processes' logs printed if it times out."""
        try:
            return handle.result(timeout=timeout)
        except TimeoutError:
            print(self.cluster.logs())
            raise


def token() -> str:
    return uuid.uuid4().hex[:10]


def _start_cluster(root: Path, redis_url: str, store: str, extra: dict[str, str]) -> Trust:
    root.mkdir(parents=True)
    flags = root / "flags"
    flags.mkdir()
    record = root / "records.txt"
    queue = f"trust-{uuid.uuid4().hex[:8]}"
    env = {
        "TRUST_BROKER": redis_url,
        "TRUST_STORE": store,
        "TRUST_QUEUE": queue,
        "TRUST_RECORD": str(record),
        "TRUST_DIR": str(flags),
        **extra,
    }
    durable = make_app(env)[1]
    _ = durable.store  # the schema exists before the workers race to create it
    return Trust(
        Cluster(root, env, app_module="chaos.trust_app"), durable, record, flags, queue, redis_url
    )


@dataclass
class Clusters:
    shipped: Trust
    ticking: Trust


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def clusters(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, redis_url: str
) -> Iterator[Clusters]:
    root = tmp_path_factory.mktemp(f"trust-{request.param}")

    def store(name: str) -> str:
        if request.param == "sqlite":
            return f"sqlite:///{root}/{name}.sqlite3"
        postgres_url: str = request.getfixturevalue("postgres_url")
        return create_database(postgres_url, f"trust_{name}_{os.getpid()}_{next(_databases)}")

    made = []
    try:
        shipped = _start_cluster(root / "shipped", redis_url, store("shipped"), {})
        made.append(shipped)
        ticking = _start_cluster(root / "ticking", redis_url, store("ticking"), TICKING)
        made.append(ticking)
        workers = [
            shipped.cluster.worker("worker", concurrency=4),
            ticking.cluster.worker("worker", concurrency=3),
        ]
        ticking.cluster.beat("beat")
        for trust, worker in zip(made, workers, strict=True):
            trust.cluster.wait_ready(worker)
        yield Clusters(shipped, ticking)
    finally:
        for trust in made:
            trust.cluster.stop_all()
            trust.durable.store.close()
            trust.durable.app.close()


@pytest.fixture
def shipped(clusters: Clusters) -> Trust:
    """A prefork worker with celery_durable's default settings, no beat."""
    return clusters.shipped


@pytest.fixture
def ticking(clusters: Clusters) -> Trust:
    """A prefork worker and beat with a short step timeout, heartbeat and tick."""
    return clusters.ticking


# ------------------------------------------------------------------------------ item 1


@pytest.mark.timeout(90)
def test_a_straggler_of_run_1_never_lands_in_run_2(shipped: Trust) -> None:
    tok = token()
    handle = shipped.start(STRAGGLER, tok, 0)
    # Run 1's step lost the race to the timer and still runs; run 2 has its own result.
    assert shipped.result(handle) == "check 1"
    shipped.flag(tok, "release")
    wait_for(
        lambda: any(
            r.label == "check0" and r.event == "end" and r.key.startswith(f"{handle.id}:")
            for r in read_records(shipped.record)
        ),
        30,
        "the straggler ended",
    )
    time.sleep(1.0)  # the straggler tries to journal its outcome, and is refused
    assert [(e.seq, e.name.rsplit(".", 1)[-1], e.result) for e in handle.history()] == [
        (0, "check", "check 1")
    ]
    assert handle.status().run == 2
    assert handle.result(timeout=1) == "check 1"
    keys = {r.label: r.key for r in shipped.runs(handle.id)}
    assert keys == {"check0": f"{handle.id}:0#1", "check1": f"{handle.id}:0~2#1"}


# ------------------------------------------------------------------------------ item 4


@pytest.mark.timeout(90)
def test_celery_retries_longer_than_the_step_timeout_are_not_sent_again(ticking: Trust) -> None:
    handle = ticking.start(RETRIES)
    assert ticking.result(handle, 60) == "ok"
    time.sleep(RETRY_COUNTDOWN)  # a copy sent by recovery would start in this time
    key = f"{handle.id}:0"
    assert [r.key for r in ticking.runs(handle.id, "flaky")] == [f"{key}#1", f"{key}#2", f"{key}#3"]
    assert handle.history()[0].attempts == 3


# ------------------------------------------------------------------------------ item 5


@pytest.mark.timeout(90)
def test_an_unknown_workflow_waits_with_one_resume_at_a_time(ticking: Trust) -> None:
    handle = ticking.start("trust.not_deployed", "x")
    client = redis.Redis.from_url(ticking.redis_url)
    seen = []
    try:
        deadline = time.monotonic() + WATCH_SECONDS
        while time.monotonic() < deadline:
            seen.append(_resume_messages(client, ticking.queue, handle.id))
            time.sleep(0.05)
        status = handle.status()
        log = ticking.cluster.logs(tail=100_000)
    finally:
        client.close()
        ticking.durable.terminate(handle.id)
    assert max(seen) <= 1, seen  # never more than one resume message in flight
    assert status == Status.PENDING
    assert status.note == "waiting for a worker that knows workflow trust.not_deployed"
    # It is looked at again (a rolling deploy may bring the worker), never more often
    # than the tick runs: nothing grows while it waits.
    received = sum(
        1
        for line in log.splitlines()
        if f"resume[{handle.id}:resume:" in line and line.endswith(" received")
    )
    ticks = WATCH_SECONDS / float(TICKING["TRUST_TICK_INTERVAL"])
    assert 2 <= received <= ticks + 1, received


def _resume_messages(client: redis.Redis, queue: str, workflow_id: str) -> int:
    """How many resume messages of ``workflow_id`` are queued or unacked, read at once."""
    with client.pipeline(transaction=True) as pipe:
        pipe.lrange(queue, 0, -1)
        pipe.hvals("unacked")
        queued, unacked = pipe.execute()
    messages = [json.loads(raw) for raw in queued]
    messages += [json.loads(raw)[0] for raw in unacked]
    return len(
        {
            m["properties"]["delivery_tag"]
            for m in messages
            if str(m.get("headers", {}).get("id", "")).startswith(f"{workflow_id}:resume:")
        }
    )


# ------------------------------------------------------------------------------ item 6


@pytest.mark.timeout(60)
def test_a_child_id_owned_by_another_instance_fails_with_workflow_id_conflict(
    shipped: Trust,
) -> None:
    doc = f"doc-{token()}"
    assert shipped.result(shipped.start(INVOICE, "alice", workflow_id=doc)) == "invoice for alice"
    result = shipped.result(shipped.start(CLAIMS_CHILD, doc))
    assert result.startswith(f"WorkflowIdConflict: child workflow id '{doc}' already belongs to")
    assert shipped.durable.handle(doc).result(timeout=1) == "invoice for alice"


# ------------------------------------------------------------------------------ item 8


@pytest.mark.timeout(90)
def test_a_bug_parks_and_retry_resumes_with_the_fix_without_rerunning_steps(
    shipped: Trust,
) -> None:
    tok = token()
    handle = shipped.start(PAY, tok, "alice")
    with pytest.raises(WorkflowStuck) as stuck:
        shipped.result(handle)
    assert (stuck.value.type, stuck.value.message) == ("ValueError", "bad receipt for tx-alice")
    assert "Traceback" in (stuck.value.details or "")
    wait_for(
        lambda: f"workflow {handle.id} ({PAY}) is stuck" in shipped.cluster.logs(),
        10,
        "the stuck instance logged with its id",
    )
    shipped.flag(tok, "fixed")  # a fix is deployed
    shipped.durable.retry(handle.id)
    assert shipped.result(handle) == "tx-alice"
    assert shipped.labels(handle.id) == ["charge"]  # the journaled step was not run again


@pytest.mark.timeout(90)
def test_retry_rewinds_a_failed_instance_and_refuses_one_that_compensated(
    shipped: Trust,
) -> None:
    tok = token()
    shipped.flag(tok, "down")  # the airline is down: the flight step fails for good
    rewound = shipped.start(TRIP, tok)
    compensated = shipped.start(TRIP_SAGA, tok)
    with pytest.raises(WorkflowFailed) as failed:
        shipped.result(rewound)
    assert failed.value.type == "ConnectionRefusedError"
    with pytest.raises(WorkflowFailed):
        shipped.result(compensated)
    wait_for(lambda: "cancel-hotel" in shipped.labels(compensated.id), 10, "compensated")

    journal = compensated.history()
    with pytest.raises(DurableError, match=r"failed at seq 1 .* then sent seq 2 step"):
        shipped.durable.retry(compensated.id)  # the hotel was cancelled: no rewind
    assert compensated.status() == Status.FAILED
    assert compensated.history() == journal

    shipped.unflag(tok, "down")  # the airline is back: rewind to the failed step
    shipped.durable.retry(rewound.id)
    assert shipped.result(rewound) == ["hotel-ok", "flight-ok"]
    # The hotel step replayed from the journal; the flight step ran again.
    assert shipped.labels(rewound.id) == ["book-hotel", "book-flight", "book-flight"]
    assert [e.attempts for e in rewound.history()] == [1, 1]
    assert shipped.labels(compensated.id) == ["book-hotel", "book-flight", "cancel-hotel"]


# ------------------------------------------------------------------------------ item 9


@pytest.mark.timeout(60)
def _deploy(trust: Trust) -> None:
    """What a deploy does to running workers: a warm restart (the workflows a worker kept
    suspended in memory go with it; the new code replays each journal)."""
    for proc in trust.cluster.procs:
        if proc.name.startswith("worker") and proc.popen.poll() is None:
            os.killpg(proc.popen.pid, signal.SIGTERM)
            proc.popen.wait(30)
    worker = trust.cluster.worker(f"worker-{token()}", concurrency=4)
    trust.cluster.wait_ready(worker)


def test_changed_step_arguments_park_the_instance_naming_both(shipped: Trust) -> None:
    tok = token()
    handle = shipped.start(PAY_VERSIONED, tok)
    wait_for(lambda: len(handle.history()) == 2, 30, "v1 waits for its signal")
    shipped.flag(tok, "v2")  # a deploy that changed the arguments
    _deploy(shipped)
    handle.signal("go")
    with pytest.raises(WorkflowStuck) as stuck:
        shipped.result(handle)
    assert stuck.value.type == "NonDeterminismError"
    message = stuck.value.message
    assert "at seq 0" in message
    assert "charge" in message
    assert "('alice', 100)" in message
    assert "('bob', 999)" in message
    assert shipped.labels(handle.id) == ["charge"]


# ------------------------------------------------------------------------------ item 10


@pytest.mark.timeout(60)
def test_cancel_of_a_stuck_instance_applies_when_it_is_retried(shipped: Trust) -> None:
    tok = token()
    handle = shipped.start(ORDER, tok)
    with pytest.raises(WorkflowStuck):
        shipped.result(handle)
    assert handle.cancel() is True
    time.sleep(0.5)
    assert handle.status() == Status.STUCK  # it waits for the retry
    shipped.flag(tok, "fixed")
    shipped.durable.retry(handle.id)
    with pytest.raises(WorkflowFailed) as cancelled:
        shipped.result(handle)
    assert cancelled.value.type == "WorkflowCancelled"
    assert shipped.labels(handle.id) == ["reserve", "release-r-1"]  # compensated, not shipped


# ------------------------------------------------------------------------------ item 12


@pytest.mark.timeout(60)
def test_terminating_a_parent_terminates_its_child_unless_abandoned(shipped: Trust) -> None:
    policies = ("default", "terminate", "abandon")
    parents = {policy: shipped.start(PARENT, policy) for policy in policies}
    kids = {policy: shipped.durable.handle(f"{h.id}:0") for policy, h in parents.items()}

    def waiting(kid: WorkflowHandle[Any]) -> bool:
        try:
            history = kid.history()
        except DurableError:  # not created yet
            return False
        return bool(history) and history[-1].kind.value == "signal"

    wait_for(lambda: all(waiting(kid) for kid in kids.values()), 30, "every child waits")
    for handle in parents.values():
        assert handle.terminate() is True
    for policy in ("default", "terminate"):
        kid = kids[policy]
        wait_for(lambda kid=kid: kid.status().state.is_terminal, 30, f"{policy}: child ended")
        error = kid.status().error
        assert error is not None
        assert error.type == "WorkflowTerminated"
    kid = kids["abandon"]
    assert kid.status() == Status.RUNNING  # abandoned: it runs on alone
    kid.signal("go", "still here")
    assert shipped.result(kid) == "still here"
