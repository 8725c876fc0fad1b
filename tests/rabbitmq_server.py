"""A throwaway RabbitMQ node for tests, on free loopback ports, in its own directory.

Debian's ``rabbitmq-server`` runs the node as the ``rabbitmq`` user (it drops root), so
its directory belongs to that user. Each node gets its own node name, AMQP port,
distribution port and ``epmd`` (started here, on a port of its own, so that stopping
this node never touches another's); the node's pid comes from its pid file. Stopping
kills the node and its ``epmd`` by pid and removes the directory; a node can also be
killed (SIGKILL) and started again on the same port and data, so durable queues and
persistent messages survive as they do in production::

    with start_rabbitmq() as rabbit:
        app = Celery(broker=rabbit.url)
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from servers import ServerNotAvailable, free_port

INSTALL_HINT = (
    "install RabbitMQ: `apt-get install rabbitmq-server` (Debian/Ubuntu), or run "
    "`make test`, which installs it"
)
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


def rabbitmq_binary() -> str:
    """The ``rabbitmq-server`` launcher (``/usr/sbin`` is not on every PATH)."""
    found = shutil.which("rabbitmq-server") or "/usr/sbin/rabbitmq-server"
    if not Path(found).is_file() or not shutil.which("epmd"):
        raise ServerNotAvailable(f"rabbitmq-server (and epmd) not found; {INSTALL_HINT}")
    return found


def _rabbitmq_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam("rabbitmq")
    except KeyError:
        raise ServerNotAvailable(f"no 'rabbitmq' user; {INSTALL_HINT}") from None


class RabbitMQServer:
    """A running node: ``url`` (``amqp://guest:guest@127.0.0.1:PORT//``), :meth:`stop`,
    and for fault tests :meth:`kill` and :meth:`start` (same port, same data)."""

    def __init__(self, parent: str | os.PathLike[str] | None = None) -> None:
        self._binary = rabbitmq_binary()
        user = _rabbitmq_user()
        self._root = Path(tempfile.mkdtemp(prefix="celery-durable-rabbitmq-", dir=parent))
        os.chown(self._root, user.pw_uid, user.pw_gid)
        self._user = user
        self.port = free_port()
        self._dist_port = free_port()
        self._epmd_port = free_port()
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}//"
        self._stopped = False
        self._epmd: subprocess.Popen[bytes] | None = None
        self._launcher: subprocess.Popen[bytes] | None = None
        atexit.register(self.stop)
        try:
            self._epmd = subprocess.Popen(
                ["epmd", "-port", str(self._epmd_port)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                user=user.pw_uid,
                group=user.pw_gid,
                extra_groups=[],
            )
            self.start()
        except BaseException:
            self.stop()
            raise

    @property
    def _pid_file(self) -> Path:
        return self._root / "rabbit.pid"

    def _node_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int(self._pid_file.read_text().strip())
        return None

    def start(self) -> None:
        """Start the node (again) and wait until it accepts AMQP connections.

        Raises:
            RuntimeError: it did not start within a minute (the message holds its log).
        """
        if self._stopped:
            raise RuntimeError("this RabbitMQ node was stopped for good")
        self._pid_file.unlink(missing_ok=True)
        env = {
            **os.environ,
            "RABBITMQ_NODENAME": f"rabbit-test-{self.port}@localhost",
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self._dist_port),
            "ERL_EPMD_PORT": str(self._epmd_port),
            "RABBITMQ_MNESIA_BASE": str(self._root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self._root / "log"),
            "RABBITMQ_PID_FILE": str(self._pid_file),
        }
        log = self._root / "launcher.log"
        with open(log, "ab") as out:
            self._launcher = subprocess.Popen(
                [self._binary],
                cwd=self._root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._accepts_amqp():
                return
            if self._launcher.poll() is not None and self._node_pid() is None:
                break
            time.sleep(0.2)
        text = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"RabbitMQ did not start on port {self.port}:\n{text}")

    def _accepts_amqp(self) -> bool:
        from kombu import Connection

        try:
            with Connection(self.url, connect_timeout=1) as conn:
                conn.ensure_connection(max_retries=0)
            return True
        except Exception:
            return False

    def kill(self) -> None:
        """SIGKILL the node (as a crash would); durable queues and persistent messages
        come back with :meth:`start`."""
        self._signal_node(signal.SIGKILL)

    def _signal_node(self, sig: int) -> None:
        pid = self._node_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            deadline = time.monotonic() + STOP_TIMEOUT
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.1)
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if self._launcher is not None and self._launcher.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._launcher.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._launcher.wait(5)

    def stop(self) -> None:
        """Stop the node and its epmd for good and remove the directory (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        atexit.unregister(self.stop)
        try:
            self._signal_node(signal.SIGTERM)
            if self._epmd is not None and self._epmd.poll() is None:
                self._epmd.kill()
                self._epmd.wait()
        finally:
            shutil.rmtree(self._root, ignore_errors=True)

    def __enter__(self) -> RabbitMQServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes.
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    return False


def start_rabbitmq(parent: str | os.PathLike[str] | None = None) -> RabbitMQServer:
    """Start a throwaway node; see :class:`RabbitMQServer`.

    Raises:
        ServerNotAvailable: RabbitMQ is not installed.
        RuntimeError: it did not start.
    """
    return RabbitMQServer(parent)
