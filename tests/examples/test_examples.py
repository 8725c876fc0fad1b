"""The examples, run the way users run them: ``make demo``'s module and a real
``celery -A examples.app worker`` subprocess on Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def run(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 120) -> str:
    proc = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def base_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONWARNINGS"] = ""
    env["BANK_DB"] = str(tmp_path / "bank.sqlite3")
    return env


def test_demo_runs_every_example_on_the_embedded_default(tmp_path: Path) -> None:
    out = run([sys.executable, "-m", "examples.demo"], base_env(tmp_path), cwd=tmp_path)
    assert "step start_transfer(alice, -100)" in out
    assert "step rollback_transfer(alice" in out
    assert "failed as expected: TransferFailed" in out
    assert "Congratulations: a year with us" in out
    assert "step ActivateUser(" in out
    assert "result: expired" in out
    assert "replay-check of v2 before the rollout: OK        order-1" in out
    assert "order-1 result: order-1 shipped, without a fraud check" in out
    assert "order-2 result: order-2 shipped, fraud-checked" in out
    assert "demo finished" in out
    assert "-m celery -A examples.app durable web" in out  # how to open the console


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/journal.sqlite3"
    url: str = request.getfixturevalue("postgres_db_url")
    return url


@pytest.fixture
def worker_env(tmp_path: Path, broker_url: str, store_url: str) -> Iterator[dict[str, str]]:
    """A real prefork worker of the examples on each broker (Redis, RabbitMQ) and store."""
    env = base_env(tmp_path)
    env["CELERY_BROKER_URL"] = broker_url
    env["DURABLE_STORE"] = store_url
    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "examples.app",
            "worker",
            "--pool=prefork",
            "--concurrency=2",
            "--loglevel=INFO",
        ],
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


CLIENT = textwrap.dedent(
    """
    from decimal import Decimal
    from celery_durable import WorkflowFailed
    from examples import bank
    from examples.money_transfer import money_transfer

    bank.open_account("alice", Decimal("500"))
    bank.open_account("bob", Decimal("0"))
    ok = money_transfer.delay("alice", "bob", Decimal("100"))
    print("ok", ok.result(timeout=60))
    try:
        money_transfer.delay("alice", "nobody", Decimal("50")).result(timeout=60)
    except WorkflowFailed as e:
        print("failed", e.type)
    print("balances", bank.balance("alice"), bank.balance("bob"))
    print("states", [s for _, _, s in bank.transfers("alice")])
    """
)


def test_money_transfer_on_a_prefork_worker(worker_env: dict[str, str], tmp_path: Path) -> None:
    out = run([sys.executable, "-c", CLIENT], worker_env, cwd=tmp_path)
    lines = dict(line.split(" ", 1) for line in out.strip().splitlines())
    assert lines["failed"] == "TransferFailed"
    assert lines["balances"] == "400 100"
    assert lines["states"] == "['completed', 'rolled back']"
    assert "'from':" in lines["ok"]


def test_docker_compose_names_real_services_and_commands() -> None:
    compose: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "postgres", "worker", "beat"} <= set(services)
    for name, sub in (("worker", "worker"), ("beat", "beat")):
        command = services[name]["command"]
        assert command[:4] == ["celery", "-A", "examples.app", sub]
        assert services[name]["environment"]["DURABLE_STORE"].startswith("postgresql+psycopg://")
    assert (ROOT / "examples" / "app.py").exists()
    assert (ROOT / services["worker"]["build"] / "Dockerfile").exists()
    from celery.bin.celery import celery as celery_cli

    assert {"worker", "beat"} <= set(celery_cli.commands)
