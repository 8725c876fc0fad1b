"""The broker down while steps finish, with the DEFAULT ``durable_step_timeout`` (300 s).

Steps that finish while Redis or RabbitMQ is down commit their outcome and the next step,
but cannot publish it; nor can a caller's ``.delay()``. The journal is told (the step is
made overdue, the instance's ``wake_at`` pulled to now), so once the broker is back the
first tick sends them: the workflows complete seconds after the restart, not a step
timeout later, and ``.delay()`` returned a handle instead of raising.

Redis is killed at a moment when no step message waits in it (each workflow's one step
is running, its message taken), since a restarted Redis has lost everything it held;
RabbitMQ is killed and started again on its data.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest
from rabbitmq_server import start_rabbitmq
from servers import start_redis_restartable

from celery_durable import Status
from celery_durable.client import start
from chaos import report
from chaos.cluster import wait_for
from chaos.test_lost_steps import Trust, _trust
from chaos.trust_app import SHORT

#: The workflows must complete within this many seconds of the broker's restart.
BOUND = 40.0


class Broker(Protocol):
    url: str

    def kill(self) -> None: ...

    def start(self) -> None: ...


@pytest.fixture(params=["redis", "rabbitmq"])
def broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    with start_redis_restartable() if request.param == "redis" else start_rabbitmq() as server:
        yield server


def _both_running(trust: Trust, ids: list[str]) -> bool:
    for workflow_id in ids:
        loaded = trust.durable.store.load(workflow_id)
        if loaded is None or not loaded[1]:
            return False
        last = loaded[1][-1]
        if last.kind.value != "step" or last.state.value != "started":
            return False
    return True


@pytest.fixture
def trust(tmp_path: Path, broker: Broker) -> Iterator[Trust]:
    store = f"sqlite:///{tmp_path}/journal.sqlite3"
    # Every step through the broker (none handed over in-process), as a busy queue does.
    yield from _trust(tmp_path / "run", broker.url, store, TRUST_EAGER_STEPS="0")


@pytest.mark.timeout(240)
def test_steps_that_finish_while_the_broker_is_down_go_on_once_it_is_back(
    tmp_path: Path, broker: Broker, trust: Trust
) -> None:
    cluster = trust.cluster
    worker = cluster.worker("worker", concurrency=2)
    cluster.beat("beat")
    cluster.wait_ready(worker)
    handles = [start(trust.durable, SHORT, (6,), {}) for _ in range(2)]
    wait_for(lambda: len(trust.starts("short")) >= 4, 60, "a few steps went by")
    wait_for(lambda: _both_running(trust, [h.id for h in handles]), 30, "both running")
    broker.kill()
    time.sleep(1.0)  # the running steps (0.3 s) finish: their next steps stay unsent
    late = start(trust.durable, SHORT, (2,), {})  # journaled; its first step unsent
    time.sleep(2.0)
    broker.start()
    restarted = time.time()
    for handle in [*handles, late]:
        assert trust.wait_done(handle.id, BOUND) is Status.COMPLETED
    took = time.time() - restarted
    log = (tmp_path / "run" / "worker.log").read_text()
    unsent = log.count("could not be sent")
    report.LINES.append(
        f"broker down 3 s ({broker.url.split(':', 1)[0]}), default step timeout: "
        f"{unsent} unsent steps; all 3 workflows completed {took:.1f} s after the restart"
    )
    assert unsent >= 2  # the two running steps' next steps
    assert took < BOUND
    for handle in [*handles, late]:
        assert all(e.state.value == "completed" for e in handle.history())
    assert handles[0].result(timeout=1) == sum(range(6))
