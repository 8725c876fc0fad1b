"""The fault soak: the workflow mix under kills, restarts and duplicates, for a set time.

Starts a throwaway Redis (the broker) and PostgreSQL (the store, fsync on), two
``celery worker --pool=prefork --concurrency=2`` and two ``celery beat`` subprocesses, and
runs the rounds of ``tests/chaos/soak.py`` (the code CI runs, one round per fault) until
``--duration`` seconds have passed: every round starts the whole mix (``tests/chaos/mix.py``:
among others a continue-as-new with a straggler, a poison step in a saga, short steps the
worker kills aim at) and one of its workflows again under its id, and injects one fault
drawn at random (a round in eight has none, for the baseline). Then it checks every
workflow, the journal's audit trail and the run log (``tests/chaos/verdict.py`` and
``tests/chaos/losses_and_runs.py``) and prints the figures::

    python bench/chaos.py --duration 600 [--seed 1] [--generic-store] [--keep DIR]
                         [--broker redis|rabbitmq]

With ``--broker rabbitmq`` a throwaway RabbitMQ node (``tests/rabbitmq_server.py``) is the
broker, and its crash (SIGKILL, started again on its data) takes the place of Redis's
loss among the faults.

Exits 1 if any check failed.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from chaos.soak import Broker, broker_faults, run_soak  # noqa: E402
from chaos.verdict import judge_run  # noqa: E402
from rabbitmq_server import start_rabbitmq  # noqa: E402
from servers import start_postgres_restartable, start_redis_restartable  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of rounds")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--generic-store",
        action="store_true",
        help="the generic SQLAlchemy store on PostgreSQL instead of the fast path",
    )
    parser.add_argument(
        "--keep",
        type=Path,
        help="write the run log, the effects and every worker's log here and keep them "
        "(default: a temporary directory, removed at the end)",
    )
    parser.add_argument(
        "--broker",
        choices=("redis", "rabbitmq"),
        default="redis",
        help="the broker (default: redis)",
    )
    args = parser.parse_args()
    rng = random.Random(args.seed)
    deadline = time.monotonic() + args.duration
    faults: list[str] = []

    def next_fault(number: int) -> str | None:
        if number > 1 and time.monotonic() > deadline:
            return None
        if number == 1 or rng.random() < 1 / 8:
            return "none"
        return rng.choice(faults)

    with (
        tempfile.TemporaryDirectory(prefix="celery-durable-soak-") as tmp,
        contextlib.ExitStack() as servers,
        start_postgres_restartable(durable=True) as postgres,
    ):
        broker: Broker
        if args.broker == "rabbitmq":
            broker = servers.enter_context(start_rabbitmq())
        else:
            broker = servers.enter_context(start_redis_restartable())
        faults[:] = [f for f in broker_faults(broker) if f != "none"]
        root = args.keep or Path(tmp) / "soak"
        run = run_soak(
            root,
            broker,
            postgres,
            postgres.url,
            next_fault,
            seed=args.seed,
            generic_store=args.generic_store,
        )
        verdict = judge_run(run)
    print("\n".join(verdict.lines))
    return 0 if verdict.ok else 1


if __name__ == "__main__":
    sys.exit(main())
