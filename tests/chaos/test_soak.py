"""The fault soak, bounded for CI: one round of every fault, then every check.

Each round starts the whole workflow mix (retries, local runs, short and long timers,
signals, gather with a child, a saga that compensates, a saga cancelled from outside, a
continue-as-new whose first run leaves a straggler step, a saga around a poison step, a
chain of steps shorter than a heartbeat) on two prefork workers with two beats, starts
one workflow again under its id (same arguments: same handle; other arguments:
``WorkflowIdConflict``), and injects one fault: a worker's process group
SIGKILLed, a worker restarted as a deploy restarts it, a bad deploy rolled back, a pool
child SIGKILLed, Redis killed and restarted empty, PostgreSQL shut down immediately and
restarted, every message delivered twice, or a worker process crashing at one of the
library's crash points. ``chaos.verdict`` lists what the checks found; the figures go to
the terminal summary. The same checks judge a few rounds with RabbitMQ as the broker: a
worker's process group SIGKILLed, the RabbitMQ node SIGKILLed and started again on its
data, a pool child SIGKILLed. The long run is ``python bench/chaos.py --duration SECONDS
[--broker rabbitmq]``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from rabbitmq_server import RabbitMQServer, start_rabbitmq
from servers import (
    PostgresServer,
    RedisServer,
    create_database,
    start_postgres_restartable,
    start_redis_restartable,
)

from chaos import report
from chaos.mix import make_mix_app
from chaos.soak import FAULTS, RABBITMQ_FAULTS, SoakRun, run_soak
from chaos.verdict import Verdict, judge_run


def check(run: SoakRun) -> Verdict:
    """Judge ``run``; its figures go to the terminal summary."""
    verdict = judge_run(run)
    report.LINES.extend(verdict.lines)
    print("\n".join(verdict.lines))
    print(run.logs)  # shown only if the test fails
    return verdict


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with start_redis_restartable() as server:
        yield server


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[PostgresServer]:
    # Crash-safe settings: an immediate shutdown must not lose a committed transaction.
    with start_postgres_restartable(durable=True) as server:
        yield server


@pytest.fixture(scope="module")
def rabbitmq_server() -> Iterator[RabbitMQServer]:
    with start_rabbitmq() as server:
        yield server


@pytest.mark.timeout(900)
def test_every_fault_once_nothing_lost_nothing_done_twice(
    tmp_path: Path, redis_server: RedisServer, postgres_server: PostgresServer
) -> None:
    rounds = list(FAULTS)
    run = run_soak(
        tmp_path,
        redis_server,
        postgres_server,
        postgres_server.url,
        lambda n: rounds[n - 1] if n <= len(rounds) else None,
        seed=5,
    )
    verdict = check(run)
    assert verdict.ok, "\n".join(verdict.violations)
    assert verdict.completed_as_planned == verdict.started
    assert all(r.fault_at is not None for r in run.rounds if r.fault != "none"), [
        (r.fault, r.fault_note) for r in run.rounds
    ]


@pytest.mark.timeout(600)
def test_crash_mid_transaction_on_the_generic_store(
    tmp_path: Path, redis_server: RedisServer, postgres_server: PostgresServer
) -> None:
    """The generic SQLAlchemy store commits in a multi-statement transaction: a worker
    killed inside it (rows written, COMMIT not sent) leaves nothing half-written."""
    rounds = ["crash:store.mid_commit", "crash:store.mid_commit", "postgres_restart"]
    store = create_database(postgres_server.url, "generic_store")
    run = run_soak(
        tmp_path,
        redis_server,
        postgres_server,
        store,
        lambda n: rounds[n - 1] if n <= len(rounds) else None,
        seed=7,
        generic_store=True,
    )
    verdict = check(run)
    assert verdict.ok, "\n".join(verdict.violations)
    assert verdict.completed_as_planned == verdict.started
    assert all(r.fault_at is not None for r in run.rounds), [r.fault_note for r in run.rounds]


#: The RabbitMQ rounds (~50 s with the node's start): the faults whose path differs most
#: from Redis's (the node restarted on its data, where Redis comes back empty; a dead
#: consumer's unacked messages ready again at once, where Redis keeps them for the
#: visibility timeout; a pool child's step sent again as a new message). Every other
#: fault runs on RabbitMQ in ``bench/chaos.py --broker rabbitmq`` (out of CI for time).
#: The same rounds run again on a quorum queue (topic exchange, ``x-delivery-limit`` 3):
#: redeliveries the broker counts, delayed messages held by RabbitMQ.
RABBITMQ_ROUNDS = ["worker_group_kill", "rabbitmq_restart", "pool_child_kill"]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("queue", ["classic", "quorum"])
def test_rabbitmq_broker_killed_and_workers_killed_nothing_lost(
    tmp_path: Path, rabbitmq_server: RabbitMQServer, postgres_server: PostgresServer, queue: str
) -> None:
    assert set(RABBITMQ_ROUNDS) <= set(RABBITMQ_FAULTS)
    store = create_database(postgres_server.url, f"rabbitmq_soak_{queue}")
    run = run_soak(
        tmp_path,
        rabbitmq_server,
        postgres_server,
        store,
        lambda n: RABBITMQ_ROUNDS[n - 1] if n <= len(RABBITMQ_ROUNDS) else None,
        seed=11,
        quorum=queue == "quorum",
    )
    verdict = check(run)
    assert verdict.ok, "\n".join(verdict.violations)
    assert verdict.completed_as_planned == verdict.started
    assert all(r.fault_at is not None for r in run.rounds), [r.fault_note for r in run.rounds]
    durable_queue_and_persistent_messages(run, rabbitmq_server.url)


def durable_queue_and_persistent_messages(run: SoakRun, url: str) -> None:
    """The mix's queue on the node is durable (re-declaring it not durable is refused),
    and the library's messages are persistent (``delivery_mode`` 2): what the node had
    written to disk comes back after its restart. Checked on the live node, with the
    workers stopped, on a resume message the mix app publishes with Celery's defaults."""
    from amqp.exceptions import PreconditionFailed
    from kombu.connection import Connection

    mix = make_mix_app(run.config)
    queue = run.config.queue
    try:
        mix.durable.send_resume("durability-probe")
        with Connection(url) as conn:  # type: ignore[no-untyped-call]
            channel = conn.channel()
            message = channel.basic_get(queue, no_ack=True)
            assert message is not None, f"the resume message is not in {queue}"
            assert message.properties.get("delivery_mode") == 2, message.properties
            with pytest.raises(PreconditionFailed, match="durable"):
                conn.channel().queue_declare(queue, durable=False)
    finally:
        mix.durable.store.close()
        mix.app.close()
