"""Replay flatness: does a step late in a long workflow cost more than an early one?

Starts a throwaway Redis (the broker) and PostgreSQL (the store, fsync on) and one
``celery -A bench.bench_app worker --pool=prefork --concurrency=2`` subprocess (prefetch
1, ``acks_late``), then runs ONE workflow of ``--steps`` (1,000) steps in a row
(``bench_app.steps``: each step ``add_one`` of the previous result) and measures:

* per-step time from the journal, after it completed: step k's ``completed_at`` minus
  step k-1's (step 1: minus its ``scheduled_at``), i.e. the time between two consecutive
  step completions as the workers stamped them; the median of steps 1-50 and of steps
  951-1000 and their ratio (the target: <= 1.5x);
* the same windows seen from this script: it polls the journal's newest event (one
  indexed read of one row per poll, more often as a window's end draws near) and takes a
  ``/proc`` CPU snapshot of every process of the run (this script, the worker's main and
  pool processes, redis-server, every PostgreSQL process) when step 1's event is first
  seen scheduled, step 50 seen completed, step 950 seen completed and step 1000 seen
  completed: wall time and CPU per step of each window.

    python bench/replay.py [--steps 1000] [--window 50] [--concurrency 2]

The last line is the ratio of the median step time, last window over first.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from servers import start_postgres, start_redis  # noqa: E402

from bench.harness import Cpu, Worker, stop_all, time_limit  # noqa: E402

MIN_POLL = 0.001
MAX_POLL = 0.05


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--window", type=int, default=50, help="steps at each end")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=900, help="seconds for the run")
    opts = parser.parse_args()
    if opts.steps < 2 * opts.window or opts.window < 2:
        parser.error("--steps must be at least twice --window, and --window at least 2")

    tmp = Path(tempfile.mkdtemp(prefix="celery-durable-replay-"))
    with start_redis() as redis, start_postgres(durable=True) as pg:
        os.environ.update(
            BENCH_BROKER=redis.url,
            BENCH_BACKEND=redis.url.rsplit("/", 1)[0] + "/1",
            BENCH_STORE=pg.url,
            PYTHONPATH=str(ROOT),
        )
        workers: list[Worker] = []
        failed = True
        try:
            pool = ["--pool=prefork", f"--concurrency={opts.concurrency}"]
            workers.append(Worker("bench.bench_app", "replay", tmp, pool))
            with time_limit(opts.timeout, "bench/replay.py"):
                run(opts, workers[0], pg.url)
            failed = False
        finally:
            stop_all(workers, failed)
            if failed:
                print(f"worker log in {tmp}", file=sys.stderr)


@dataclass
class Mark:
    """A moment of the run as this script saw it: CPU snapshot and polls so far."""

    cpu: Cpu
    polls: int
    completed: int
    """Steps seen completed at this moment (the workflow runs them one after the other)."""


class Journal:
    """Reads one instance's newest journal event, the cheapest way to follow its steps."""

    def __init__(self, url: str, worker: Worker) -> None:
        import psycopg

        self.sql = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://", 1))
        self.sql.autocommit = True
        self.worker = worker
        self.polls = 0
        self.last: tuple[int, str] | None = None

    def newest(self, instance_id: str) -> tuple[int, str] | None:
        """``(seq, state)`` of the instance's last event, if it has one."""
        self.polls += 1
        row = self.sql.execute(
            "SELECT seq, state FROM durable_events WHERE instance_id = %s"
            " ORDER BY seq DESC LIMIT 1",
            (instance_id,),
        ).fetchone()
        self.last = None if row is None else (int(row[0]), str(row[1]))
        return self.last

    def wait(self, instance_id: str, target: int, completed: bool, step_s: float) -> float:
        """Poll until event ``target`` exists (``completed``: and has completed).

        The pause between two polls is half the time the steps still to go should take,
        within 1-50 ms, and 1 ms while the awaited step is the next to complete: few polls
        far from the end, seen done ~1 ms after it is. The time a step takes is
        ``step_s`` until steps are seen completing during the wait, then their pace.

        Returns:
            The pace seen, in seconds per step (``step_s`` if none was seen).
        """
        first: tuple[float, int] | None = None  # (when, seq) of the first look
        checked = time.monotonic()
        while True:
            newest = self.newest(instance_id)
            now = time.monotonic()
            if newest is None:
                to_go = 1
            else:
                seq, state = newest
                if first is None:
                    first = (now, seq)
                elif seq > first[1]:
                    step_s = (now - first[0]) / (seq - first[1])
                if seq > target or (seq == target and (state == "completed" or not completed)):
                    return step_s
                to_go = target - seq + (state != "completed")
            if now - checked > 0.5:
                checked = now
                problem = self.worker.trouble()
                if problem is not None:
                    raise RuntimeError(problem)
            pause = MIN_POLL if to_go <= 1 else to_go * step_s / 2  # the last: any moment
            time.sleep(min(MAX_POLL, max(MIN_POLL, pause)))


def run(opts: argparse.Namespace, worker: Worker, store_url: str) -> None:
    from bench.bench_app import durable, steps

    n, w = opts.steps, opts.window
    # Warm up (connections, the schema, the pool) and learn the first step's seq.
    assert steps.delay(20).result(timeout=60, interval=0.005) == 20
    warm = steps.delay(20)
    start = time.perf_counter()
    assert warm.result(timeout=60, interval=0.005) == 20
    est = (time.perf_counter() - start) / 20
    base = min(e.seq for e in warm.history() if e.kind == "step")
    journal = Journal(store_url, worker)

    handle = steps.delay(n)
    marks: list[Mark] = []

    def mark() -> None:
        assert journal.last is not None
        seq, state = journal.last
        done = seq - base + (state == "completed")
        marks.append(Mark(Cpu.now(worker.pid), journal.polls, done))

    # Step 1's event seen (it is scheduled, or already running or done).
    journal.wait(handle.id, base, False, est)
    mark()
    for last_step in (w, n - w, n):
        est = journal.wait(handle.id, base + last_step - 1, True, est)
        mark()
    assert handle.result(timeout=60, interval=0.01) == n
    wall = marks[3].cpu.at - marks[0].cpu.at
    journal.sql.close()

    events = sorted((e for e in handle.history() if e.kind == "step"), key=lambda e: e.seq)
    assert len(events) == n, f"{len(events)} steps journaled, not {n}"
    assert all(e.completed_at for e in events), "steps not all completed"
    per = per_step_ms(events)
    durable.store.close()

    first, last = per[:w], per[-w:]
    print(f"one workflow of {n} steps (add_one), {wall:.1f} s from step 1 to step {n}")
    blocks = [statistics.median(per[i : i + n // 10]) for i in range(0, n, max(1, n // 10))]
    print(
        f"median step time by tenth of the workflow (journal): "
        f"{' '.join(f'{b:.2f}' for b in blocks)} ms"
    )
    paces: list[float] = []
    cpus: list[float] = []
    for label, window, offset, (a, b) in (
        (f"steps 1-{w}", first, 0, (marks[0], marks[1])),
        (f"steps {n - w + 1}-{n}", last, n - w, (marks[2], marks[3])),
    ):
        seconds = b.cpu.at - a.cpu.at
        count = b.completed - a.completed  # w, unless a mark was seen a step late
        if count != w:
            print(f"{label}: the poller's marks span {count} steps (CPU and pace per {count})")
        print(
            f"{label:<14} journal: median {statistics.median(window):6.2f} ms, mean "
            f"{statistics.fmean(window):6.2f} ms, slowest {max(window):6.1f} ms (step "
            f"{offset + window.index(max(window)) + 1}); seen by the poller: "
            f"{seconds * 1000 / count:6.2f} ms per step ({b.polls - a.polls} polls)"
        )
        print(f"{'':<14} {b.cpu.since(a.cpu, count, 'step')}")
        print(f"{'':<14} CPU per step, all processes: {b.cpu.ms_per(a.cpu, count):.2f} ms")
        paces.append(seconds / count)
        cpus.append(b.cpu.ms_per(a.cpu, count))
    cpu_first, cpu_last = cpus
    print(
        f"  (per-step time: completed_at of step k minus that of step k-1, stamped by the "
        f"worker; CPU from /proc (threads' schedstat run time + reaped children's "
        f"cutime+cstime) of this script, the worker's processes, redis-server and every "
        f"PostgreSQL process, snapshots taken when this script's poll of the journal "
        f"(every 1-50 ms, one indexed one-row read) first saw step 1 scheduled / step {w} "
        f"completed and step {n - w} completed / step {n} completed)"
    )
    print(
        f"CPU per step, all processes, steps {n - w + 1}-{n} / 1-{w}: "
        f"{cpu_last:.2f} / {cpu_first:.2f} ms = {cpu_last / cpu_first:.2f}x"
    )
    print(
        f"wall time per step seen by the poller, steps {n - w + 1}-{n} / 1-{w}: "
        f"{paces[1] / paces[0]:.2f}x (a mean: steps journaled in one commit would show "
        "here, not in the medians)"
    )
    print(
        f"replay flatness (median step time, steps {n - w + 1}-{n} / 1-{w}): "
        f"{statistics.median(last) / statistics.median(first):.2f}x"
    )


def per_step_ms(events: list[Any]) -> list[float]:
    """Milliseconds between consecutive step completions (step 1: since it was scheduled)."""
    per = [(events[0].completed_at - events[0].scheduled_at).total_seconds() * 1000]
    for before, after in itertools.pairwise(events):
        per.append((after.completed_at - before.completed_at).total_seconds() * 1000)
    return per


if __name__ == "__main__":
    main()
