"""Durable workflows against a bare Celery chain, measured in the same run.

Starts a throwaway Redis (broker and the chain's result backend) and PostgreSQL (the
durable store, with fsync on: a real database's commit cost), and two prefork worker
subprocesses of the same concurrency: one for ``bench/bench_app.py`` (the durable steps and
the chain's ``hop``, prefetch 1 and ``acks_late``) and one for
``bench/bench_app_defaults.py`` (the same ``hop`` with Celery's default settings, prefetch
4 and early ack, on a queue of its own). Then it measures:

* a 20-step durable workflow x50, one at a time and all at once, against a 20-task
  ``chain`` x50 the same ways on each of the two workers (steps per second);
* the CPU time per step of every process of the run (this script, the measured worker's
  main and pool processes, redis-server, every PostgreSQL process; from ``/proc``) over
  the one-at-a-time runs;
* a 1-step workflow's start-to-result latency against one bare task's round trip;
* a saga of 20 steps whose 20th fails: from the start until its 19 compensations have run
  (median of ``--saga-runs``), and the same saga in celery-saga 0.1.1 when an interpreter
  that has it is found (``--peer-python``; ``bench/saga_peer.py``).

    python bench/throughput.py [--workflows 50] [--steps 20] [--concurrency 2]
                               [--broker redis|rabbitmq|both] [--rounds 1]

The last line is the ratio durable/chain of steps per second (all-at-once runs).

``--broker rabbitmq`` runs it all with a throwaway RabbitMQ node as the broker
(``tests/rabbitmq_server.py``; Redis stays the chain's result backend, PostgreSQL the
store; celery-saga is measured on Redis only). ``--broker both`` runs this script once
per broker, one after the other (``--rounds`` times, the order alternating), each with
servers and workers of its own, and ends with a table of both and RabbitMQ / Redis.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from rabbitmq_server import start_rabbitmq  # noqa: E402
from servers import start_postgres, start_redis  # noqa: E402

from bench.harness import Cpu, Worker, stop_all, time_limit  # noqa: E402

PEER_PYTHON = "/tmp/peervenv/bin/python"
PEERS_RUN = "../shared/peers/run_all.sh"
CHAIN_D = "chain (Celery defaults)"


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def load_average() -> str:
    """The machine's 1, 5 and 15-minute load averages (other jobs share it)."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workflows", type=int, default=50)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--latency-samples", type=int, default=50)
    parser.add_argument("--saga-runs", type=int, default=10)
    parser.add_argument("--saga-steps", type=int, default=20)
    parser.add_argument(
        "--peer-python", default=PEER_PYTHON, help="an interpreter with celery-saga 0.1.1"
    )
    parser.add_argument("--timeout", type=float, default=1200, help="seconds for the run")
    parser.add_argument(
        "--broker",
        choices=("redis", "rabbitmq", "both"),
        default="redis",
        help="the broker: Redis, RabbitMQ, or both, one run each (default: redis)",
    )
    parser.add_argument("--rounds", type=int, default=1, help="with --broker both: runs per broker")
    parser.add_argument("--json", type=Path, help=argparse.SUPPRESS)  # for --broker both
    opts = parser.parse_args()
    if opts.broker == "both":
        both(opts)
        return

    tmp = Path(tempfile.mkdtemp(prefix="celery-durable-bench-"))
    with contextlib.ExitStack() as servers:
        redis = servers.enter_context(start_redis())
        pg = servers.enter_context(start_postgres(durable=True))
        broker = redis.url
        if opts.broker == "rabbitmq":
            broker = servers.enter_context(start_rabbitmq()).url
        os.environ.update(
            BENCH_BROKER=broker,
            BENCH_BACKEND=redis.url.rsplit("/", 1)[0] + "/1",
            BENCH_STORE=pg.url,
            PYTHONPATH=str(ROOT),
        )
        print(f"broker: {opts.broker}; load average before: {load_average()}", flush=True)
        pool = ["--pool=prefork", f"--concurrency={opts.concurrency}"]
        workers: list[Worker] = []
        failed = True
        try:
            workers.append(Worker("bench.bench_app", "durable", tmp, pool))
            workers.append(Worker("bench.bench_app_defaults", "defaults", tmp, pool))
            with time_limit(opts.timeout, "bench/throughput.py"):
                figures = run(opts, workers[0], workers[1], tmp)
            failed = False
        finally:
            stop_all(workers, failed)
            if failed:
                print(f"worker logs in {tmp}", file=sys.stderr)
        figures["load average"] = [load_average()]
        print(f"load average after: {load_average()}", flush=True)
        if opts.json is not None:
            opts.json.write_text(json.dumps(figures))


#: The figures ``--broker both`` compares: (label, key in a run's figures, unit); a
#: higher figure is better for steps/s only.
COMPARED = (
    ("steps/s, chain, one at a time", "chain, one at a time", "steps/s"),
    ("steps/s, durable, one at a time", "durable, one at a time", "steps/s"),
    ("steps/s, chain (Celery defaults), one at a time", f"{CHAIN_D}, one at a time", "steps/s"),
    ("steps/s, chain, all at once", "chain, all at once", "steps/s"),
    ("steps/s, durable, all at once", "durable, all at once", "steps/s"),
    ("steps/s, chain (Celery defaults), all at once", f"{CHAIN_D}, all at once", "steps/s"),
    ("latency median, bare task", "latency bare", "ms"),
    ("latency median, 1-step workflow", "latency durable", "ms"),
    ("CPU per step one at a time, chain", "cpu chain", "ms"),
    ("CPU per step one at a time, durable", "cpu durable", "ms"),
    ("saga of 20, start to 19 compensations done", "saga", "ms"),
    ("ratio durable / chain, one at a time", "ratio one at a time", "x"),
    ("ratio durable / chain, all at once", "ratio all at once", "x"),
    ("ratio durable / chain (Celery defaults), all at once", "ratio defaults all at once", "x"),
    ("latency ratio durable / bare", "latency ratio", "x"),
    ("CPU ratio durable / chain", "cpu ratio", "x"),
)


def both(opts: argparse.Namespace) -> None:
    """Run this script once per broker (``--rounds`` times, alternating), then compare."""
    figures: dict[str, list[dict[str, Any]]] = {"redis": [], "rabbitmq": []}
    order = ["redis", "rabbitmq"]
    tmp = Path(tempfile.mkdtemp(prefix="celery-durable-bench-both-"))
    args = [a for a in sys.argv[1:] if not a.startswith("--broker") and a != "both"]
    for number in range(opts.rounds):
        for broker in order if number % 2 == 0 else order[::-1]:
            out = tmp / f"{broker}-{number}.json"
            print(f"=== round {number + 1}, {broker} ===", flush=True)
            subprocess.run(
                [sys.executable, __file__, *args, "--broker", broker, "--json", str(out)],
                check=True,
            )
            figures[broker].append(json.loads(out.read_text()))
    print(f"=== Redis and RabbitMQ, {opts.rounds} run(s) each, alternating ===")
    for label, key, unit in COMPARED:
        values = {
            b: [f[key] for f in runs if f.get(key) is not None] for b, runs in figures.items()
        }
        if not all(values.values()):
            continue
        redis, rabbit = (statistics.median(values[b]) for b in order)
        shown = "  ".join(f"{b} " + " / ".join(f"{v:.2f}" for v in values[b]) for b in order)
        print(f"{label:<54} {shown} {unit}; RabbitMQ / Redis {rabbit / redis:.2f}x")
    for broker in order:
        loads = ", ".join(f["load average"][0] for f in figures[broker])
        print(f"load average after each {broker} run: {loads}")


def run(opts: argparse.Namespace, worker: Worker, defaults: Worker, tmp: Path) -> dict[str, Any]:
    """Measure; print every figure, and return them (for ``--broker both``)."""
    from celery import chain

    from bench.bench_app import durable, hop, steps
    from bench.bench_app_defaults import hop as hop_defaults

    n, wfs = opts.steps, opts.workflows

    def bare_chain(task: Any = hop) -> Any:
        return chain(task.s(0), *[task.s() for _ in range(n - 1)]).apply_async()

    def defaults_chain() -> Any:
        return bare_chain(hop_defaults)

    # Warm up: connections, imports, the store's schema, the workers' pools.
    for w, fn in ((worker, bare_chain), (defaults, defaults_chain)):
        try:
            assert fn().get(timeout=60) == n
        except Exception as exc:
            raise RuntimeError(f"warm-up of worker {w.name}: {exc!r}; {w.trouble()}") from exc
    assert steps.delay(n).result(timeout=60, interval=0.005) == n

    def serial(make: Callable[[], Any]) -> Callable[[], None]:
        def one_at_a_time() -> None:
            for _ in range(wfs):
                assert make().get(timeout=60) == n

        return one_at_a_time

    def parallel(make: Callable[[], Any]) -> Callable[[], None]:
        def all_at_once() -> None:
            results = [make() for _ in range(wfs)]
            for r in results:
                assert r.get(timeout=120) == n

        return all_at_once

    def durable_serial() -> None:
        for _ in range(wfs):
            assert steps.delay(n).result(timeout=60, interval=0.005) == n

    def durable_parallel() -> None:
        handles = [steps.delay(n) for _ in range(wfs)]
        for h in handles:
            assert h.result(timeout=120, interval=0.005) == n

    total = n * wfs
    rows: dict[str, float] = {}
    cpu: dict[str, tuple[Cpu, Cpu]] = {}
    chain_d = CHAIN_D
    for label, fn, measured in (
        ("chain, one at a time", serial(bare_chain), worker),
        ("durable, one at a time", durable_serial, worker),
        (f"{chain_d}, one at a time", serial(defaults_chain), defaults),
        ("chain, all at once", parallel(bare_chain), worker),
        ("durable, all at once", durable_parallel, worker),
        (f"{chain_d}, all at once", parallel(defaults_chain), defaults),
    ):
        before = Cpu.now(measured.pid)
        seconds = timed(fn)
        cpu[label] = (before, Cpu.now(measured.pid))
        rows[label] = total / seconds
        print(
            f"{label:<38} {total} steps in {seconds:6.2f} s = {total / seconds:7.1f} steps/s",
            flush=True,
        )

    def latency(fn: Callable[[], object]) -> list[float]:
        return [timed(fn) * 1000 for _ in range(opts.latency_samples)]

    bare = latency(lambda: hop.delay(0).get(timeout=30))
    one = latency(lambda: steps.delay(1).result(timeout=30, interval=0.002))
    for label, samples in (("bare task round trip", bare), ("1-step workflow", one)):
        q = statistics.quantiles(samples, n=10)
        print(f"{label:<38} median {statistics.median(samples):6.1f} ms   p90 {q[-1]:6.1f} ms")

    ms: dict[str, float] = {}
    for label in ("chain", "durable", chain_d):
        start, end = cpu[f"{label}, one at a time"]
        ms[label] = end.ms_per(start, total)
        print(f"{label}, one at a time: {end.since(start, total, 'step')}")
    print(
        "  (CPU from /proc: threads' schedstat run time + reaped children's cutime+cstime, "
        "of this script, the measured worker's main and pool processes, redis-server, "
        "RabbitMQ's node (with --broker rabbitmq) and every PostgreSQL process; the other "
        "worker, idle, left out)"
    )

    saga_ms = saga(opts, tmp)

    print(
        f"CPU per step, one at a time: {chain_d} {ms[chain_d]:.2f} ms, durable "
        f"{ms['durable']:.2f} ms, ratio {ms['durable'] / ms[chain_d]:.2f}x"
    )
    print(
        f"CPU per step, one at a time: chain {ms['chain']:.2f} ms, durable "
        f"{ms['durable']:.2f} ms, ratio {ms['durable'] / ms['chain']:.2f}x"
    )
    for mode in ("one at a time", "all at once"):
        print(
            f"ratio durable/{chain_d} steps/s, {mode}: "
            f"{rows[f'durable, {mode}'] / rows[f'{chain_d}, {mode}']:.2f}x"
        )
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
    return {
        **rows,
        "latency bare": statistics.median(bare),
        "latency durable": statistics.median(one),
        "cpu chain": ms["chain"],
        "cpu durable": ms["durable"],
        "saga": saga_ms,
        "ratio one at a time": rows["durable, one at a time"] / rows["chain, one at a time"],
        "ratio all at once": rows["durable, all at once"] / rows["chain, all at once"],
        "ratio defaults all at once": rows["durable, all at once"]
        / rows[f"{chain_d}, all at once"],
        "latency ratio": statistics.median(one) / statistics.median(bare),
        "cpu ratio": ms["durable"] / ms["chain"],
    }


def saga(opts: argparse.Namespace, tmp: Path) -> float:
    """The saga whose last step fails, here and (when it can run) in celery-saga; returns
    our median (ms)."""
    from bench.bench_app import saga_fails_last, undo
    from celery_durable import WorkflowFailed

    n = opts.saga_steps
    undo_name = getattr(undo, "name")  # noqa: B009  (a Celery task's name; untyped)

    def rollback_ms() -> float:
        start = time.perf_counter()
        handle = saga_fails_last.delay(n)
        try:
            handle.result(timeout=60, interval=0.002)
        except WorkflowFailed:
            elapsed = (time.perf_counter() - start) * 1000
        else:
            raise AssertionError("the saga should have failed after compensating")
        # The journal: n - 1 add_one, the failing step, then n - 1 undo in reverse.
        undone = [e for e in handle.history() if e.name == undo_name]
        assert [e.args[0] for e in undone] == list(range(n - 1, 0, -1)), undone
        assert all(e.state == "completed" for e in undone), undone
        return elapsed

    rollback_ms()  # warm-up
    times = [rollback_ms() for _ in range(opts.saga_runs)]
    ours = statistics.median(times)
    print(
        f"saga {n} steps, {n}th fails: start to {n - 1} compensations done: median "
        f"{ours:.1f} ms (min {min(times):.1f}, max {max(times):.1f}, {len(times)} runs; "
        "client polls the store every 2 ms)"
    )
    if opts.broker != "redis":
        print("celery-saga: measured with --broker redis only (its state lives in Redis)")
        return ours
    peer = saga_peer(opts, tmp)
    if peer is None:
        return ours
    print(
        f"saga {n} steps, {n}th fails, celery-saga 0.1.1 (Celery defaults, state in "
        f"Redis): median {peer:.1f} ms; ratio celery_durable/celery-saga {ours / peer:.2f}x"
    )
    return ours


def saga_peer(opts: argparse.Namespace, tmp: Path) -> float | None:
    """celery-saga's median, or ``None`` (said why) when it cannot be measured here."""
    python = opts.peer_python
    elsewhere = f"the peer is measured by {PEERS_RUN} (bench_saga.py)"
    try:
        subprocess.run(
            [python, "-c", "import celery_saga"], check=True, capture_output=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError):
        print(f"celery-saga: not importable with {python}; {elsewhere}")
        return None
    budget = 60 + opts.saga_runs * 30
    cmd = [python, str(ROOT / "bench" / "saga_peer.py"), "--runs", str(opts.saga_runs)]
    cmd += ["--steps", str(opts.saga_steps), "--concurrency", str(opts.concurrency)]
    cmd += ["--logs", str(tmp), "--timeout", str(budget)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=budget + 90)
    except subprocess.TimeoutExpired:
        print(f"celery-saga: its run did not end in {budget + 90} s; {elsewhere}")
        return None
    last = done.stdout.strip().splitlines()[-1:] or [""]
    if done.returncode != 0 or not last[0].startswith("saga peer median ms: "):
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        print(f"celery-saga: its run failed ({done.returncode}); {elsewhere}\n{tail}")
        return None
    return float(last[0].rpartition(" ")[2])


if __name__ == "__main__":
    main()
