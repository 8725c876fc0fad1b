"""examples/django_project, run as a Django project runs: ``migrate``, a real worker on
Redis, settings from ``CELERY_DURABLE_*``, the journal in the project's own database
(SQLite file or PostgreSQL), a workflow over an existing ``@shared_task`` and an
exactly-once database step, and the console served under ``/durable/`` beside Django by
the project's ASGI application; and a prefork worker whose pool process is SIGKILLed
between the example's ORM write and the commit that journals it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from chaos.cluster import Cluster

ROOT = Path(__file__).resolve().parents[2]
PROJECT = ROOT / "examples" / "django_project"

SCRIPT = """
import asyncio, json, os
import django
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)

import httpx
from celery.contrib.testing.worker import start_worker
from celery_durable import WorkflowFailed
from orders.models import Order
from orders.workflows import place_order
from shop.celery import app, durable

from orders.models import Order as _Order


@durable.step(transactional="django")
def touch_then_fail(order_id):
    _Order.objects.filter(pk=order_id).update(item="touched")
    raise ValueError("changed my mind")


@durable.workflow
async def touch(ctx, order_id):
    return await ctx.step(touch_then_fail, order_id)


order = Order.objects.create(item="a book")
with start_worker(app, pool="threads", perform_ping_check=False, loglevel="WARNING"):
    touching = touch.delay(order.id)
    try:
        touching.result(timeout=60)
        touched = "completed"
    except WorkflowFailed as failed:
        touched = failed.type
    handle = place_order.delay(order.id)
    result = handle.result(timeout=60)
    again = place_order.delay(order.id)
    try:
        again.result(timeout=60)
        second = "completed"
    except WorkflowFailed as failed:
        second = failed.type
order.refresh_from_db()
item = order.item

from shop.asgi import application


async def get(path):
    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
        response = await client.get(path)
        return response.status_code, response.text


console = asyncio.run(get("/durable/"))
api = asyncio.run(get("/durable/api/workflows"))
page = asyncio.run(get(f"/orders/{order.id}/"))
print(json.dumps({
    "result": result,
    "second": second,
    "touched": [touched, item],
    "order": [order.status, order.confirmed],
    "store": durable.settings.store,
    "eta_max": durable.settings.eta_max,
    "steps": handle.steps(),
    "console": [console[0], 'href="/durable/workflows/' in console[1]],
    "api": [api[0], sorted(w["id"] for w in json.loads(api[1])["workflows"])],
    "ids": sorted([handle.id, again.id, touching.id]),
    "page": [page[0], json.loads(page[1])],
}))
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "shop.sqlite3")
    url: str = request.getfixturevalue("postgres_db_url")
    return url.replace("postgresql+psycopg://", "postgresql://")


def project_env(database: str, broker_url: str) -> dict[str, str]:
    """The environment the project runs in (settings module, database, broker)."""
    return {
        "PYTHONPATH": os.pathsep.join([str(PROJECT), str(ROOT), str(Path(__file__).parent)]),
        "PYTHONWARNINGS": "",
        "DJANGO_SETTINGS_MODULE": "shop.settings",
        "SHOP_DATABASE": database,
        "CELERY_BROKER_URL": broker_url,
    }


def run_script(script: str, cwd: Path, env: dict[str, str], *args: str) -> str:
    """Run ``script`` in a Python of the project's environment; its standard output."""
    proc = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_the_django_project(tmp_path: Path, redis_url: str, database: str) -> None:
    out = run_script(SCRIPT, tmp_path, project_env(database, redis_url))
    seen = json.loads(out.strip().splitlines()[-1])
    assert seen["result"] == f"confirmation sent for order {seen['page'][1]['id']}"
    assert seen["second"] == "LookupError"  # reserved once: the second placement fails
    # A transactional="django" step that fails: its ORM write rolled back, failure journaled.
    assert seen["touched"] == ["ValueError", "a book"]
    assert seen["order"] == ["reserved", True]
    assert seen["steps"] == ["reserve", "send_confirmation"]
    if database.startswith("postgresql://"):
        assert seen["store"].startswith("postgresql+psycopg://")
    else:
        assert seen["store"] == f"sqlite:///{database}"
    assert seen["eta_max"] == 60.0  # CELERY_DURABLE_ETA_MAX
    assert seen["console"] == [200, True]
    assert seen["api"] == [200, seen["ids"]]
    assert seen["page"] == [
        200,
        {"id": seen["page"][1]["id"], "status": "reserved", "confirmed": True},
    ]


CLIENT = """
import json, sys
import django
django.setup()
from django.core.management import call_command
if sys.argv[1] == "migrate":
    call_command("migrate", verbosity=0)
    raise SystemExit
from orders.models import Order
from orders.workflows import place_order
order = Order.objects.create(item="a lamp")
handle = place_order.delay(order.id)
result = handle.result(timeout=90)
order.refresh_from_db()
print(json.dumps({
    "result": result,
    "order": [order.status, order.confirmed],
    "steps": [[e.name.rsplit(".", 1)[-1], e.state.value, e.attempts] for e in handle.history()],
}))
"""


@pytest.mark.timeout(180)
def test_a_kill_between_the_orm_write_and_its_commit_reserves_once(
    tmp_path: Path, redis_url: str, database: str
) -> None:
    """``transactional="django"``: the pool process running ``reserve`` dies after its ORM
    update and before the commit that journals it. The update dies with the transaction;
    the step is sent again and reserves the order once (a leaked first write would make
    the second run find the order reserved and fail the workflow with LookupError)."""
    crash_dir = tmp_path / "crash"
    crash_dir.mkdir()
    env = {**project_env(database, redis_url), "DJANGO_CRASH_DIR": str(crash_dir)}
    run_script(CLIENT, tmp_path, env, "migrate")
    (crash_dir / "step.effect").touch()
    (tmp_path / "run").mkdir()
    cluster = Cluster(tmp_path / "run", env, app_module="shop")
    try:
        worker = cluster.worker("worker", concurrency=2, args=["--include", "django_crash"])
        cluster.wait_ready(worker)
        try:
            seen = json.loads(run_script(CLIENT, tmp_path, env, "place").strip().splitlines()[-1])
        except AssertionError:
            print(cluster.logs())
            raise
        log = worker.log_text()
    finally:
        cluster.stop_all()
    assert (crash_dir / "step.effect.fired").exists()  # the first run did die there
    assert "lost its process" in log
    assert seen["result"] == "confirmation sent for order 1"
    assert seen["order"] == ["reserved", True]
    assert seen["steps"] == [["reserve", "completed", 2], ["send_confirmation", "completed", 1]]
