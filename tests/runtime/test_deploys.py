"""Deploying new workflow code under running instances, with real workers and Redis.

An order workflow runs on v1 in a subprocess worker until it waits for a signal. Before
v2 goes out, ``durable replay-check`` runs against v2 (compatible: a ``ctx.patched``
branch) and against v3 (incompatible): exit 0 and 1, naming the seq and the steps, and
nothing is written to the store or sent to the broker. Then the worker restarts on v2; an
order started on v2 takes the new branch, the v1 order replays the old one; both
complete, each stamped with the code version it started on. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from celery_durable import Durable, Status
from celery_durable.client import start
from celery_durable.runtime.deploys import source_version  # noqa: F401  (documents the hash)
from tests.runtime.waiting import wait_for, waiting_on

HEAD = """
import os
from celery import Celery
from celery_durable import Durable

app = Celery("shopapp", broker=os.environ["BROKER"], set_as_current=False)
app.conf.update(
    durable_store=os.environ["STORE"],
    task_default_queue=os.environ["QUEUE"],
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
)
durable = Durable(app)

@durable.step
def reserve(order):
    return f"reserved {order}"

@durable.step
def check_fraud(order):
    return f"checked {order}"

@durable.step
def charge(order):
    return f"charged {order}"

@durable.step
def refund(order):
    return f"refunded {order}"

@durable.step
def ship(order):
    return f"shipped {order}"
"""

V1 = """
@durable.workflow(name="shop.fulfil")
async def fulfil(ctx, order):
    await ctx.step(reserve, order)
    await ctx.step(charge, order)
    await ctx.wait_signal("go")
    await ctx.step(ship, order)
    return "v1 path"
"""

V2 = """
@durable.workflow(name="shop.fulfil")
async def fulfil(ctx, order):
    await ctx.step(reserve, order)
    branch = "old branch"
    if ctx.patched("fraud-check"):
        await ctx.step(check_fraud, order)
        branch = "new branch"
    await ctx.step(charge, order)
    await ctx.wait_signal("go")
    await ctx.step(ship, order)
    return branch
"""

V3 = """
@durable.workflow(name="shop.fulfil")
async def fulfil(ctx, order):
    await ctx.step(reserve, order)
    await ctx.step(refund, order)
    await ctx.wait_signal("go")
    return "incompatible"
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/journal.sqlite3"
    url: str = request.getfixturevalue("postgres_db_url")
    return url


class Shop:
    """The shop's code in a folder, its workers as subprocesses, and its CLI."""

    def __init__(self, folder: Path, redis_url: str, store_url: str) -> None:
        self.folder = folder
        self.queue = f"shop-{uuid.uuid4().hex[:8]}"
        self.redis_url = redis_url
        self.env = dict(
            os.environ,
            PYTHONPATH=str(folder),
            PYTHONWARNINGS="",
            BROKER=redis_url,
            STORE=store_url,
            QUEUE=self.queue,
        )

    def deploy(self, version: str) -> None:
        (self.folder / "shopapp.py").write_text(HEAD + version)

    @contextmanager
    def worker(self) -> Iterator[subprocess.Popen[str]]:
        args = ["-A", "shopapp", "worker", "-P", "solo", "-Q", self.queue]
        args += ["--without-gossip", "--without-mingle", "-l", "WARNING"]
        with (self.folder / "worker.log").open("a") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "celery", *args],
                cwd=self.folder,
                env=self.env,
                stdout=log,
                stderr=log,
                text=True,
            )
            try:
                yield proc
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "celery", "-A", "shopapp", "durable", *args],
            cwd=self.folder,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def broker_state(self) -> dict[str, Any]:
        """Every key of the broker's database with its length (lists) or type."""
        client = redis.Redis.from_url(self.redis_url)
        try:
            state: dict[str, Any] = {}
            for key in client.scan_iter():
                kind = client.type(key).decode()
                state[key.decode()] = client.llen(key) if kind == "list" else kind
            return state
        finally:
            client.close()


def _store_state(durable: Durable) -> list[Any]:
    rows = []
    for instance in durable.store.list(limit=100):
        loaded = durable.store.load(instance.id)
        assert loaded is not None
        rows.append((loaded[0], loaded[1], durable.store.signals(instance.id)))
    return rows


def test_a_patched_deploy_under_running_instances(
    tmp_path: Path, redis_url: str, store_url: str
) -> None:
    shop = Shop(tmp_path, redis_url, store_url)
    app = Celery("shop-client", broker=redis_url, set_as_current=False)
    app.conf.update(durable_store=store_url, task_default_queue=shop.queue)
    durable = Durable(app)
    try:
        shop.deploy(V1)
        with shop.worker():
            old = start(durable, "shop.fulfil", ["A-1"], {}, workflow_id="A-1")
            wait_for(lambda: waiting_on(old, "signal"), timeout=60)
        v1 = durable.store.get("A-1")
        assert v1 is not None
        assert v1.code_version is not None
        assert v1.waiting_at is not None
        assert v1.waiting_at.endswith("in fulfil")

        # Before the rollout: v2 replays the v1 instance, v3 does not. Nothing moves.
        before_store, before_broker = _store_state(durable), shop.broker_state()
        shop.deploy(V2)
        ok = shop.cli("replay-check")
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert "OK        A-1 (shop.fulfil): replays 3 event(s)" in ok.stdout
        shop.deploy(V3)
        bad = shop.cli("replay-check", "--status", "running,stuck")
        assert bad.returncode == 1, bad.stdout + bad.stderr
        assert (
            "MISMATCH  A-1 (shop.fulfil): at seq 1 the journal holds step 'shopapp.charge', "
            "the code asks for step 'shopapp.refund'"
        ) in bad.stdout
        as_json = json.loads(shop.cli("replay-check", "--json").stdout)
        assert as_json[0]["seq"] == 1
        assert as_json[0]["verdict"] == "MISMATCH"
        exported = shop.cli("export", "A-1", "--to", str(tmp_path / "journals"))
        assert exported.returncode == 0, exported.stderr
        from_dir = shop.cli("replay-check", "--from-dir", str(tmp_path / "journals"))
        assert from_dir.returncode == 1
        assert "at seq 1 the journal holds step 'shopapp.charge'" in from_dir.stdout
        assert _store_state(durable) == before_store
        assert shop.broker_state() == before_broker

        # The rollout: the worker restarts on v2; a new order takes the new branch.
        shop.deploy(V2)
        with shop.worker():
            new = start(durable, "shop.fulfil", ["B-2"], {}, workflow_id="B-2")
            wait_for(lambda: waiting_on(new, "signal"), timeout=60)
            patches = shop.cli("patches")
            assert patches.returncode == 0, patches.stderr
            line = next(x for x in patches.stdout.splitlines() if x.startswith("fraud-check"))
            assert line.split()[1:3] == ["1", "1"]  # A-1 replays the old branch, B-2 marked
            assert "keep both branches" in line
            durable.signal("A-1", "go")
            durable.signal("B-2", "go")
            assert old.result(timeout=60) == "old branch"
            assert new.result(timeout=60) == "new branch"
        assert old.steps() == ["reserve", "charge", "ship"]
        assert new.steps() == ["reserve", "check_fraud", "charge", "ship"]
        a, b = durable.store.get("A-1"), durable.store.get("B-2")
        assert a is not None
        assert b is not None
        assert a.code_version == v1.code_version
        assert b.code_version not in (None, v1.code_version)
        assert (a.patches, b.patches) == ((), ("fraud-check",))
        assert (a.waiting_at, b.waiting_at) == (None, None)
        assert a.status is b.status is Status.COMPLETED

        listed = shop.cli("list", "--version", str(a.code_version), "--json")
        assert [row["id"] for row in json.loads(listed.stdout)] == ["A-1"]
        shown = shop.cli("show", "B-2")
        assert "patches:       fraud-check" in shown.stdout
        assert f"code version:  {b.code_version}" in shown.stdout
    finally:
        durable.store.close()
        app.close()


def test_the_first_pass_in_the_caller_stamps_version_patches_and_waiting_at(
    app: Celery, worker: Any
) -> None:
    app.conf.durable_code_version = "release-2026.11"
    durable = Durable(app)

    @durable.step
    def pick(order: str) -> str:
        return order

    @durable.workflow(name="deploys.first")
    async def first(ctx: Any, order: str) -> str:
        if ctx.patched("pick-first"):
            await ctx.step(pick, order)
        await ctx.wait_signal("go")
        return "done"

    try:
        handle = first.delay("o-1")  # the first pass runs here: created with its events
        instance = durable.store.get(handle.id)
        assert instance is not None
        assert instance.code_version == "release-2026.11"
        assert instance.patches == ("pick-first",)
        assert instance.waiting_at is not None
        path, line = instance.waiting_at.split(" in ")[0].rsplit(":", 1)
        assert path.endswith("test_deploys.py")
        assert (
            "await ctx.step(pick, order)" in Path(__file__).read_text().splitlines()[int(line) - 1]
        )
        assert instance.waiting_at.endswith(" in first")
        with worker():
            wait_for(lambda: waiting_on(handle, "signal"))
            status = handle.status()
            assert status.code_version == "release-2026.11"
            assert status.patches == ("pick-first",)
            assert status.waiting_at is not None
            assert "in first" in status.waiting_at
            handle.signal("go")
            assert handle.result(timeout=30) == "done"
        assert handle.status().waiting_at is None
        assert [i.id for i in durable.list(version="release-2026.11")] == [handle.id]
        assert durable.list(version="other") == []
    finally:
        durable.store.close()
