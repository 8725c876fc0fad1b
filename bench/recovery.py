"""A worker SIGKILLed mid-step: time to completion, durable workflow against a bare chain.

Starts a throwaway Redis (the broker, with kombu's default ``visibility_timeout``) and
PostgreSQL (the durable store, fsync on), then runs the crash tests' scenario
(``tests/chaos/scenarios.py``) both ways, each on its own queue with a
``celery worker --pool=prefork --concurrency=2`` and a ``celery beat`` subprocess:

* a durable workflow ``A -> B (4 s) -> C``; the worker's whole process group is SIGKILLed
  1.5 s into B (after B's heartbeats began) and, in a second run, 0.2 s into B (before
  its first heartbeat); a replacement worker is started at once;
* ``chain(a.si(), b.si(), c.si())`` of bare tasks with ``acks_late=True,
  reject_on_worker_lost=True``, killed 1.5 s into b the same way.

    python bench/recovery.py [--wait 60] [--timeout 60]

Prints, side by side, the time from the SIGKILL to completion.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from chaos.scenarios import KILL_INTO_STEP, KillRun, chain_kill, durable_kill  # noqa: E402
from kombu.transport.redis import Channel  # noqa: E402
from servers import create_database, start_postgres, start_redis  # noqa: E402

BEFORE_FIRST_BEAT = 0.2


def outcome(run: KillRun, visibility: float) -> str:
    if run.recovery is not None:
        return f"completed {run.recovery:6.2f} s after the SIGKILL"
    return f"not completed after {run.waited:.0f} s (waits for visibility_timeout={visibility:g} s)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--wait", type=float, default=60.0, help="seconds to wait for the bare chain (60)"
    )
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for the workflow (60)"
    )
    opts = parser.parse_args()
    visibility = float(Channel.visibility_timeout)

    tmp = Path(tempfile.mkdtemp(prefix="celery-durable-recovery-"))
    rows: list[tuple[str, KillRun]] = []
    with start_redis() as redis, start_postgres(durable=True) as pg:
        for label, kill_into in (
            (f"durable workflow, killed {KILL_INTO_STEP:g} s into B", KILL_INTO_STEP),
            (f"durable workflow, killed {BEFORE_FIRST_BEAT:g} s into B", BEFORE_FIRST_BEAT),
        ):
            store = create_database(pg.url, f"recovery_{len(rows)}")
            run = durable_kill(
                tmp / f"durable-{len(rows)}", redis.url, store, opts.timeout, kill_into
            )
            rows.append((label, run))
            print(f"{label:<46} {outcome(run, visibility)}", flush=True)
        store = create_database(pg.url, "recovery_chain")
        run = chain_kill(tmp / "chain", redis.url, store, wait=opts.wait)
        label = f"bare acks_late chain, killed {KILL_INTO_STEP:g} s into b"
        rows.append((label, run))
        print(f"{label:<46} {outcome(run, visibility)}", flush=True)

    print()
    print("| run (a 4 s middle step, worker SIGKILLed) | SIGKILL -> completed |")
    print("| --- | --- |")
    for label, run in rows:
        figure = (
            f"{run.recovery:.2f} s"
            if run.recovery is not None
            else f"not completed after {run.waited:.0f} s "
            f"(waits for visibility_timeout={visibility:g} s)"
        )
        print(f"| {label} | {figure} |")
    print(f"\nlogs: {tmp}")


if __name__ == "__main__":
    main()
