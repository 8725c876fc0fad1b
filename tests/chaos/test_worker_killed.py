"""A prefork worker SIGKILLed in the middle of a 4 s step, on Redis's default visibility
timeout.

The killed worker's message stays in Redis's ``unacked`` hash for ``visibility_timeout``
(3600 s by default) whatever ``acks_late`` / ``reject_on_worker_lost`` say: the main
process that would requeue it is dead too. A durable workflow still completes within
seconds, because its step's heartbeats stop, its ``wake_at`` comes due, and the beat tick
has the step sent again; a bare Celery chain waits for the visibility timeout.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from servers import create_database

from chaos import report
from chaos.apps import SLOW_SECONDS
from chaos.scenarios import KILL_INTO_STEP, KillRun, chain_kill, describe, durable_kill

#: The durable workflow must complete within this many seconds of the kill.
RECOVERY_BOUND = 20.0
#: How long the bare chain gets after the kill.
CHAIN_WAIT = 30.0
#: A kill this early in the step comes before its first heartbeat (interval 0.5 s).
BEFORE_FIRST_BEAT = 0.2

_databases = itertools.count()

Runs = Callable[..., KillRun]


def idempotency_key(record_key: str) -> str:
    return record_key.split("#", 1)[0]


@pytest.fixture(scope="module")
def durable_runs(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str, postgres_url: str
) -> Runs:
    """``durable_runs("sqlite" | "postgresql", kill_into=1.5)``: the kill scenario, run
    once per store and kill time, shared by the tests that check what it did."""
    runs: dict[tuple[str, float], KillRun | BaseException] = {}

    def get(kind: str, kill_into: float = KILL_INTO_STEP) -> KillRun:
        key = (kind, kill_into)
        if key not in runs:
            root = tmp_path_factory.mktemp(f"durable-kill-{kind}")
            if kind == "sqlite":
                store = f"sqlite:///{root}/journal.sqlite3"
            else:
                store = create_database(postgres_url, f"chaos_{os.getpid()}_{next(_databases)}")
            try:
                run = durable_kill(root, redis_url, store, RECOVERY_BOUND, kill_into)
            except Exception as exc:
                runs[key] = exc
                raise
            runs[key] = run
            what = f"durable workflow ({kind}, killed {kill_into:g} s into the step)"
            report.LINES.append(
                f"{what}: SIGKILL -> completed in {run.recovery:.2f} s"
                if run.recovery is not None
                else f"{what}: NOT completed {run.waited:.1f} s after SIGKILL"
            )
        got = runs[key]
        if isinstance(got, BaseException):
            raise got
        return got

    return get


def check_recovered(run: KillRun) -> None:
    """Completed in time; B ran twice (once killed), A and C once; one outcome per step."""
    print(run.logs)  # shown only if the test fails
    print(describe(run.history))
    assert run.completed, f"not completed {run.waited:.1f} s after the kill"
    assert run.recovery is not None
    print(f"recovery (SIGKILL -> completed): {run.recovery:.2f} s")
    assert run.recovery <= RECOVERY_BOUND
    # Nothing can complete before B's second run has slept its full 4 s.
    assert run.recovery >= SLOW_SECONDS

    # B: started twice (killed once), same idempotency key, different workers; ended once.
    b_starts = sorted(run.starts("B"), key=lambda r: r.at)
    assert len(b_starts) == 2, run.records
    assert len({idempotency_key(r.key) for r in b_starts}) == 1
    assert b_starts[0].pid != b_starts[1].pid
    (b_end,) = run.ends("B")
    assert b_end.pid == b_starts[1].pid
    assert b_end.at - b_starts[1].at >= SLOW_SECONDS
    # A and C: once each.
    for label in ("A", "C"):
        assert len(run.starts(label)) == 1, (label, run.records)
        assert len(run.ends(label)) == 1, (label, run.records)
    assert run.starts("C")[0].at > b_end.at

    # The journal: exactly one outcome per step, in order.
    assert [(e.kind.value, e.name, e.state.value) for e in run.history] == [
        ("step", "chaos.a", "completed"),
        ("step", "chaos.b", "completed"),
        ("step", "chaos.c", "completed"),
    ]
    assert [e.result for e in run.history] == ["a", "b", "c"]

    # What explains the recovery: the step was sent again by celery_durable, while Redis
    # never gave the killed worker's message back (it is still unacked). That message is
    # A's: A's task ran B right after A (durable_eager_steps), with no message of its own.
    assert "(chaos.b) shows no sign of life; sending it again" in run.logs
    assert "chaos.a" in run.stranded


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_step_killed_mid_run_is_sent_again_and_the_workflow_completes(
    durable_runs: Runs, kind: str
) -> None:
    """Killed 1.5 s into B, after its heartbeats began: B is sent again once five beats
    are missed (2.5 s), whatever the broker's visibility timeout."""
    check_recovered(durable_runs(kind))


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_step_sent_again_after_a_kill_counts_its_attempts(durable_runs: Runs, kind: str) -> None:
    """A step sent again after its worker died is a new message (``retries`` = 0): only
    the journal knows it is the second run."""
    run = durable_runs(kind)
    assert run.completed
    b_starts = sorted(run.starts("B"), key=lambda r: r.at)
    # StepInfo.attempt: "1 on the first run, then 2, 3, ... on retries and redeliveries".
    assert [r.key.rsplit("#", 1)[1] for r in b_starts] == ["attempt1", "attempt2"]
    # Event.attempts: "how many times a worker started the step".
    assert run.history[1].attempts == 2, describe(run.history)


def test_step_killed_before_its_first_heartbeat_is_sent_again(durable_runs: Runs) -> None:
    """Killed 0.2 s into B, before any heartbeat: nothing in the journal says B started,
    so it is sent again once its message is presumed lost (``durable_step_timeout``)."""
    run = durable_runs("postgresql", kill_into=BEFORE_FIRST_BEAT)
    check_recovered(run)


def test_bare_acks_late_chain_waits_for_the_visibility_timeout(
    tmp_path: Path, redis_url: str, postgres_db_url: str, durable_runs: Runs
) -> None:
    """The baseline: the same kill against ``chain(a, b, c)`` of bare tasks with
    ``acks_late=True, reject_on_worker_lost=True``, a replacement worker started at once."""
    run = chain_kill(tmp_path, redis_url, postgres_db_url, wait=CHAIN_WAIT)
    print(run.logs)  # shown only if the test fails
    report.LINES.append(
        f"bare acks_late chain: SIGKILL -> completed in {run.recovery:.2f} s"
        if run.recovery is not None
        else f"bare acks_late chain: not completed {run.waited:.0f} s after SIGKILL "
        "(waits for visibility_timeout=3600 s)"
    )
    assert len(run.starts("chain_A")) == 1, run.records
    assert run.starts("chain_B"), run.records
    assert not run.completed, (
        f"the bare chain completed {run.recovery:.1f} s after the kill: Celery redelivered "
        "the killed task before the visibility timeout"
    )
    assert run.waited >= CHAIN_WAIT
    assert len(run.starts("chain_B")) == 1, "b was never run again"
    assert run.ends("chain_B") == []
    assert "chaos.chain_b" in run.stranded, "b's message waits in Redis's unacked hash"
    # ... while the durable workflow, killed the same way, completed.
    durable = durable_runs("postgresql")
    assert durable.completed
    assert durable.recovery is not None
    assert durable.recovery <= RECOVERY_BOUND
