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
the terminal summary. The long run is ``python bench/chaos.py --duration SECONDS``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import (
    PostgresServer,
    RedisServer,
    create_database,
    start_postgres_restartable,
    start_redis_restartable,
)

from chaos import report
from chaos.soak import FAULTS, SoakRun, run_soak
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
