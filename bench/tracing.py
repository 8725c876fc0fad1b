"""Tracing overhead: the same durable workflows with ``durable_tracing`` on and off, in one run.

Starts a throwaway Redis (broker) and PostgreSQL (store, fsync on) and two prefork
workers of ``bench/tracing_app.py`` with the same settings, on queues of their own: one
with tracing off (``durable_tracing = False``), one with it on (the OpenTelemetry SDK, a
batch processor, an exporter that drops the spans). The caller starts each side's
workflows through an app of the same setting (with tracing on, ``.delay()`` stores the
trace; its first pass runs in the caller). Rounds alternate off, on, off, on, ... so
drift in the machine's load hits both sides alike; each round runs a 20-step workflow
x50, one at a time and all at once.

    python bench/tracing.py [--rounds 3] [--workflows 50] [--steps 20] [--concurrency 2]

Prints steps per second per side and mode (median over rounds) and the ratio on/off.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from servers import start_postgres, start_redis  # noqa: E402

from bench.harness import Worker, stop_all, time_limit  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workflows", type=int, default=50)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=1200)
    opts = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="celery-durable-bench-tracing-"))
    with start_redis() as redis, start_postgres(durable=True) as pg:
        os.environ.update(BENCH_BROKER=redis.url, BENCH_STORE=pg.url, PYTHONPATH=str(ROOT))
        pool = ["--pool=prefork", f"--concurrency={opts.concurrency}"]
        workers: list[Worker] = []
        failed = True
        try:
            for side, flag in (("off", "0"), ("on", "1")):
                env = {**os.environ, "BENCH_TRACING": flag, "BENCH_QUEUE": f"tracing-{side}"}
                workers.append(Worker("bench.tracing_app", f"tracing-{side}", tmp, pool, env=env))
            with time_limit(opts.timeout, "bench/tracing.py"):
                run(opts)
            failed = False
        finally:
            stop_all(workers, failed)
            if failed:
                print(f"worker logs in {tmp}", file=sys.stderr)


def run(opts: argparse.Namespace) -> None:
    from bench import tracing_app

    tracing_app.tracer_provider()  # the caller's, for the side with tracing on
    sides: dict[str, Any] = {}
    for side, tracing in (("off", False), ("on", True)):
        _, durable = tracing_app.make_app(tracing, f"tracing-{side}")
        durable.step(name="bench.tracing.add_one")(tracing_app.add_one.run)
        workflow = durable.workflow(name="bench.tracing.steps")(tracing_app.steps.fn)
        sides[side] = (durable, workflow)
        assert workflow.delay(opts.steps).result(timeout=60, interval=0.005) == opts.steps
        assert (durable.tracing is not None) is tracing
    n, wfs = opts.steps, opts.workflows
    rates: dict[tuple[str, str], list[float]] = {}
    for round_ in range(opts.rounds):
        for side in ("off", "on"):
            _, workflow = sides[side]
            start = time.perf_counter()
            for _ in range(wfs):
                workflow.delay(n).result(timeout=120, interval=0.005)
            serial = n * wfs / (time.perf_counter() - start)
            start = time.perf_counter()
            handles = [workflow.delay(n) for _ in range(wfs)]
            for handle in handles:
                handle.result(timeout=300, interval=0.005)
            together = n * wfs / (time.perf_counter() - start)
            rates.setdefault((side, "one at a time"), []).append(serial)
            rates.setdefault((side, "all at once"), []).append(together)
            print(
                f"round {round_ + 1} tracing {side:3}: {serial:7.1f} steps/s one at a time, "
                f"{together:7.1f} all at once",
                flush=True,
            )
    for mode in ("one at a time", "all at once"):
        off = statistics.median(rates[("off", mode)])
        on = statistics.median(rates[("on", mode)])
        print(f"{mode:14}: off {off:7.1f} steps/s, on {on:7.1f} steps/s, on/off {on / off:.3f}")


if __name__ == "__main__":
    main()
