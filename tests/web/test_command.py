"""``celery -A app durable web`` run for real, as a subprocess: it serves the console on
loopback, refuses another host without --auth, and says what to install when the
``[web]`` extra is missing."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from servers import free_port

APP_MODULE = """
from celery import Celery
from celery_durable import Durable

app = Celery("webapp", broker="memory://", set_as_current=False)
app.conf.durable_store = {store!r}
durable = Durable(app)
"""


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    """A directory holding ``webapp.py``: an app on a SQLite store of its own."""
    store = f"sqlite:///{tmp_path}/journal.sqlite3"
    (tmp_path / "webapp.py").write_text(APP_MODULE.format(store=store))
    return tmp_path


def _env(app_dir: Path) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(app_dir), PYTHONWARNINGS="")


def _run(app_dir: Path, *args: str, prelude: str = "") -> subprocess.CompletedProcess[str]:
    code = f"{prelude}\nimport sys\nfrom celery.__main__ import main\nsys.exit(main())"
    return subprocess.run(
        [sys.executable, "-c", code, "-A", "webapp", "durable", "web", *args],
        cwd=app_dir,
        env=_env(app_dir),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_serves_the_console_on_loopback(app_dir: Path) -> None:
    port = free_port()
    args = ["-m", "celery", "-A", "webapp", "durable", "web", "--port", str(port)]
    proc = subprocess.Popen(
        [sys.executable, *args],
        cwd=app_dir,
        env=_env(app_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/api/workflows", timeout=5)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                assert time.monotonic() < deadline, "the console did not answer"
                time.sleep(0.1)
        assert answer.status_code == 200
        assert answer.json()["workflows"] == []
        assert httpx.get(f"http://127.0.0.1:{port}/").status_code == 200
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert f"celery_durable console on http://127.0.0.1:{port}/" in out


def test_refuses_another_host_without_auth(app_dir: Path) -> None:
    proc = _run(app_dir, "--host", "0.0.0.0", "--port", str(free_port()))
    assert proc.returncode == 2
    assert "refusing to serve the console on 0.0.0.0 without --auth" in proc.stderr
    bad = _run(app_dir, "--auth", "user:", "--port", str(free_port()))
    assert bad.returncode == 1
    assert "--auth user:password needs both a user and a password" in bad.stderr


def test_says_what_to_install_without_the_extra(app_dir: Path) -> None:
    proc = _run(
        app_dir, "--port", str(free_port()), prelude="import sys; sys.modules['starlette'] = None"
    )
    assert proc.returncode == 1
    assert "pip install 'celery-durable[web]'" in proc.stderr
    assert "Traceback" not in proc.stderr
