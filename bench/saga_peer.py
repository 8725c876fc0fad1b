"""The saga peer: celery-saga 0.1.1 (PyPI), measured like ``../shared/peers/bench_saga.py``.

Not in the project's virtualenv: ``bench/throughput.py`` runs this file with an
interpreter that has ``celery_saga`` (``/tmp/peervenv/bin/python``, made by the peers'
``run_all.sh``), when there is one. As a module (``celery -A bench.saga_peer worker``) it
is the worker's app; as a script it starts that worker with its own interpreter, runs the
measure and prints ``saga peer median ms: X`` last.

The app has Celery's defaults (prefetch 4, early ack), like the peers' ``saga_app.py``,
on its own queue; the saga state lives in Redis (``RedisSagaBackend``, db 4). A saga is
``Saga(name).add_step(inc, compensate=dec)`` x 19 then a step raising
``PermanentFailure``: celery-saga runs it as one canvas chain and, on the error, the 19
compensations in reverse; ``SagaResult.get`` (polling the state in Redis every 2 ms)
raises ``SagaCompensated`` once they have run. Each ``dec`` counts itself in Redis
(db 3), checked after every run.

    BENCH_BROKER=redis://127.0.0.1:PORT/0 python bench/saga_peer.py [--runs 10] [--steps 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import redis
from celery import Celery
from celery_saga import (  # type: ignore[import-not-found, unused-ignore]
    PermanentFailure,
    Saga,
    SagaCompensated,
    set_default_backend,
)
from celery_saga.backends import (  # type: ignore[import-not-found, unused-ignore]
    RedisSagaBackend,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from bench.harness import Worker, stop_all, time_limit  # noqa: E402

QUEUE = "bench-saga-peer"
COUNTER = "bench:saga-peer:compensations"
BROKER = os.environ.get("BENCH_BROKER", "redis://127.0.0.1:6379/0")
BASE = BROKER.rsplit("/", 1)[0]

app = Celery("saga_peer", broker=BROKER, backend=f"{BASE}/1")
app.conf.update(
    task_default_queue=QUEUE, broker_connection_retry_on_startup=True, result_expires=600
)
set_default_backend(RedisSagaBackend(url=f"{BASE}/4", ttl=3600))
_counter: Any = None


def counter() -> Any:
    """The Redis client counting compensations (db 3), made on first use in a process."""
    global _counter
    if _counter is None:
        _counter = redis.Redis.from_url(f"{BASE}/3")
    return _counter


@app.task(name="saga_peer.inc")  # type: ignore[untyped-decorator]
def inc(x: int, **_ctx: Any) -> dict[str, int]:
    return {"x": x + 1}


@app.task(name="saga_peer.dec")  # type: ignore[untyped-decorator]
def dec(compensation_data: Any) -> None:
    counter().incr(COUNTER)


@app.task(name="saga_peer.fail")  # type: ignore[untyped-decorator]
def fail(x: int, **_ctx: Any) -> None:
    raise PermanentFailure(f"step fails on purpose at x={x}")


def make_saga(name: str, steps: int, fail_last: bool) -> Any:
    saga = Saga(name)
    for i in range(steps):
        saga.add_step(fail if fail_last and i == steps - 1 else inc, compensate=dec)
    return saga


def rollback_ms(saga: Any, x: int, steps: int, poll: float) -> float:
    """One saga whose last step fails: ms from ``run()`` until it is compensated."""
    before = int(counter().get(COUNTER) or 0)
    start = time.perf_counter()
    handle = saga.run(x=x)
    try:
        handle.get(timeout=60, interval=poll)
    except SagaCompensated:
        elapsed = (time.perf_counter() - start) * 1000
    else:
        raise AssertionError("the saga should have been compensated")
    done = int(counter().get(COUNTER) or 0) - before
    assert done == steps - 1, f"{done} compensations ran, not {steps - 1}"
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--poll", type=float, default=0.002)
    parser.add_argument("--logs", type=Path, default=Path("/tmp"))
    parser.add_argument("--timeout", type=float, default=300)
    opts = parser.parse_args()
    env = {**os.environ, "BENCH_BROKER": BROKER, "PYTHONPATH": str(ROOT)}
    workers = [
        Worker(
            "bench.saga_peer",
            "saga-peer",
            opts.logs,
            ["--pool=prefork", f"--concurrency={opts.concurrency}"],
            env=env,
        )
    ]
    failed = True
    try:
        with time_limit(opts.timeout, "celery-saga peer"):
            one = make_saga("bench_saga1", 1, fail_last=False)
            deadline = time.monotonic() + 60
            while True:  # the worker is up once a 1-step saga goes through
                try:
                    one.run(x=0).get(timeout=2, interval=opts.poll)
                    break
                except Exception:
                    if workers[0].trouble() or time.monotonic() > deadline:
                        raise
            saga = make_saga("bench_saga_fails_last", opts.steps, fail_last=True)
            rollback_ms(saga, 0, opts.steps, opts.poll)  # warm-up
            times = [rollback_ms(saga, i, opts.steps, opts.poll) for i in range(opts.runs)]
        print("runs ms: " + " ".join(f"{t:.1f}" for t in times))
        print(f"saga peer median ms: {statistics.median(times):.3f}")
        failed = False
    finally:
        stop_all(workers, failed)


if __name__ == "__main__":
    main()
