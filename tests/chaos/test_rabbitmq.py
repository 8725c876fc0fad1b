"""The crash tests on RabbitMQ: what differs from Redis, on real prefork workers.

* A worker group SIGKILLed with prefetched messages: RabbitMQ gives a dead consumer's
  unacked messages back at once (Redis keeps them for its visibility timeout, and the
  tick releases them); steps handed over in-process (eager chains) are no messages and
  come back through the tick, within the same bound as on Redis.
* ETA messages held by the consumer (a short ``ctx.sleep``): the worker that held it is
  killed; the message comes back to the next worker and the timer fires once.
* The broker SIGKILLed and restarted on its data mid-run: Celery's queues are durable and
  its messages persistent, the workers reconnect, nothing is lost. (A message whose
  publish failed while the broker was down is sent again by recovery once it is overdue:
  within ``durable_step_timeout``, set to 5 s here as the soak does.)
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rabbitmq_server import RabbitMQServer, start_rabbitmq
from servers import create_database

from celery_durable import Status
from celery_durable.client import start
from chaos import report
from chaos.test_lost_steps import RESEND_BOUND, Trust, _databases, _trust
from chaos.trust_app import NAP, SHORT


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path, postgres_url: str) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/journal.sqlite3"
    return create_database(postgres_url, f"rabbit_{os.getpid()}_{next(_databases)}")


@pytest.fixture
def node(tmp_path: Path) -> Iterator[RabbitMQServer]:
    """A RabbitMQ node of this test's own (the test kills it)."""
    with start_rabbitmq() as server:
        yield server


@pytest.mark.timeout(180)
def test_a_killed_worker_group_gives_its_prefetched_messages_back_at_once(
    tmp_path: Path, rabbitmq_url: str, store: str
) -> None:
    for trust in _trust(tmp_path / "run", rabbitmq_url, store, TRUST_PREFETCH="4"):
        cluster = trust.cluster
        worker1 = cluster.worker("worker1", concurrency=2)
        cluster.beat("beat")  # a step handed over in-process is no message: the tick's
        cluster.wait_ready(worker1)
        handles = [start(trust.durable, SHORT, (4,), {}) for _ in range(10)]
        time.sleep(1.0)
        killed_at = time.time()
        cluster.kill(worker1)
        worker2 = cluster.worker("worker2", concurrency=2)
        cluster.wait_ready(worker2)
        for handle in handles:
            assert trust.wait_done(handle.id, 60) is Status.COMPLETED
        took = time.time() - killed_at
        report.LINES.append(
            f"RabbitMQ: 10 workflows, prefetch 4, worker group SIGKILLed: all completed "
            f"{took:.1f} s after the kill (default settings)"
        )
        assert took < RESEND_BOUND + 20  # as on Redis; the prefetched ones come back at once
        requeued = cluster.logs().count("received")
        assert requeued > 0
        _each_step_journaled_once(trust, handles)


@pytest.mark.timeout(180)
def test_an_eta_message_held_by_a_killed_worker_fires_once(
    tmp_path: Path, rabbitmq_url: str, store: str
) -> None:
    for trust in _trust(tmp_path / "run", rabbitmq_url, store):
        cluster = trust.cluster
        worker1 = cluster.worker("worker1", concurrency=2)
        cluster.beat("beat")
        cluster.wait_ready(worker1)
        handles = [start(trust.durable, NAP, (4.0,), {}) for _ in range(3)]
        for handle in handles:  # each waits on its timer: a resume message held by worker1
            cluster_wait(trust, handle.id, "timer")
        cluster.kill(worker1)
        worker2 = cluster.worker("worker2", concurrency=2)
        cluster.wait_ready(worker2)
        for handle in handles:
            assert trust.wait_done(handle.id, 60) is Status.COMPLETED
            assert handle.result(timeout=1) == "after"
            timers = [e for e in handle.history() if e.kind.value == "timer"]
            assert [t.state.value for t in timers] == ["completed"]
        assert len(trust.starts("wake")) == 6  # before + after, once each


@pytest.mark.timeout(240)
def test_the_broker_killed_and_restarted_on_its_data_loses_nothing(
    tmp_path: Path, node: RabbitMQServer, store: str
) -> None:
    for trust in _trust(tmp_path / "run", node.url, store, TRUST_STEP_TIMEOUT="5"):
        cluster = trust.cluster
        worker = cluster.worker("worker", concurrency=2)
        cluster.beat("beat")
        cluster.wait_ready(worker)
        handles = [start(trust.durable, SHORT, (8,), {}) for _ in range(6)]
        time.sleep(1.0)
        node.kill()
        time.sleep(1.0)
        node.start()
        restarted = time.time()
        for handle in handles:
            assert trust.wait_done(handle.id, 90) is Status.COMPLETED
        report.LINES.append(
            f"RabbitMQ: broker SIGKILLed and restarted mid-run: 6 workflows completed "
            f"{time.time() - restarted:.1f} s after the restart"
        )
        _each_step_journaled_once(trust, handles)
        assert worker.popen.poll() is None  # the worker reconnected, it did not die


def cluster_wait(trust: Trust, workflow_id: str, kind: str, timeout: float = 30.0) -> None:
    """Wait until the workflow's last journal record is an open ``kind`` event."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        loaded = trust.durable.store.load(workflow_id)
        if loaded is not None and loaded[1]:
            last = loaded[1][-1]
            if last.kind.value == kind and not last.state.is_final:
                return
        time.sleep(0.05)
    raise AssertionError(f"workflow {workflow_id} never waited on a {kind}")


def _each_step_journaled_once(trust: Trust, handles: list[object]) -> None:
    for handle in handles:
        history = handle.history()  # type: ignore[attr-defined]
        assert all(e.state.value == "completed" for e in history)
        assert len({e.seq for e in history}) == len(history)
