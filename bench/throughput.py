"""Durable workflows against a bare Celery chain, measured in the same run.

Starts a throwaway Redis (broker and the chain's result backend) and PostgreSQL (the
durable store, with fsync on: a real database's commit cost), one prefork worker
subprocess for both, then measures:

* a 20-step durable workflow x50, one at a time and all at once, against a 20-task
  ``chain`` x50 the same ways (steps per second);
* a 1-step workflow's start-to-result latency against one bare task's round trip.

    python bench/throughput.py [--workflows 50] [--steps 20] [--concurrency 2]

The last line is the ratio durable/chain of steps per second (all-at-once runs).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from servers import start_postgres, start_redis  # noqa: E402


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workflows", type=int, default=50)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--latency-samples", type=int, default=50)
    opts = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="celery-durable-bench-"))
    with start_redis() as redis, start_postgres(durable=True) as pg:
        os.environ.update(
            BENCH_BROKER=redis.url,
            BENCH_BACKEND=redis.url.rsplit("/", 1)[0] + "/1",
            BENCH_STORE=pg.url,
            PYTHONPATH=str(ROOT),
        )
        log = (tmp / "worker.log").open("w")
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "bench.bench_app",
                "worker",
                "--pool=prefork",
                f"--concurrency={opts.concurrency}",
                "--loglevel=WARNING",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            run(opts)
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(60)
            log.close()


def run(opts: argparse.Namespace) -> None:
    from celery import chain

    from bench.bench_app import durable, hop, steps

    n, wfs = opts.steps, opts.workflows

    def bare_chain() -> object:
        return chain(hop.s(0), *[hop.s() for _ in range(n - 1)]).apply_async()

    # Warm up: connections, imports, the store's schema, the worker's pools.
    assert bare_chain().get(timeout=60) == n  # type: ignore[attr-defined]
    assert steps.delay(n).result(timeout=60, interval=0.005) == n

    def chain_serial() -> None:
        for _ in range(wfs):
            assert bare_chain().get(timeout=60) == n  # type: ignore[attr-defined]

    def durable_serial() -> None:
        for _ in range(wfs):
            assert steps.delay(n).result(timeout=60, interval=0.005) == n

    def chain_parallel() -> None:
        results = [bare_chain() for _ in range(wfs)]
        for r in results:
            assert r.get(timeout=120) == n  # type: ignore[attr-defined]

    def durable_parallel() -> None:
        handles = [steps.delay(n) for _ in range(wfs)]
        for h in handles:
            assert h.result(timeout=120, interval=0.005) == n

    total = n * wfs
    rows = {}
    for label, fn in (
        ("chain, one at a time", chain_serial),
        ("durable, one at a time", durable_serial),
        ("chain, all at once", chain_parallel),
        ("durable, all at once", durable_parallel),
    ):
        seconds = timed(fn)
        rows[label] = total / seconds
        print(f"{label:<26} {total} steps in {seconds:6.2f} s = {total / seconds:7.1f} steps/s")

    def latency(fn: Callable[[], object]) -> list[float]:
        return [timed(fn) * 1000 for _ in range(opts.latency_samples)]

    bare = latency(lambda: hop.delay(0).get(timeout=30))
    one = latency(lambda: steps.delay(1).result(timeout=30, interval=0.002))
    for label, samples in (("bare task round trip", bare), ("1-step workflow", one)):
        q = statistics.quantiles(samples, n=10)
        print(f"{label:<26} median {statistics.median(samples):6.1f} ms   p90 {q[-1]:6.1f} ms")
    print(
        f"latency ratio durable/bare (median): "
        f"{statistics.median(one) / statistics.median(bare):.2f}x"
    )
    print(
        f"ratio durable/chain steps/s, one at a time: "
        f"{rows['durable, one at a time'] / rows['chain, one at a time']:.2f}x"
    )
    durable.store.close()
    print(
        f"ratio durable/chain steps/s: "
        f"{rows['durable, all at once'] / rows['chain, all at once']:.2f}x"
    )


if __name__ == "__main__":
    main()
