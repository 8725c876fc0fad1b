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
* A quorum queue whose ``x-delivery-limit`` (2) is below ``durable_max_resends`` (3): the
  broker would drop a message redelivered that often, but a step or an orchestrator pass
  lost with its process is sent again by the library as a new message, so the journal's
  bound decides, as on Redis: ``StepLost`` after four runs, the instance parked ``stuck``
  after four passes, at once (not a ``durable_step_timeout`` later).
* Timers on a quorum queue: with no global QoS a worker cannot raise its prefetch for
  the ETA messages it holds, so on a direct exchange each would take a worker slot until
  due; the library then sends none (the tick fires the timers). On a topic exchange
  Celery's native delayed delivery has RabbitMQ hold them. Either way a worker of
  concurrency 2 with three sleeping workflows keeps taking other work. Delays under a
  second (a timer, a step's Celery retry) are carried in whole seconds where RabbitMQ
  delays them (Celery raises for less).
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
from chaos.trust_app import CRASHES, NAP, POISON, QUICK, SHORT


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


@pytest.mark.timeout(180)
def test_a_quorum_queue_delivery_limit_never_decides_for_the_journal(
    tmp_path: Path, rabbitmq_url: str, store: str
) -> None:
    for trust in _trust(
        tmp_path / "run",
        rabbitmq_url,
        store,
        TRUST_QUORUM_EXCHANGE="direct",
        TRUST_QUORUM_DELIVERY_LIMIT="2",
        TRUST_START_IN_CALLER="0",  # the crashing workflow's first pass kills a worker
    ):
        cluster = trust.cluster
        worker = cluster.worker("worker", concurrency=2)
        cluster.wait_ready(worker)
        began = time.time()
        poisoned = start(trust.durable, POISON, (), {})
        crashing = start(trust.durable, CRASHES, (), {})
        assert trust.wait_done(poisoned.id, 60) is Status.COMPLETED
        result = poisoned.result(timeout=1)
        assert result.startswith("StepLost: step 'trust.poison' (seq 0) was lost 4 times")
        assert len(trust.starts("poison")) == 4  # two more than the broker would deliver
        assert len(trust.starts("undo")) == 1
        assert trust.wait_done(crashing.id, 60) is Status.STUCK
        parked = trust.durable.store.get(crashing.id)
        assert parked is not None
        assert parked.failure is not None
        assert "4 times in a row" in parked.failure.message
        took = time.time() - began
        assert took < 60  # the bound, not durable_step_timeout (300 s), ended them
        after = start(trust.durable, SHORT, (2,), {})  # the queue is still consumed
        assert trust.wait_done(after.id, 30) is Status.COMPLETED
        assert worker.popen.poll() is None
        log = (tmp_path / "run" / "worker.log").read_text()
        assert "Global QoS is disabled" in log  # Celery saw a quorum queue
        report.LINES.append(
            f"RabbitMQ quorum queue, x-delivery-limit 2: a poison step failed as StepLost "
            f"after 4 runs and a crashing workflow parked after 4 passes, {took:.1f} s"
        )


@pytest.mark.timeout(180)
@pytest.mark.parametrize("exchange", ["direct", "topic"])
def test_timers_on_a_quorum_queue_never_hold_a_worker_slot(
    tmp_path: Path, rabbitmq_url: str, exchange: str
) -> None:
    store = f"sqlite:///{tmp_path}/journal.sqlite3"
    for trust in _trust(tmp_path / "run", rabbitmq_url, store, TRUST_QUORUM_EXCHANGE=exchange):
        cluster = trust.cluster
        worker = cluster.worker("worker", concurrency=2)
        cluster.beat("beat")
        cluster.wait_ready(worker)
        naps = [start(trust.durable, NAP, (12.0,), {}) for _ in range(3)]
        for handle in naps:
            cluster_wait(trust, handle.id, "timer")
        began = time.time()
        other = start(trust.durable, SHORT, (2,), {})
        assert trust.wait_done(other.id, 30) is Status.COMPLETED
        took = time.time() - began
        assert took < 6  # not held behind the timers (12 s)
        # Delays under a second (a 0.4 s timer, retries 0.2 s apart): Celery's native
        # delayed delivery carries whole seconds only, and raises for less.
        quick = start(trust.durable, QUICK, (), {})
        assert trust.wait_done(quick.id, 30) is Status.COMPLETED
        assert quick.result(timeout=1) == "retried"
        for handle in naps:
            assert trust.wait_done(handle.id, 60) is Status.COMPLETED
        timers = [e for h in naps for e in h.history() if e.kind.value == "timer"]
        assert [t.state.value for t in timers] == ["completed"] * 3
        late = max(
            (t.completed_at - t.scheduled_at).total_seconds() - 12.0  # type: ignore[operator]
            for t in timers
        )
        assert -0.1 < late < 5 + 2  # the tick (every 5 s) fires them if no ETA message does
        log = (tmp_path / "run" / "worker.log").read_text()
        assert ("no timer is sent as an ETA message" in log) is (exchange == "direct")
        report.LINES.append(
            f"RabbitMQ quorum queue, {exchange} exchange: 3 workflows sleeping 12 s on a "
            f"worker of concurrency 2; another completed in {took:.1f} s; the timers "
            f"fired at most {late:.1f} s late"
        )


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
