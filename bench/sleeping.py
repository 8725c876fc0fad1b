"""100,000 sleeping workflows in the PostgreSQL store: what they cost, how fast they wake.

Starts a throwaway Redis (the broker) and PostgreSQL (the store, fsync on), and a prefork
worker subprocess (``bench/sleeping_app.py``: ``await ctx.sleep(3600); return "woke"``,
``durable_eta_max`` 10 s, so every timer lives in the store only), then:

1. runs a warm-up and measures the worker's RSS (main process + pool children) with no
   sleeping workflow;
2. starts N workflows from several threads (``sleeper.apply_async``: one INSERT and one
   resume message each; the worker's first pass journals the timer) and waits until all
   N are ``running`` with one pending timer each: the start rate;
3. measures the store's bytes per sleeping workflow (both tables with their indexes and
   TOAST, minus their size before), the worker's RSS again (a sleeping workflow is rows,
   nothing in a worker) and that Redis holds no message for them;
4. stops the worker, publishes N resume messages for made-up ids to the default queue
   (no consumer; purged after): the bare publish rate of this broker from this process,
   through the very call the tick makes (``durable.send_resume``);
5. moves the benchmark's clock (``celery_durable.testing.Clock``) past every timer, so
   all N come due at once, and runs the tick there (``durable.recover()``, what beat's
   tick task runs): how many instances per second it claims and sends a resume message;
6. starts a worker whose clock is ahead by the same amount, and waits until all N are
   completed: timers fired (and journaled) per second, counted from the tick's start.

Each phase also reports the CPU time its processes used per workflow (from ``/proc``):
this script, PostgreSQL, Redis, the worker's main process and its pool; and how busy the
machine was, other processes included (a benchmark sharing its cores says so).

    python bench/sleeping.py [--workflows 100000] [--threads 8] [--concurrency 2]

The last line is the ratio of the tick's claim+publish rate to the bare publish rate.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from servers import start_postgres, start_redis  # noqa: E402

from bench.harness import Cpu, processes  # noqa: E402

POLL = 0.5
"""Seconds between two looks at the store while waiting."""
SETTLE = 2.0
"""Seconds an idle worker is left alone before its memory is read."""
WORKER_STOP_TIMEOUT = 60.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workflows", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=8, help="threads starting workflows")
    parser.add_argument("--concurrency", type=int, default=2, help="worker pool processes")
    parser.add_argument("--warmup", type=int, default=200, help="workflows run to completion")
    parser.add_argument("--sleep", type=float, default=3600.0, help="each timer, in seconds")
    opts = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="celery-durable-sleeping-"))
    with start_redis() as redis, start_postgres(durable=True) as pg:
        os.environ.update(BENCH_BROKER=redis.url, BENCH_STORE=pg.url, PYTHONPATH=str(ROOT))
        bench = Bench(opts, redis.url, pg.url, tmp)
        try:
            bench.run()
        except BaseException:
            for log in sorted(tmp.glob("*.log")):
                tail = log.read_text(errors="replace").splitlines()[-20:]
                print(f"--- last lines of {log}:", *tail, sep="\n", file=sys.stderr)
            raise
        finally:
            bench.close()
    shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- helpers


def wait_until(
    label: str,
    done: Callable[[], tuple[bool, str]],
    timeout: float,
    trouble: Callable[[], str | None],
    every: float = 15.0,
) -> float:
    """Poll ``done`` (which returns ``(finished, progress text)``) until it finishes.

    Returns:
        The ``time.perf_counter()`` at which it was first seen finished.

    Raises:
        TimeoutError: not finished after ``timeout`` seconds.
        RuntimeError: ``trouble()`` reported why it never will (the worker failing).
    """
    start = last = time.perf_counter()
    while True:
        finished, progress = done()
        now = time.perf_counter()
        if finished:
            return now
        problem = trouble()
        if problem is not None:
            raise RuntimeError(f"{label}: {problem} ({progress})")
        if now - start > timeout:
            raise TimeoutError(f"{label}: not done after {timeout:.0f} s ({progress})")
        if now - last >= every:
            print(f"  ... {label}: {progress} after {now - start:.0f} s", flush=True)
            last = now
        time.sleep(POLL)


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def rss_kib(pid: int) -> int:
    """A process's resident set size (``VmRSS``), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@dataclass
class Rss:
    """A worker's memory: main process and pool children, in KiB."""

    main: int
    pool: list[int]

    @property
    def total(self) -> int:
        return self.main + sum(self.pool)

    def __str__(self) -> str:
        pool = " + ".join(f"{kib / 1024:.1f}" for kib in self.pool)
        return f"{self.total / 1024:.1f} MiB (main {self.main / 1024:.1f} + pool {pool})"


def worker_rss(pid: int) -> Rss:
    pool = sorted(p.pid for p in processes().values() if p.ppid == pid)
    return Rss(rss_kib(pid), [rss_kib(child) for child in pool])


# --------------------------------------------------------------------------- the run


class Bench:
    """The servers' clients, the worker subprocesses and the figures of one run."""

    def __init__(self, opts: argparse.Namespace, broker: str, store: str, tmp: Path) -> None:
        import psycopg
        import redis

        self.opts = opts
        self.n: int = opts.workflows
        self.tmp = tmp
        self.sql = psycopg.connect(
            store.replace("postgresql+psycopg://", "postgresql://", 1), autocommit=True
        )
        self.redis = redis.Redis.from_url(broker)
        self.workers: list[subprocess.Popen[bytes]] = []
        self.logs: dict[int, Path] = {}  # each worker's log, by pid
        self.timeout = 300 + self.n / 25  # for any phase: assumes >= 25 workflows/s
        self.figures: dict[str, Any] = {}

    # -- processes -------------------------------------------------------------------
    def start_worker(self, name: str, clock_offset: float = 0.0) -> subprocess.Popen[bytes]:
        """A prefork worker for the sleeping app, its clock ``clock_offset`` s ahead."""
        log = (self.tmp / f"{name}.log").open("w")
        env = {**os.environ, "BENCH_CLOCK_OFFSET": repr(clock_offset)}
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "bench.sleeping_app",
                "worker",
                "--pool=prefork",
                f"--concurrency={self.opts.concurrency}",
                "--loglevel=WARNING",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                f"--hostname={name}@%h",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.workers.append(worker)
        self.logs[worker.pid] = self.tmp / f"{name}.log"
        return worker

    def trouble(self, worker: subprocess.Popen[bytes]) -> Callable[[], str | None]:
        """A check for ``wait_until``: has the worker exited, or has a task of it failed?"""

        def check() -> str | None:
            if worker.poll() is not None:
                return f"the worker exited ({worker.returncode})"
            for line in self.logs[worker.pid].read_text(errors="replace").splitlines():
                if "raised unexpected" in line:  # e.g. a pass failing: its instance waits
                    return f"a worker task failed: {line}"
            return None

        return check

    def stop_worker(self, worker: subprocess.Popen[bytes]) -> None:
        """Warm shutdown (SIGTERM to its process group); SIGKILL if it hangs."""
        if worker.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(WORKER_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(worker.pid, signal.SIGKILL)
                worker.wait(WORKER_STOP_TIMEOUT)
        with contextlib.suppress(ProcessLookupError):  # pool processes left behind, if any
            os.killpg(worker.pid, signal.SIGKILL)

    def close(self) -> None:
        """Stop the workers and close every connection (the servers are stopped after)."""
        for worker in self.workers:
            self.stop_worker(worker)
        with contextlib.suppress(Exception):
            from bench.sleeping_app import durable

            durable.store.close()
        self.sql.close()
        self.redis.close()

    # -- the store and the broker ----------------------------------------------------
    def query(self, sql: str, *params: Any) -> tuple[Any, ...]:
        row = self.sql.execute(sql, params).fetchone()
        assert row is not None
        return tuple(row)

    def count(self, status: str) -> int:
        (found,) = self.query("SELECT count(*) FROM durable_instances WHERE status = %s", status)
        return int(found)

    def tables(self) -> list[str]:
        """The store's tables (``durable_instances``, ``durable_events``, ...)."""
        rows = self.sql.execute(
            "SELECT tablename FROM pg_tables WHERE tablename LIKE 'durable\\_%' ORDER BY 1"
        ).fetchall()
        return [name for (name,) in rows]

    def sizes(self) -> dict[str, int]:
        """Bytes on disk: each table's heap, its indexes, the rest (TOAST, maps); the total."""
        sizes: dict[str, int] = {}
        for table in self.tables():
            heap, indexes, total = self.query(
                "SELECT pg_relation_size(%s), pg_indexes_size(%s), pg_total_relation_size(%s)",
                table,
                table,
                table,
            )
            sizes[f"{table} heap"] = heap
            sizes[f"{table} indexes"] = indexes
            sizes[f"{table} TOAST, maps"] = total - heap - indexes
        sizes["total"] = sum(sizes.values())
        return sizes

    def broker(self) -> dict[str, int]:
        """Messages in the broker: in every queue (Redis lists), and delivered unacked."""
        redis: Any = self.redis  # redis-py's own annotations cover sync and async clients
        queued = 0
        for key in redis.scan_iter():
            if redis.type(key) == b"list":
                queued += int(redis.llen(key))
        return {
            "queued": queued,
            "unacked": int(redis.hlen("unacked")),
            "used_memory": int(redis.info("memory")["used_memory"]),
        }

    def versions(self) -> str:
        """What runs: Python, Celery, kombu, redis-py, the servers, celery_durable's path."""
        import celery
        import kombu
        import redis

        import celery_durable

        (postgres,) = self.query("SHOW server_version")
        server = self.redis.info("server")["redis_version"]
        return (
            f"Python {sys.version.split()[0]}, Celery {celery.__version__}, kombu "
            f"{kombu.__version__}, redis-py {redis.__version__}, PostgreSQL {postgres}, "
            f"Redis {server}; celery_durable from {Path(celery_durable.__file__).parent}"
        )

    # -- phases ----------------------------------------------------------------------
    def run(self) -> None:
        from bench.sleeping_app import durable

        durable.store.get("-")  # creates the schema
        empty = self.sizes()["total"]
        print(self.versions())
        print(f"{self.n} sleeping workflows; store tables empty: {empty / 1024:.0f} KiB")
        worker = self.warm_up()
        self.start_sleepers(worker)
        self.stop_worker(worker)
        self.bare_publish()
        self.tick()
        self.wake()
        self.summary()

    def warm_up(self) -> subprocess.Popen[bytes]:
        """Start the worker, run workflows through both timer paths, read its memory."""
        from bench.sleeping_app import sleeper

        worker = self.start_worker("sleep1")
        # Half fire at once (zero delay), half by a message with an ETA (1 s).
        handles = [sleeper.delay(i % 2) for i in range(self.opts.warmup)]
        for handle in handles:
            assert handle.result(timeout=120, interval=0.05) == "woke"
        time.sleep(SETTLE)
        self.figures["rss none"] = rss = worker_rss(worker.pid)
        print(f"worker RSS, no sleeping workflow: {rss}", flush=True)
        return worker

    def start_sleepers(self, worker: subprocess.Popen[bytes]) -> None:
        """Start N sleepers from several threads; wait until each journaled its timer."""
        from bench.sleeping_app import sleeper

        n, opts = self.n, self.opts
        # Compact, like the tables measured after: no dead rows nor free space maps.
        self.sql.execute(f"VACUUM (FULL, ANALYZE) {', '.join(self.tables())}")
        before, broker_before = self.sizes(), self.broker()

        stop = threading.Event()  # set on error or Ctrl-C: the threads stop starting

        def start_some(count: int) -> None:
            for _ in range(count):
                if stop.is_set():
                    return
                sleeper.apply_async((opts.sleep,))

        share, extra = divmod(n, opts.threads)
        cpu = Cpu.now(worker.pid)
        with ThreadPoolExecutor(opts.threads) as pool:
            futures = [pool.submit(start_some, share + (i < extra)) for i in range(opts.threads)]
            try:
                for future in futures:
                    future.result(timeout=self.timeout)
            finally:
                stop.set()
        called = time.perf_counter() - cpu.at
        print(f"started {n} in {called:.1f} s ({rate(n, called):.0f}/s, {opts.threads} threads)")

        def all_sleeping() -> tuple[bool, str]:
            running = self.count("running")
            return running == n, f"{running} sleeping"

        wait_until("sleeping", all_sleeping, self.timeout, self.trouble(worker))
        spent = Cpu.now(worker.pid)
        seconds = spent.at - cpu.at
        (timers,) = self.query(
            "SELECT count(*) FROM durable_events WHERE kind = 'timer' AND state = 'scheduled'"
        )
        assert timers == n, f"{timers} pending timers for {n} sleeping workflows"
        self.figures["start calls/s"] = rate(n, called)
        self.figures["start/s"] = rate(n, seconds)
        print(f"all {n} sleeping after {seconds:.1f} s: {rate(n, seconds):.0f}/s")
        print(f"  {spent.since(cpu, n)}", flush=True)

        # What they cost: worker memory, broker messages, store bytes.
        time.sleep(SETTLE)
        self.figures["rss sleeping"] = rss = worker_rss(worker.pid)
        print(f"worker RSS, {n} sleeping: {rss}")
        broker = self.broker()
        assert broker["queued"] == broker["unacked"] == 0, broker
        self.figures["broker sleeping"] = broker["queued"] + broker["unacked"]
        print(
            f"broker: {broker['queued']} messages queued, {broker['unacked']} unacked; "
            f"Redis used_memory {broker_before['used_memory'] / 2**20:.1f} MiB before, "
            f"{broker['used_memory'] / 2**20:.1f} MiB now"
        )
        written = self.sizes()
        # Compacted: no dead row versions (each instance row was updated once) nor
        # half-empty pages. The warm-up's few rows are rewritten too; they count as before.
        self.sql.execute(f"VACUUM (FULL, ANALYZE) {', '.join(self.tables())}")
        compact = self.sizes()
        self.figures["bytes written"] = (written["total"] - before["total"]) / n
        self.figures["bytes compact"] = (compact["total"] - before["total"]) / n
        print(
            f"store: {self.figures['bytes written']:.0f} bytes per sleeping workflow as "
            f"written, {self.figures['bytes compact']:.0f} after VACUUM FULL:"
        )
        for part, size in compact.items():
            if part != "total" and size != before[part]:
                print(f"  {part:<30} {(size - before[part]) / n:6.0f} bytes per workflow")

    def bare_publish(self) -> None:
        """The tick's own call, ``send_resume``, for ids that do not exist, to the default
        queue while no worker consumes it; purged after."""
        from bench.sleeping_app import durable

        ids = [uuid.uuid4().hex for _ in range(self.n)]
        cpu = Cpu.now(None)
        for instance_id in ids:
            durable.send_resume(instance_id)
        spent = Cpu.now(None)
        seconds = spent.at - cpu.at
        queued = self.broker()["queued"]
        assert queued == self.n, f"{queued} messages queued after publishing {self.n}"
        self.redis.delete(durable.app.conf.task_default_queue)
        assert self.broker()["queued"] == 0, "the bare publish's messages were not purged"
        self.figures["bare/s"] = rate(self.n, seconds)
        print(f"bare publish: {self.n} in {seconds:.1f} s = {rate(self.n, seconds):.0f}/s")
        print(f"  {spent.since(cpu, self.n)}", flush=True)

    def tick(self) -> None:
        """Move the clock past every timer and run the tick once, with no worker running."""
        from bench.sleeping_app import durable

        (latest,) = self.query(
            "SELECT max(wake_at) FROM durable_instances WHERE status = 'running'"
        )
        clock = durable.clock
        assert hasattr(clock, "advance"), "the bench app's clock is a testing.Clock"
        clock.advance(max(latest - durable.now(), timedelta(0)) + timedelta(seconds=1))
        self.figures["clock offset"] = (durable.now() - datetime.now(timezone.utc)).total_seconds()
        with self.timed_claims() as claims:
            cpu = Cpu.now(None)
            sent = durable.recover()
            spent = Cpu.now(None)
        seconds = spent.at - cpu.at
        self.figures["tick at"] = cpu.at
        assert sent == self.n, f"the tick sent {sent} resume messages for {self.n} due workflows"
        queued = self.broker()["queued"]
        assert queued == self.n, f"{queued} messages queued after the tick sent {self.n}"
        self.figures["tick/s"] = rate(sent, seconds)
        print(
            f"tick: {sent} claimed and sent in {seconds:.1f} s = {rate(sent, seconds):.0f}/s "
            f"({claims}; publishing: {seconds - sum(claims.times):.1f} s)"
        )
        print(f"  {spent.since(cpu, self.n)}", flush=True)

    def wake(self) -> None:
        """Start a worker whose clock is as far ahead; wait until every sleeper woke."""
        n, warmup = self.n, self.opts.warmup
        spawned = time.perf_counter()
        worker = self.start_worker("sleep2", self.figures["clock offset"])
        cpu = Cpu.now(worker.pid)
        first: list[float] = []

        def all_woke() -> tuple[bool, str]:
            woke = self.count("completed") - warmup
            if woke > 0 and not first:
                first.append(time.perf_counter())
            return woke == n, f"{woke} woke"

        done = wait_until("waking", all_woke, self.timeout, self.trouble(worker))
        spent = Cpu.now(worker.pid)
        woke, fired = self.query(
            "SELECT (SELECT count(*) FROM durable_instances WHERE status = 'completed'"
            " AND output = '\"woke\"'),"
            " (SELECT count(*) FROM durable_events WHERE kind = 'timer' AND state = 'completed')"
        )
        assert woke == n + warmup, f"{woke} workflows returned 'woke'"
        assert fired == n + warmup, f"{fired} timers fired"
        first_at = first[0] if first else spawned
        tick_at = self.figures["tick at"]
        self.figures["fired/s"] = rate(n, done - tick_at)
        self.figures["drain/s"] = rate(n, done - first_at)
        print(
            f"all {n} woke {done - tick_at:.1f} s after the tick started: "
            f"{rate(n, done - tick_at):.0f}/s (the worker was started "
            f"{spawned - tick_at:.1f} s after the tick started, fired its first timer "
            f"{first_at - spawned:.1f} s later, and {rate(n, done - first_at):.0f}/s from then)"
        )
        print(f"  {spent.since(cpu, n)} (worker start-up included)")
        time.sleep(SETTLE)
        broker = self.broker()
        assert broker["queued"] == broker["unacked"] == 0, broker
        print(f"worker RSS after waking them: {worker_rss(worker.pid)}", flush=True)

    def summary(self) -> None:
        f, n = self.figures, self.n
        rows = [
            ("sleeping workflows", f"{n}"),
            ("start: apply_async calls", f"{f['start calls/s']:.0f}/s"),
            ("start: until all sleeping (INSERT, message, pass)", f"{f['start/s']:.0f}/s"),
            ("store bytes per sleeping workflow, as written", f"{f['bytes written']:.0f}"),
            ("store bytes per sleeping workflow, compacted", f"{f['bytes compact']:.0f}"),
            ("worker RSS, none sleeping", f"{f['rss none'].total / 1024:.1f} MiB"),
            (f"worker RSS, {n} sleeping", f"{f['rss sleeping'].total / 1024:.1f} MiB"),
            ("broker messages while they sleep", f"{f['broker sleeping']}"),
            ("bare publish (send_resume)", f"{f['bare/s']:.0f}/s"),
            ("tick: claim + publish", f"{f['tick/s']:.0f}/s"),
            ("timers fired + journaled, from the tick", f"{f['fired/s']:.0f}/s"),
            ("  worker alone, from its first timer", f"{f['drain/s']:.0f}/s"),
        ]
        width = max(len(label) for label, _ in rows)
        print()
        for label, value in rows:
            print(f"{label:<{width}}  {value:>12}")
        print(f"ratio timers fired/bare publish: {f['fired/s'] / f['bare/s']:.3f}x")
        print(f"ratio tick publish/bare publish: {f['tick/s'] / f['bare/s']:.2f}x")

    @contextlib.contextmanager
    def timed_claims(self) -> Iterator[Claims]:
        """Time the store's ``claim_due`` calls (the tick's SQL) while the block runs."""
        from bench.sleeping_app import durable

        store: Any = durable.store  # an instance attribute shadows the method for a while
        claim = store.claim_due
        claims = Claims()

        def timed(*args: Any, **kwargs: Any) -> list[str]:
            start = time.perf_counter()
            try:
                return list(claim(*args, **kwargs))
            finally:
                claims.times.append(time.perf_counter() - start)

        store.claim_due = timed
        try:
            yield claims
        finally:
            del store.claim_due


@dataclass
class Claims:
    """The seconds each ``claim_due`` call of the tick took."""

    times: list[float] = field(default_factory=list)

    def __str__(self) -> str:
        if not self.times:
            return "no claim"
        return (
            f"{len(self.times)} claims: {sum(self.times):.1f} s, median "
            f"{statistics.median(self.times) * 1000:.0f} ms, max {max(self.times) * 1000:.0f} ms"
        )


if __name__ == "__main__":
    main()
