"""Real PostgreSQL and Redis servers for tests and benchmarks, started on free loopback ports.

Each server runs in its own temporary directory (data, socket, logs) on a port chosen at
start, so concurrent test runs never collide. Both helpers return a :class:`RunningServer`
that unpacks as ``(url, stop)`` and is also a context manager::

    with start_postgres() as pg, start_redis() as redis:
        run_benchmark(store_url=pg.url, broker_url=redis.url)

A server is stopped by ``stop()`` (idempotent), at interpreter exit (``atexit``), and, if
this process is killed outright, by the kernel: the server gets its parent-death signal.

When running as root (containers, CI), PostgreSQL's ``initdb`` refuses to run, so the
cluster is created and run as the ``postgres`` OS user.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

INSTALL_HINT = (
    "install the servers the tests run against: "
    "`apt-get install postgresql redis-server` (Debian/Ubuntu), or run `make test`, "
    "which installs them"
)

START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0


class ServerNotAvailable(RuntimeError):
    """A server's binaries are not installed on this machine."""


class RunningServer(NamedTuple):
    """A started server: its URL and the function that stops it (idempotent)."""

    url: str
    stop: Callable[[], None]

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- PostgreSQL


def postgres_bindir() -> Path:
    """The directory holding ``initdb`` and ``postgres`` (not on PATH on Debian)."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, check=False
        ).stdout.strip()
        if out:
            candidates.append(Path(out))
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).parent)
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "postgres").is_file():
            return bindir
    raise ServerNotAvailable(
        f"PostgreSQL server binaries (initdb, postgres) not found; {INSTALL_HINT}"
    )


def start_postgres(
    parent: str | os.PathLike[str] | None = None, *, durable: bool = False
) -> RunningServer:
    """Create a throwaway cluster, start it on a free port and create database ``durable``.

    Args:
        parent: where to create the cluster's temporary directory (default: the system
            temp dir). When running as root it must be traversable by the ``postgres`` user.
        durable: keep PostgreSQL's crash-safety settings (fsync, synchronous commit) as a
            production server has them; benchmarks want this, tests want speed.

    Returns:
        ``postgresql+psycopg://postgres@127.0.0.1:PORT/durable`` and its ``stop``.

    Raises:
        ServerNotAvailable: PostgreSQL is not installed.
        RuntimeError: the server did not start (the message holds its log).
    """
    bindir = postgres_bindir()
    run_as = _postgres_user()
    root = Path(tempfile.mkdtemp(prefix="celery-durable-pg-", dir=parent))
    data, sockets = root / "data", root / "sockets"
    data.mkdir()
    sockets.mkdir()
    if run_as is not None:
        for path in (root, data, sockets):
            os.chown(path, run_as.pw_uid, run_as.pw_gid)
    try:
        _run(
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            run_as,
            root,
        )
        for _attempt in range(5):
            port = free_port()
            proc = _spawn(
                [
                    str(bindir / "postgres"),
                    "-D",
                    str(data),
                    "-p",
                    str(port),
                    "-k",
                    str(sockets),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "max_connections=200",
                    *(
                        ()
                        if durable
                        else (
                            "-c",
                            "fsync=off",
                            "-c",
                            "synchronous_commit=off",
                            "-c",
                            "full_page_writes=off",
                        )
                    ),
                ],
                run_as,
                root / "postgres.log",
                death_signal=signal.SIGQUIT,  # immediate shutdown
            )
            if _wait_until(functools.partial(_postgres_ready, port), proc):
                break
            _terminate(proc, signal.SIGQUIT)
            log = (root / "postgres.log").read_text(errors="replace")
            if "could not bind" not in log and "already in use" not in log:
                raise RuntimeError(f"PostgreSQL did not start; its log:\n{log}")
        else:
            raise RuntimeError("PostgreSQL: no free port found after 5 attempts")
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    base = f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    stop = _stopper(proc, signal.SIGINT, root)  # SIGINT: fast shutdown
    try:
        create_database(f"{base}/postgres", "durable")
    except BaseException:
        stop()
        raise
    return RunningServer(f"{base}/durable", stop)


def create_database(server_url: str, name: str) -> str:
    """Create database ``name`` on the server of ``server_url``; return the URL naming it."""
    import psycopg

    dsn = server_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(dsn, autocommit=True) as conn:
        # FILE_COPY: far faster than PG 15's default WAL_LOG for a tiny template.
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0 STRATEGY FILE_COPY')  # type: ignore[arg-type]
    return server_url.rsplit("/", 1)[0] + f"/{name}"


def _postgres_ready(port: int) -> bool:
    import psycopg

    try:
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return False


def _postgres_user() -> pwd.struct_passwd | None:
    """The OS user to run PostgreSQL as: ``postgres`` when we are root, else ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise ServerNotAvailable(
            f"running as root, PostgreSQL must run as the 'postgres' user, which does not "
            f"exist; {INSTALL_HINT}"
        ) from None


# --------------------------------------------------------------------------- Redis


def redis_binary() -> str:
    """The path of ``redis-server``."""
    path = shutil.which("redis-server")
    if path is None:
        raise ServerNotAvailable(f"redis-server not found on PATH; {INSTALL_HINT}")
    return path


def start_redis(parent: str | os.PathLike[str] | None = None) -> RunningServer:
    """Start a non-persistent ``redis-server`` on a free loopback port.

    Returns:
        ``redis://127.0.0.1:PORT/0`` and its ``stop``.

    Raises:
        ServerNotAvailable: redis-server is not installed.
        RuntimeError: the server did not start (the message holds its log).
    """
    binary = redis_binary()
    root = Path(tempfile.mkdtemp(prefix="celery-durable-redis-", dir=parent))
    try:
        for _attempt in range(5):
            port = free_port()
            proc = _spawn(
                [
                    binary,
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    str(root),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--daemonize",
                    "no",
                    "--protected-mode",
                    "no",
                ],
                None,
                root / "redis.log",
                death_signal=signal.SIGKILL,
            )
            if _wait_until(functools.partial(_redis_ready, port), proc):
                break
            _terminate(proc, signal.SIGKILL)
            log = (root / "redis.log").read_text(errors="replace")
            if "already in use" not in log:
                raise RuntimeError(f"redis-server did not start; its log:\n{log}")
        else:
            raise RuntimeError("redis-server: no free port found after 5 attempts")
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return RunningServer(f"redis://127.0.0.1:{port}/0", _stopper(proc, signal.SIGTERM, root))


def _redis_ready(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


# --------------------------------------------------------------------------- processes


def _run(cmd: list[str], run_as: pwd.struct_passwd | None, cwd: Path) -> None:
    result = subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, check=False, **_as_user(run_as)
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
        )


def _spawn(
    cmd: list[str], run_as: pwd.struct_passwd | None, log: Path, *, death_signal: int
) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        if run_as is not None:
            os.chown(log, run_as.pw_uid, run_as.pw_gid)
        return subprocess.Popen(
            cmd,
            cwd=log.parent,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            # Own session: a Ctrl-C aimed at pytest does not hit the server mid-test;
            # the fixture's teardown stops it.
            start_new_session=True,
            preexec_fn=_die_with_parent(death_signal),
            **_as_user(run_as),
        )


def _as_user(run_as: pwd.struct_passwd | None) -> dict[str, Any]:
    if run_as is None:
        return {}
    env = {**os.environ, "HOME": run_as.pw_dir, "USER": run_as.pw_name, "LOGNAME": run_as.pw_name}
    return {"user": run_as.pw_uid, "group": run_as.pw_gid, "extra_groups": [], "env": env}


def _die_with_parent(sig: int) -> Callable[[], None]:
    """A ``preexec_fn`` asking Linux to send ``sig`` to the child when this process dies."""

    def preexec() -> None:
        with contextlib.suppress(OSError, AttributeError):
            pr_set_pdeathsig = 1
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, sig)

    return preexec


def _wait_until(ready: Callable[[], bool], proc: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if ready():
            return True
        time.sleep(0.05)
    return False


def _terminate(proc: subprocess.Popen[bytes], sig: int) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _stopper(proc: subprocess.Popen[bytes], sig: int, root: Path) -> Callable[[], None]:
    stopped = False

    def stop() -> None:
        nonlocal stopped
        if stopped:
            return
        stopped = True
        atexit.unregister(stop)
        try:
            _terminate(proc, sig)
        finally:
            shutil.rmtree(root, ignore_errors=True)

    atexit.register(stop)
    return stop


@contextlib.contextmanager
def servers() -> Iterator[tuple[str, str]]:
    """Both servers at once: ``with servers() as (postgres_url, redis_url): ...``."""
    with start_postgres() as pg, start_redis() as redis:
        yield pg.url, redis.url
