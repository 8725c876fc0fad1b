"""Steps lost with their worker, on real prefork workers (subprocesses), Redis and RabbitMQ.

* A poison step (it SIGKILLs its own pool process every time, as the OOM killer or a
  segfault would) is sent again ``durable_max_resends`` times, then fails with
  ``StepFailed(type="StepLost")``; the workflow's compensation runs and it completes.
* A step killed by its hard ``time_limit`` every time: the same.
* A short step (0.3 s, under one heartbeat interval) whose whole worker is SIGKILLed in
  its first 100 ms is sent again within 30 s (plus the tick interval) with the DEFAULT
  settings (step timeout 300 s, heartbeat 2 s, tick 5 s) and Redis's default visibility
  timeout (3600 s): its start mark tells recovery it had started.
* Workflow code that blocks is stopped by the resume time limit and parks as ``stuck``;
  workflow code that kills its process parks after ``durable_max_resends`` + 1 passes.
"""

from __future__ import annotations

import itertools
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from servers import create_database

from celery_durable import Durable, Status
from celery_durable.client import start
from chaos import report
from chaos.apps import Record, read_records
from chaos.cluster import Cluster, wait_for
from chaos.trust_app import (
    BLOCKS,
    CRASHES,
    NEVER_STARTS,
    OVER_TIME,
    PLAIN_POISON,
    POISON,
    SHORT,
    make_app,
)

#: The promise: a step whose worker died is sent again within this many seconds of the
#: kill, plus one tick interval (5 s by default).
RESEND_BOUND = 30.0 + 5.0

_databases = itertools.count()


@dataclass
class Trust:
    cluster: Cluster
    durable: Durable
    record: Path

    def starts(self, label: str) -> list[Record]:
        return [r for r in read_records(self.record) if r.label == label and r.event == "start"]

    def wait_done(self, workflow_id: str, timeout: float) -> Status:
        def ended() -> bool:
            instance = self.durable.store.get(workflow_id)
            return instance is not None and instance.status in (
                Status.COMPLETED,
                Status.FAILED,
                Status.STUCK,
            )

        try:
            wait_for(ended, timeout, f"workflow {workflow_id} ended")
        except AssertionError:
            print(self.cluster.logs())
            raise
        instance = self.durable.store.get(workflow_id)
        assert instance is not None
        return instance.status


def _trust(root: Path, redis_url: str, store: str, **extra: str) -> Iterator[Trust]:
    root.mkdir(parents=True, exist_ok=True)
    record = root / "records.txt"
    env = {
        "TRUST_BROKER": redis_url,
        "TRUST_STORE": store,
        "TRUST_QUEUE": f"trust-{uuid.uuid4().hex[:8]}",
        "TRUST_RECORD": str(record),
        **extra,
    }
    app, durable = make_app(env)
    _ = durable.store  # the schema exists before the workers race to create it
    cluster = Cluster(root, env, app_module="chaos.trust_app")
    try:
        yield Trust(cluster, durable, record)
    finally:
        cluster.stop_all()
        durable.store.close()
        app.close()


#: (store, broker) of the tests that take the ``trust`` fixture: each store and each
#: broker (RabbitMQ gives a dead consumer's messages back at once; Redis keeps them).
PAIRS = [("sqlite", "redis"), ("postgresql", "redis"), ("sqlite", "rabbitmq")]


@pytest.fixture(params=PAIRS, ids=["-".join(pair) for pair in PAIRS])
def trust(request: pytest.FixtureRequest, tmp_path: Path, postgres_url: str) -> Iterator[Trust]:
    kind, broker = request.param
    if kind == "sqlite":
        store = f"sqlite:///{tmp_path}/journal.sqlite3"
    else:
        store = create_database(postgres_url, f"trust_{os.getpid()}_{next(_databases)}")
    yield from _trust(tmp_path / "run", request.getfixturevalue(f"{broker}_url"), store)


@pytest.fixture
def trust_sqlite(tmp_path: Path, broker_url: str) -> Iterator[Trust]:
    yield from _trust(
        tmp_path / "run",
        broker_url,
        f"sqlite:///{tmp_path}/journal.sqlite3",
        TRUST_RESUME_TIME_LIMIT="2",
        # The first pass on a worker, under its time limit (in the caller, workflow code
        # that blocks would block the caller: see README, durable_start_in_caller).
        TRUST_START_IN_CALLER="0",
    )


@pytest.mark.timeout(180)
def test_poison_step_fails_as_step_lost_after_max_resends(trust: Trust) -> None:
    worker = trust.cluster.worker("worker", concurrency=2)
    trust.cluster.wait_ready(worker)
    handle = start(trust.durable, POISON, (), {})
    assert trust.wait_done(handle.id, 120) is Status.COMPLETED
    result = handle.result(timeout=1)
    assert result.startswith("StepLost: step 'trust.poison' (seq 0) was lost 4 times")
    # Sent again durable_max_resends (3) times: four runs in all, then the compensation.
    assert len(trust.starts("poison")) == 4
    assert len(trust.starts("undo")) == 1
    step = handle.history()[0]
    assert (step.state.value, step.error and step.error.type) == ("failed", "StepLost")
    assert worker.popen.poll() is None  # the worker itself survived every loss


@pytest.mark.timeout(180)
def test_an_existing_task_that_kills_its_process_fails_as_step_lost(trust_sqlite: Trust) -> None:
    """A plain @app.task as a step (early ack: its message is gone with the process):
    the same bound as a @durable.step, counted from the main process's WorkerLostError."""
    trust = trust_sqlite
    worker = trust.cluster.worker("worker", concurrency=2)
    trust.cluster.wait_ready(worker)
    handle = start(trust.durable, PLAIN_POISON, (), {})
    assert trust.wait_done(handle.id, 120) is Status.COMPLETED
    assert handle.result(timeout=1).startswith("StepLost: step 'trust.plain_poison' (seq 0)")
    assert len(trust.starts("plain_poison")) == 4
    assert len(trust.starts("undo")) == 1
    assert worker.popen.poll() is None


@pytest.mark.timeout(180)
def test_a_step_that_kills_its_process_before_its_start_mark_fails_as_step_lost(
    trust_sqlite: Trust,
) -> None:
    """Killed in a task_prerun handler, before the step's start mark: the journal has no
    run to count, so the worker's main process counts the deaths (each sent again as a
    new message, no broker redelivery) up to the same bound."""
    trust = trust_sqlite
    worker = trust.cluster.worker("worker", concurrency=2)
    trust.cluster.wait_ready(worker)
    handle = start(trust.durable, NEVER_STARTS, (), {})
    assert trust.wait_done(handle.id, 120) is Status.COMPLETED
    assert handle.result(timeout=1).startswith(
        "StepLost: step 'trust.never_starts' (seq 0) was lost 4 times before it could start"
    )
    kills = [r for r in read_records(trust.record) if r.label == "never_starts"]
    assert [r.event for r in kills] == ["prerun"] * 4  # its body never ran
    assert len(trust.starts("undo")) == 1
    step = handle.history()[0]
    assert (step.state.value, step.attempts) == ("failed", 0)
    assert worker.popen.poll() is None


@pytest.mark.timeout(180)
def test_step_killed_by_its_hard_time_limit_fails_as_step_lost(trust_sqlite: Trust) -> None:
    trust = trust_sqlite
    worker = trust.cluster.worker("worker", concurrency=2)
    trust.cluster.wait_ready(worker)
    handle = start(trust.durable, OVER_TIME, (), {})
    assert trust.wait_done(handle.id, 120) is Status.COMPLETED
    assert handle.result(timeout=1).startswith("StepLost: step 'trust.over_time'")
    assert len(trust.starts("over_time")) == 4
    assert len(trust.starts("undo")) == 1


@pytest.mark.timeout(180)
def test_short_step_killed_in_its_first_milliseconds_is_sent_again_within_30_s(
    trust: Trust,
) -> None:
    cluster = trust.cluster
    worker1 = cluster.worker("worker1", concurrency=2)
    cluster.beat("beat")
    cluster.wait_ready(worker1)
    handle = start(trust.durable, SHORT, (6,), {})
    # Let a few steps go by, then kill the worker group 50 ms into the next one.
    wait_for(lambda: len(trust.starts("short")) >= 3, 60, "three short steps started")
    seen = len(trust.starts("short"))
    wait_for(lambda: len(trust.starts("short")) > seen, 30, "the next short step started")
    victim = trust.starts("short")[-1]
    time.sleep(max(0.0, victim.at + 0.05 - time.time()))
    killed_at = time.time()
    cluster.kill(worker1)
    worker2 = cluster.worker("worker2", concurrency=2)
    cluster.wait_ready(worker2)
    key = victim.key.split("#", 1)[0]
    wait_for(
        lambda: any(
            r.key.startswith(key + "#") and r.at > killed_at for r in trust.starts("short")
        ),
        RESEND_BOUND + 10,
        "the killed step sent again",
    )
    again = min(
        r.at for r in trust.starts("short") if r.key.startswith(key + "#") and r.at > killed_at
    )
    resent_after = again - killed_at
    report.LINES.append(
        f"short step ({victim.key}) killed 50 ms in, default settings: ran again "
        f"{resent_after:.1f} s after the kill (bound {RESEND_BOUND:.0f} s)"
    )
    assert resent_after < RESEND_BOUND
    assert trust.wait_done(handle.id, 60) is Status.COMPLETED
    assert handle.result(timeout=1) == sum(range(6))
    killed = handle.history()[int(key.rsplit(":", 1)[1])]
    assert killed.attempts == 2  # the killed run and the one after it


@pytest.mark.timeout(120)
def test_workflow_code_that_blocks_parks_on_the_resume_time_limit(trust_sqlite: Trust) -> None:
    trust = trust_sqlite
    worker = trust.cluster.worker("worker", concurrency=2)
    trust.cluster.wait_ready(worker)
    handle = start(trust.durable, BLOCKS, (), {})
    assert trust.wait_done(handle.id, 60) is Status.STUCK
    error = handle.status().error
    assert error is not None
    assert error.type == "SoftTimeLimitExceeded"
    assert "durable_resume_time_limit (2 s)" in error.message


@pytest.fixture
def trust_sqlite_defaults(tmp_path: Path, broker_url: str) -> Iterator[Trust]:
    # Default settings but the first pass on a worker: the crashing workflow code would
    # kill the caller (pytest) in its first pass otherwise.
    yield from _trust(
        tmp_path / "run",
        broker_url,
        f"sqlite:///{tmp_path}/journal.sqlite3",
        TRUST_START_IN_CALLER="0",
    )


@pytest.mark.timeout(120)
def test_workflow_code_that_kills_its_process_parks_after_max_resends(
    trust_sqlite_defaults: Trust,
) -> None:
    trust = trust_sqlite_defaults
    trust.cluster.beat("beat")  # the tick, as in production
    worker = trust.cluster.worker("worker", concurrency=2)
    trust.cluster.wait_ready(worker)
    handle = start(trust.durable, CRASHES, (), {})
    assert trust.wait_done(handle.id, 60) is Status.STUCK
    error = handle.status().error
    assert error is not None
    assert error.type == "WorkerLostError"
    assert "killed the worker process running it 4 times in a row" in error.message
    assert worker.popen.poll() is None


@pytest.fixture(params=["sqlite", "postgresql"])
def trust_prefetching(
    request: pytest.FixtureRequest, tmp_path: Path, redis_url: str, postgres_url: str
) -> Iterator[Trust]:
    """Default durable settings, and Celery's default prefetch (4 x concurrency)."""
    if request.param == "sqlite":
        store = f"sqlite:///{tmp_path}/journal.sqlite3"
    else:
        store = create_database(postgres_url, f"trust_{os.getpid()}_{next(_databases)}")
    yield from _trust(tmp_path / "run", redis_url, store, TRUST_PREFETCH="4")


@pytest.mark.timeout(180)
def test_steps_a_dead_worker_held_unstarted_are_sent_again_within_30_s(
    trust_prefetching: Trust,
) -> None:
    """The peers' SIGKILL survival test, as a regression: ten workflows of 0.3 s steps,
    a prefork worker with Celery's default prefetch (it holds up to 8 messages, 6 of them
    not started), its whole process group SIGKILLed ~1 s in and restarted at once, with
    the default settings and Redis's 3600 s visibility timeout: every workflow completes,
    the never-started steps released by the dead worker's stopped beats."""
    trust = trust_prefetching
    cluster = trust.cluster
    worker1 = cluster.worker("worker1", concurrency=2)
    cluster.beat("beat")
    cluster.wait_ready(worker1)
    time.sleep(1.0)  # its first beat
    handles = [start(trust.durable, SHORT, (4,), {}) for _ in range(10)]
    time.sleep(1.0)
    killed_at = time.time()
    cluster.kill(worker1)
    worker2 = cluster.worker("worker2", concurrency=2)
    cluster.wait_ready(worker2)
    for handle in handles:
        assert trust.wait_done(handle.id, RESEND_BOUND + 30) is Status.COMPLETED
    took = time.time() - killed_at
    report.LINES.append(
        f"10 workflows, prefetch 4, worker group SIGKILLed: all completed {took:.1f} s "
        "after the kill (default settings)"
    )
    assert took < RESEND_BOUND + 20  # the work itself takes ~6 s on one worker
