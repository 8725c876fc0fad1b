"""README.md, run as a new user runs it.

* The Quickstart: its file (the ```python block headed ``# bank.py``) is written to an
  empty directory, the worker command of its ```bash block is started there as a real
  ``celery`` subprocess on Redis, and every ```pycon block of the README is run in one
  interactive session (``python -m doctest``) whose printed results must be exactly the
  ones the README shows.
* "Testing your workflows": its pytest configuration (the ```toml block headed
  ``# pyproject.toml``) and its test file (headed ``# test_workflows.py``) are written to
  an empty directory and run there with the section's pytest command, as a user runs them:
  the ``durable_env`` fixture comes from the installed plugin, with no broker URL in the
  environment and no server running.

A change to the README's code, commands or shown output that no longer holds fails here.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"

_FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.DOTALL | re.MULTILINE)
_FILE_HEADER = re.compile(r"# ([\w/]+\.py)\n")


def _section(title: str) -> str:
    """The text of the README's ``## title`` section, up to the next ``## `` heading."""
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def _blocks(text: str, language: str) -> list[str]:
    return [body for lang, body in _FENCE.findall(text) if lang == language]


def _files() -> dict[str, str]:
    """Every ```python block of the README that starts with ``# <name>.py``, by name."""
    files: dict[str, str] = {}
    for body in _blocks(README.read_text(), "python"):
        header = _FILE_HEADER.match(body)
        if header:
            assert header.group(1) not in files, f"README shows {header.group(1)} twice"
            files[header.group(1)] = body
    return files


def _write(directory: Path, *names: str) -> None:
    files = _files()
    for name in names:
        assert name in files, f"README.md has no ```python block starting with '# {name}'"
        (directory / name).write_text(files[name])


def _command(section: str, prefix: str) -> list[str]:
    """The command line of ``section``'s ```bash blocks that starts with ``prefix``, as
    arguments (a trailing ``# comment`` dropped), run with this interpreter."""
    for block in _blocks(_section(section), "bash"):
        for line in block.splitlines():
            if line.startswith(prefix):
                args = shlex.split(line, comments=True)
                return [sys.executable, "-m", *args]
    raise AssertionError(f"README's {section} shows no command starting with {prefix!r}")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERY_")}
    env["PYTHONPATH"] = str(ROOT)  # celery_durable from this checkout, as `pip install -e .`
    env["PYTHONWARNINGS"] = ""
    env.update(extra)
    return env


@pytest.fixture
def quickstart_worker(tmp_path: Path, redis_url: str) -> Iterator[dict[str, str]]:
    """``bank.py`` in an empty directory and the README's worker command running there.

    The README's app names ``redis://localhost:6379/0``; Celery's ``CELERY_BROKER_URL``
    (which overrides an app's broker) points it at the test server instead, on a database
    of its own so no other test's messages meet this worker.
    """
    _write(tmp_path, "bank.py")
    command = _command("Quickstart", "celery -A bank worker")
    env = _env(CELERY_BROKER_URL=redis_url.rsplit("/", 1)[0] + "/3")
    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield env
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
        log.close()


def test_quickstart_session_prints_what_the_readme_shows(
    quickstart_worker: dict[str, str], tmp_path: Path
) -> None:
    session = "\n".join(_blocks(README.read_text(), "pycon"))
    assert session.count(">>> ") >= 8, "the README's interactive session went missing"
    (tmp_path / "session.txt").write_text(session)
    proc = subprocess.run(
        [sys.executable, "-m", "doctest", "-o", "ELLIPSIS", "session.txt"],
        cwd=tmp_path,
        env=quickstart_worker,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    worker_log = (tmp_path / "worker.log").read_text()
    assert proc.returncode == 0, (
        f"the README's session printed something else:\n{proc.stdout}\n{proc.stderr}\n"
        f"--- worker log ---\n{worker_log[-6000:]}"
    )


def test_testing_example_runs_with_no_broker(tmp_path: Path) -> None:
    section = _section("Testing your workflows")
    _write(tmp_path, "test_workflows.py")
    configs = [b for b in _blocks(section, "toml") if b.startswith("# pyproject.toml\n")]
    assert len(configs) == 1, "the section shows no ```toml block headed # pyproject.toml"
    (tmp_path / "pyproject.toml").write_text(configs[0])
    command = _command("Testing your workflows", "pytest test_workflows.py")
    proc = subprocess.run(
        [*command, "-p", "no:cacheprovider", "-W", "error", "-v"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    tests = _blocks(section, "python")[0].count("\ndef test_")
    assert tests >= 2
    assert f"{tests} passed" in proc.stdout, proc.stdout
    assert "durable_env" in (tmp_path / "test_workflows.py").read_text()


def test_the_quorum_queue_configuration_of_brokers() -> None:
    """The Brokers section's quorum-queue snippet, applied to a RabbitMQ app: a quorum
    queue on a topic exchange, so timers still go as ETA messages (RabbitMQ delays them)
    and delays go in whole seconds."""
    from celery import Celery

    from celery_durable import Durable

    (block,) = [code for lang, code in _FENCE.findall(_section("Brokers")) if lang == "python"]
    app = Celery("readme", broker="amqp://guest@localhost//", set_as_current=False)
    exec(compile(block, "README.md (Brokers)", "exec"), {"app": app})
    queue = app.amqp.queues["celery"]
    assert queue.queue_arguments == {"x-queue-type": "quorum"}
    assert queue.exchange.type == "topic"
    durable = Durable(app)
    assert durable.settings.eta_max == 300.0  # not the direct-exchange fallback
    assert durable.broker_countdown(0.4) == 1.0
