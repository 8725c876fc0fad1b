"""Real PostgreSQL and Redis servers for tests and benchmarks, started on free loopback ports.

Each server runs in its own temporary directory (data, socket, logs) on a port chosen at
start, so concurrent test runs never collide. Both helpers return a :class:`RunningServer`
that unpacks as ``(url, stop)`` and is also a context manager::

    with start_postgres() as pg, start_redis() as redis:
        run_benchmark(store_url=pg.url, broker_url=redis.url)

A server is stopped by ``stop()`` (idempotent), at interpreter exit (``atexit``), and, if
this process is killed outright, by the kernel: the server gets its parent-death signal.

For fault-injection tests, :func:`start_postgres_restartable` and
:func:`start_redis_restartable` return servers that can be crashed (``crash()``, ``kill()``)
and started again (``start()``) on the same URL, port and directory.

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
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from typing_extensions import Self

INSTALL_HINT = (
    "install the servers the tests run against: "
    "`apt-get install postgresql redis-server` (Debian/Ubuntu), or run `make test`, "
    "which installs them"
)

START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
RESTART_PORT_TIMEOUT = 10.0


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
    server = start_postgres_restartable(parent, durable=durable)
    return RunningServer(server.url, server.stop)


def start_postgres_restartable(
    parent: str | os.PathLike[str] | None = None, *, durable: bool = False
) -> PostgresServer:
    """Like :func:`start_postgres`, but the server can be crashed and started again.

    With ``durable=False`` commits are asynchronous (``synchronous_commit=off``): a
    :meth:`PostgresServer.crash` may lose the transactions committed in the last fraction
    of a second. Pass ``durable=True`` when a test needs every committed row to survive.

    Raises:
        ServerNotAvailable: PostgreSQL is not installed.
        RuntimeError: the server did not start (the message holds its log).
    """
    postmaster = _new_cluster(parent, durable=durable)
    root: Path = postmaster.keywords["root"]
    try:
        port, proc = _start_on_free_port(postmaster, "PostgreSQL")
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    base = f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    server = PostgresServer(f"{base}/durable", port, root, proc, postmaster)
    try:
        create_database(f"{base}/postgres", "durable")
    except BaseException:
        server.stop()
        raise
    return server


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


def _new_cluster(
    parent: str | os.PathLike[str] | None, *, durable: bool
) -> functools.partial[subprocess.Popen[bytes] | None]:
    """``initdb`` a cluster in a new temporary directory; return its postmaster starter.

    The result is :func:`_start_postmaster` bound to the cluster: call it with a port. Its
    ``keywords["root"]`` is the temporary directory, which the caller removes when done.
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
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return functools.partial(
        _start_postmaster, bindir=bindir, run_as=run_as, root=root, durable=durable
    )


def _start_postmaster(
    port: int, *, bindir: Path, run_as: pwd.struct_passwd | None, root: Path, durable: bool
) -> subprocess.Popen[bytes] | None:
    """Start the cluster in ``root/data`` on ``port`` and wait until it accepts connections.

    Returns:
        The postmaster, or ``None`` when the port is taken.

    Raises:
        RuntimeError: the server did not start for another reason (the message holds its log).
    """
    log = root / "postgres.log"
    offset = log.stat().st_size if log.exists() else 0
    proc = _spawn(
        [
            str(bindir / "postgres"),
            "-D",
            str(root / "data"),
            "-p",
            str(port),
            "-k",
            str(root / "sockets"),
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
        log,
        death_signal=signal.SIGQUIT,  # immediate shutdown
    )
    if _wait_until(functools.partial(_postgres_ready, port), proc):
        return proc
    _terminate(proc, signal.SIGQUIT)
    text = log.read_text(errors="replace")
    if "could not bind" in text[offset:] or "already in use" in text[offset:]:
        return None
    raise RuntimeError(f"PostgreSQL did not start; its log:\n{text}")


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
    server = start_redis_restartable(parent)
    return RunningServer(server.url, server.stop)


def start_redis_restartable(parent: str | os.PathLike[str] | None = None) -> RedisServer:
    """Like :func:`start_redis`, but the server can be killed and started again.

    Raises:
        ServerNotAvailable: redis-server is not installed.
        RuntimeError: the server did not start (the message holds its log).
    """
    server = _new_redis(parent)
    root: Path = server.keywords["root"]
    try:
        port, proc = _start_on_free_port(server, "redis-server")
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return RedisServer(f"redis://127.0.0.1:{port}/0", port, root, proc, server)


def _new_redis(
    parent: str | os.PathLike[str] | None,
) -> functools.partial[subprocess.Popen[bytes] | None]:
    """A new temporary directory and the :func:`_start_redis_server` bound to it.

    Call the result with a port. Its ``keywords["root"]`` is the temporary directory,
    which the caller removes when done.
    """
    binary = redis_binary()
    root = Path(tempfile.mkdtemp(prefix="celery-durable-redis-", dir=parent))
    return functools.partial(_start_redis_server, binary=binary, root=root)


def _start_redis_server(port: int, *, binary: str, root: Path) -> subprocess.Popen[bytes] | None:
    """Start a non-persistent ``redis-server`` on ``port`` and wait until it answers PING.

    Returns:
        The server, or ``None`` when the port is taken.

    Raises:
        RuntimeError: the server did not start for another reason (the message holds its log).
    """
    log = root / "redis.log"
    offset = log.stat().st_size if log.exists() else 0
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
        log,
        death_signal=signal.SIGKILL,
    )
    if _wait_until(functools.partial(_redis_ready, port), proc):
        return proc
    _terminate(proc, signal.SIGKILL)
    text = log.read_text(errors="replace")
    if "already in use" in text[offset:]:
        return None
    raise RuntimeError(f"redis-server did not start; its log:\n{text}")


def _redis_ready(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


# --------------------------------------------------------------------------- restarts


class RestartableServer:
    """A started server that fault-injection tests can take down and start again.

    The server keeps its URL, port and directory across restarts. ``stop()`` (idempotent)
    stops it for good and removes its directory; it also runs at interpreter exit.
    """

    _name = "server"
    _stop_signal: int = signal.SIGTERM
    _crash_signal: int = signal.SIGKILL

    def __init__(
        self,
        url: str,
        port: int,
        root: Path,
        proc: subprocess.Popen[bytes],
        start_on: Callable[[int], subprocess.Popen[bytes] | None],
    ) -> None:
        self.url = url
        self.port = port
        self._root = root
        self._proc = proc
        self._start_on = start_on
        self._stopped = False
        atexit.register(self.stop)

    @property
    def running(self) -> bool:
        """Whether the server process is alive (it may still be starting or recovering)."""
        return not self._stopped and self._proc.poll() is None

    def start(self) -> None:
        """Start the server again on the same port and directory; wait until it is ready.

        Call it from a thread that outlives the server (the main thread): the kernel sends
        the server its parent-death signal when the *thread* that started it exits.

        Raises:
            RuntimeError: it is running, was stopped for good, or did not start.
        """
        if self._stopped:
            raise RuntimeError(f"{self._name} was stopped; it cannot be started again")
        if self.running:
            raise RuntimeError(f"{self._name} is already running")
        self._proc = _restart_on_port(self._start_on, self.port, self._name)

    def stop(self) -> None:
        """Stop the server for good and remove its directory (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        atexit.unregister(self.stop)
        try:
            _terminate(self._proc, self._stop_signal)
        finally:
            shutil.rmtree(self._root, ignore_errors=True)

    def _crash(self) -> None:
        _terminate(self._proc, self._crash_signal)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class RedisServer(RestartableServer):
    """A non-persistent ``redis-server`` that can be killed and started again."""

    _name = "redis-server"
    _stop_signal = signal.SIGTERM
    _crash_signal = signal.SIGKILL

    def kill(self) -> None:
        """SIGKILL the server and wait for it to die: every key is lost (no persistence).

        A no-op when it is not running.
        """
        self._crash()


class PostgresServer(RestartableServer):
    """A PostgreSQL server that can be crashed and started again (crash recovery runs)."""

    _name = "PostgreSQL"
    _stop_signal = signal.SIGINT  # fast shutdown
    _crash_signal = signal.SIGQUIT  # immediate shutdown

    def crash(self) -> None:
        """Shut down immediately, as ``pg_ctl stop -m immediate``, and wait for the exit.

        No checkpoint is written: the next :meth:`start` runs crash recovery from the WAL.
        A no-op when it is not running.
        """
        self._crash()


def _start_on_free_port(
    start_on: Callable[[int], subprocess.Popen[bytes] | None], name: str
) -> tuple[int, subprocess.Popen[bytes]]:
    """Start a server on a free port, retrying with another when someone takes it first."""
    for _attempt in range(5):
        port = free_port()
        proc = start_on(port)
        if proc is not None:
            return port, proc
    raise RuntimeError(f"{name}: no free port found after 5 attempts")


def _restart_on_port(
    start_on: Callable[[int], subprocess.Popen[bytes] | None], port: int, name: str
) -> subprocess.Popen[bytes]:
    """Start a server on ``port``, retrying while the port is still in use."""
    deadline = time.monotonic() + RESTART_PORT_TIMEOUT
    while True:
        proc = start_on(port)
        if proc is not None:
            return proc
        if time.monotonic() >= deadline:
            raise RuntimeError(f"{name}: port {port} still in use after {RESTART_PORT_TIMEOUT}s")
        time.sleep(0.2)


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


@contextlib.contextmanager
def servers() -> Iterator[tuple[str, str]]:
    """Both servers at once: ``with servers() as (postgres_url, redis_url): ...``."""
    with start_postgres() as pg, start_redis() as redis:
        yield pg.url, redis.url
