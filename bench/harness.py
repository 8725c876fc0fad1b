"""What the benchmark scripts share: CPU accounting from ``/proc``, worker subprocesses
(each in its own process group, stopped by group) and a run-wide time limit.

CPU of a process (``Cpu``) is the run time of each of its threads, in nanoseconds, from
``/proc/<pid>/task/<tid>/schedstat`` (``utime + stime`` of ``/proc/<pid>/stat``, the same
time, counts in 10 ms ticks: too coarse for a window of 50 steps of ~5 ms), plus
``cutime + cstime`` of ``/proc/<pid>/stat``: the CPU of its children that exited and were
reaped (a PostgreSQL backend whose connection closed, a replaced pool process), so a
process that ends inside a measured window is still counted, by its parent.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parents[1]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
ROLES = ("bench", "postgres", "redis", "rabbitmq", "worker main", "worker pool")
#: A child of the benchmark whose whole tree is one role (RabbitMQ: its launcher, `su`,
#: then the Erlang VM, `beam.smp`, as the `rabbitmq` user).
SERVERS = {"postgres": "postgres", "redis-server": "redis", "rabbitmq-server": "rabbitmq"}
WORKER_STOP_TIMEOUT = 60.0

# --------------------------------------------------------------------------- /proc


@dataclass(frozen=True)
class Proc:
    """One line of ``/proc/<pid>/stat``, the fields used here."""

    pid: int
    ppid: int
    name: str
    cpu: float
    """User + system CPU seconds so far, of the process itself."""
    reaped: float
    """User + system CPU seconds of its children that exited and were waited for."""


def processes() -> dict[int, Proc]:
    """Every process on the machine, from ``/proc/*/stat``."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # gone meanwhile
            continue
        # The name (field 2) is in parentheses and may hold spaces or parentheses.
        head, _, tail = text.rpartition(")")
        fields = tail.split()  # fields[0] is field 3 (state)
        pid = int(stat.parent.name)
        cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime
        reaped = (int(fields[13]) + int(fields[14])) / CLOCK_TICKS  # cutime, cstime
        table[pid] = Proc(pid, int(fields[1]), head.partition("(")[2], cpu, reaped)
    return table


def run_time(proc: Proc) -> float:
    """CPU seconds of a live process: its threads' run time (``schedstat``), in ns.

    Falls back to ``utime + stime`` (10 ms ticks) where ``schedstat`` cannot be read.
    """
    total = 0
    try:
        for task in Path(f"/proc/{proc.pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError, IndexError):  # a thread gone
                total += int((task / "schedstat").read_text().split()[0])
    except OSError:
        return proc.cpu
    return total / 1e9 if total else proc.cpu


@dataclass(frozen=True)
class Cpu:
    """CPU seconds used so far, by this run's processes (by role) and by the machine.

    The roles: this script (``bench``), the PostgreSQL, Redis and RabbitMQ servers it
    started (every process of their trees), and one worker's main process and pool processes.
    Other children of this script (another, idle worker) are left out.
    """

    at: float
    roles: defaultdict[str, float]
    machine: float

    @classmethod
    def now(cls, worker: int | None) -> Cpu:
        """Read it now; ``worker`` is the measured worker's main pid, if any."""
        me = os.getpid()
        table = processes()
        roles: defaultdict[str, float] = defaultdict(float)
        for proc in table.values():
            top = proc
            while top.ppid != me and top.ppid in table and top.pid != me:
                top = table[top.ppid]
            if top.pid != me and top.ppid != me:
                continue  # not one of ours
            spent = run_time(proc) + proc.reaped
            if top.pid == me:
                roles["bench"] += spent
            elif top.pid == worker:
                roles["worker main" if proc.pid == worker else "worker pool"] += spent
            elif top.name in SERVERS:
                roles[SERVERS[top.name]] += spent
        with open("/proc/stat") as stat:
            ticks = [int(field) for field in stat.readline().split()[1:]]
        idle = ticks[3] + ticks[4]  # idle + iowait
        return cls(time.perf_counter(), roles, (sum(ticks[:8]) - idle) / CLOCK_TICKS)

    def ms_per(self, start: Cpu, count: int) -> float:
        """Milliseconds of CPU per item (of ``count``), all roles together."""
        return (sum(self.roles.values()) - sum(start.roles.values())) * 1000 / count

    def since(self, start: Cpu, count: int, item: str = "workflow") -> str:
        """Milliseconds of CPU per item (of ``count``) by role, and the machine's load."""
        seconds = self.at - start.at
        parts = [
            f"{role} {(self.roles[role] - start.roles[role]) * 1000 / count:.2f}"
            for role in ROLES
            if self.roles[role] - start.roles[role] > 0.005
        ]
        ours = sum(self.roles.values()) - sum(start.roles.values())
        machine = self.machine - start.machine
        return (
            f"CPU ms per {item}: {', '.join(parts)}; machine busy "
            f"{machine / seconds:.2f} cores, {(machine - ours) / seconds:.2f} of them "
            "by other processes"
        )


# --------------------------------------------------------------------------- workers


class Worker:
    """A ``celery worker`` subprocess in its own process group, its output in a log."""

    def __init__(
        self,
        app: str,
        name: str,
        logs: Path,
        args: Sequence[str] = (),
        python: str = sys.executable,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.log = logs / f"{name}.log"
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                [
                    python,
                    "-m",
                    "celery",
                    "-A",
                    app,
                    "worker",
                    "--loglevel=WARNING",
                    "--without-gossip",
                    "--without-mingle",
                    "--without-heartbeat",
                    f"--hostname={name}@%h",
                    *args,
                ],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid = self.proc.pid

    def trouble(self) -> str | None:
        """Why it will not do its work, if it will not: it exited, or a task crashed."""
        if self.proc.poll() is not None:
            return f"worker {self.name} exited ({self.proc.returncode})"
        for line in self.log.read_text(errors="replace").splitlines():
            if "raised unexpected" in line or "Unrecoverable error" in line:
                return f"worker {self.name}: {line.strip()}"
        return None

    def tail(self, lines: int = 20) -> str:
        text = self.log.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join([f"--- last lines of {self.log}:", *text])

    def stop(self) -> None:
        """Warm shutdown (SIGTERM to its process group); SIGKILL if it hangs."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(WORKER_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.proc.wait(WORKER_STOP_TIMEOUT)
        with contextlib.suppress(ProcessLookupError):  # pool processes left behind, if any
            os.killpg(self.pid, signal.SIGKILL)


def stop_all(workers: Sequence[Worker], failed: bool) -> None:
    """Stop every worker; after a failure, print the end of each one's log first."""
    for worker in workers:
        if failed:
            print(worker.tail(), file=sys.stderr)
        worker.stop()


# --------------------------------------------------------------------------- limits


@contextlib.contextmanager
def time_limit(seconds: float, what: str) -> Iterator[None]:
    """Raise ``TimeoutError`` in the main thread after ``seconds``; SIGTERM exits cleanly.

    Either way the callers' ``finally`` blocks run, so workers and servers are stopped.
    """

    def expire(signum: int, frame: FrameType | None) -> None:
        raise TimeoutError(f"{what}: not done after {seconds:.0f} s (--timeout)")

    def terminate(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(143)

    old_alarm = signal.signal(signal.SIGALRM, expire)
    old_term = signal.signal(signal.SIGTERM, terminate)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_alarm)
        signal.signal(signal.SIGTERM, old_term)
