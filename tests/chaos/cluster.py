"""Worker and beat subprocesses for the crash tests, each in its own process group.

``celery worker --pool=prefork`` forks its pool children into the main process's group;
``os.killpg(pid, SIGKILL)`` therefore takes the whole worker down at once, as a machine
losing power or the OOM killer would, with no chance to requeue or ack anything.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

TESTS = Path(__file__).resolve().parents[1]

#: How long a worker or beat may take to stop after SIGTERM before it is SIGKILLed.
STOP_TIMEOUT = 15.0


def wait_for(
    predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.05
) -> None:
    """Poll ``predicate`` until it is true; ``AssertionError`` naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {timeout} s")
        time.sleep(interval)


@dataclass
class Proc:
    """A started subprocess, its log file, and whether it was killed on purpose."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log: IO[bytes]
    killed: bool = False

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class Cluster:
    """The worker and beat processes of one test, all stopped by :meth:`stop_all`."""

    root: Path
    env: dict[str, str]
    app_module: str = "chaos.worker_app"
    procs: list[Proc] = field(default_factory=list)

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Proc:
        env = {**os.environ, **self.env, **(env or {})}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))
        env["PYTHONWARNINGS"] = ""
        log_path = self.root / f"{name}.log"
        log = log_path.open("ab")
        popen = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", self.app_module, *args],
            cwd=self.root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: killpg reaches the pool too
        )
        proc = Proc(name, popen, log_path, log)
        self.procs.append(proc)
        return proc

    def worker(
        self,
        name: str,
        concurrency: int = 2,
        env: dict[str, str] | None = None,
        args: Sequence[str] = (),
    ) -> Proc:
        """Start ``celery worker --pool=prefork`` (unique node name, no gossip/mingle),
        with ``env`` added to the cluster's environment and ``args`` to its command."""
        return self._spawn(
            name,
            [
                "worker",
                "--pool=prefork",
                f"--concurrency={concurrency}",
                "-n",
                f"{name}-{uuid.uuid4().hex[:6]}@%h",
                "--loglevel=INFO",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                *args,
            ],
            env,
        )

    def beat(self, name: str) -> Proc:
        """Start ``celery beat`` with a schedule file of its own."""
        return self._spawn(
            name, ["beat", "-s", str(self.root / f"{name}-schedule"), "--loglevel=INFO"]
        )

    def wait_ready(self, proc: Proc, timeout: float = 30.0) -> None:
        """Wait until a worker logs that it is ready (consuming)."""

        def ready() -> bool:
            if proc.popen.poll() is not None:
                raise AssertionError(f"{proc.name} exited ({proc.popen.returncode})")
            return " ready." in proc.log_text()

        wait_for(ready, timeout, f"{proc.name} ready")

    def kill(self, proc: Proc) -> None:
        """SIGKILL the process's whole group (main process and pool children)."""
        proc.killed = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.popen.pid, signal.SIGKILL)
        proc.popen.wait(STOP_TIMEOUT)

    def stop_all(self) -> None:
        """Stop every process still running (SIGTERM, then SIGKILL), whatever happens."""
        for proc in self.procs:
            if proc.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(max(0.1, deadline - time.monotonic()))
            # The group may outlive its leader (a pool child): always sweep it.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.popen.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(STOP_TIMEOUT)
            proc.log.close()

    def logs(self, tail: int = 120) -> str:
        """The last lines of every process's log, for a failure report."""
        parts = []
        for proc in self.procs:
            lines = proc.log_text().splitlines()[-tail:]
            parts.append(f"----- {proc.name} ({proc.log_path}) -----\n" + "\n".join(lines))
        return "\n".join(parts)
