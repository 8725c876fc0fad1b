"""The console's list with 100,000 instances in the store: how long a page takes.

Fills a fresh store (a SQLite file, and a throwaway PostgreSQL with fsync on) with
``--instances`` instances of five workflows, three journal events each, created over 30
days (SQLite without ``ANALYZE``, as a deployment leaves it; PostgreSQL vacuumed and
analyzed, as autovacuum soon does): 70% completed, 15% running (waiting on a step, a
timer or a signal: pending events), 8% failed, 5% stuck, 2% cancelled. Then serves the
console (uvicorn, in this process, on a free loopback port) and times, with an HTTP
client, ``--repeat`` requests of each page and its API twin:

* ``/`` (the newest 50, no filter), ``/?status=running``, two statuses,
  ``/?status=failed&workflow=``, ``/?workflow=``, ``/?id_prefix=`` (a prefix matching
  100), ``/?since=`` (the last day), and the 20th page of the unfiltered list (reached
  through the cursors, then timed by its cursor);
* ``/api/workflows`` with the same parameters; and one workflow's page.

Each figure is the median and the 95th percentile of the wall time of one request,
client included. No broker is needed: the list only reads the store.

    python bench/console.py [--instances 100000] [--repeat 20] [--stores sqlite,postgresql]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import httpx  # noqa: E402
import uvicorn  # noqa: E402
from celery import Celery  # noqa: E402
from servers import free_port, start_postgres  # noqa: E402
from sqlalchemy import create_engine, insert  # noqa: E402

from celery_durable import Durable  # noqa: E402
from celery_durable.engine.journal import Event, Failure, Instance, Kind, State, Status  # noqa: E402
from celery_durable.stores.rows import event_values, instance_values  # noqa: E402
from celery_durable.stores.schema import events as events_table  # noqa: E402
from celery_durable.stores.schema import instances as instances_table  # noqa: E402
from celery_durable.web import create_app  # noqa: E402

WORKFLOWS = ["shop.checkout", "shop.refund", "mail.schedule", "users.register", "bank.transfer"]
NOW = datetime.now(timezone.utc)
BATCH = 5000


def _status(r: float) -> Status:
    if r < 0.70:
        return Status.COMPLETED
    if r < 0.85:
        return Status.RUNNING
    if r < 0.93:
        return Status.FAILED
    if r < 0.98:
        return Status.STUCK
    return Status.CANCELLED


def _journal(i: int, rng: random.Random) -> tuple[Instance, list[Event]]:
    created = NOW - timedelta(days=30) + timedelta(seconds=30 * 86400 * i / COUNT[0])
    status = _status(rng.random())
    instance = Instance(
        id=f"order-{i:06d}",
        workflow=WORKFLOWS[i % len(WORKFLOWS)],
        status=status,
        input=f'[["customer-{i}", {i % 997}], {{}}]',
        serializer="json",
        created_at=created,
        updated_at=created + timedelta(seconds=5),
        version=4,
        output='"ok"' if status is Status.COMPLETED else None,
        failure=Failure("PaymentDeclined", "card refused")
        if status in (Status.FAILED, Status.STUCK, Status.CANCELLED)
        else None,
        custom_status='{"stage": "paid"}',
        code_version="c0ffee",
        waiting_at="shop/flows.py:42 in checkout" if status is Status.RUNNING else None,
    )
    events = []
    for seq, name in enumerate(("shop.reserve", "shop.charge", "shop.ship")):
        at = created + timedelta(seconds=seq)
        done = status is not Status.RUNNING or seq < 2
        kind = Kind.STEP
        event_input = f'[["item-{i}"], {{}}]'
        if not done and i % 3 == 1:
            kind, name, event_input = (
                Kind.TIMER,
                "sleep",
                f'[["{(NOW + timedelta(days=3)).isoformat()}"], {{}}]',
            )
        elif not done and i % 3 == 2:
            kind, name, event_input = Kind.SIGNAL, "shipped", "[[null], {}]"
        events.append(
            Event(
                seq=seq,
                kind=kind,
                name=name,
                input=event_input,
                state=State.COMPLETED if done else State.SCHEDULED,
                scheduled_at=at,
                started_at=at + timedelta(milliseconds=20) if kind is Kind.STEP else None,
                completed_at=at + timedelta(milliseconds=200) if done else None,
                output='"ok"' if done else None,
                attempts=1 if kind is Kind.STEP else 0,
            )
        )
    return instance, events


COUNT = [100_000]


def fill(url: str, count: int) -> float:
    """Insert ``count`` instances (and 3 events each) in batches; returns the seconds."""
    COUNT[0] = count
    app = Celery("bench_console", broker="memory://", set_as_current=False)
    app.conf.durable_store = url
    runtime = Durable(app)
    runtime.store.get("none")  # creates the schema
    runtime.store.close()
    engine = create_engine(url)
    rng = random.Random(7)
    started = time.perf_counter()
    with engine.begin() as conn:
        for first in range(0, count, BATCH):
            rows, event_rows = [], []
            for i in range(first, min(first + BATCH, count)):
                instance, events = _journal(i, rng)
                rows.append(instance_values(instance))
                event_rows += [event_values(instance.id, e) for e in events]
            conn.execute(insert(instances_table), rows)
            conn.execute(insert(events_table), event_rows)
    if engine.dialect.name == "postgresql":  # what autovacuum does soon after a bulk load
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE")
    engine.dispose()
    return time.perf_counter() - started


@contextmanager
def console(url: str) -> Iterator[str]:
    """Serve the console on the store at ``url``; yields its base URL."""
    app = Celery("bench_console", broker="memory://", set_as_current=False)
    app.conf.durable_store = url
    runtime = Durable(app)
    config = uvicorn.Config(
        create_app(runtime),
        host="127.0.0.1",
        port=free_port(),
        log_level="warning",
        lifespan="off",
        ws="none",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{config.port}"
    finally:
        server.should_exit = True
        thread.join()
        runtime.store.close()


def measure(client: httpx.Client, path: str, repeat: int) -> tuple[float, float]:
    """Median and 95th percentile (ms) of ``repeat`` requests after one warm-up."""
    assert client.get(path).status_code == 200, path
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        answer = client.get(path)
        times.append((time.perf_counter() - started) * 1000)
        assert answer.status_code == 200, (path, answer.text[:200])
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(len(times) * 0.95))]


def run(store: str, url: str, count: int, repeat: int) -> None:
    seconds = fill(url, count)
    print(f"\n{store}: {count:,} instances, {3 * count:,} events filled in {seconds:.1f} s")
    with console(url) as base, httpx.Client(base_url=base, timeout=60) as client:
        cursor = None
        for _ in range(19):
            params = {"cursor": cursor} if cursor else {}
            cursor = client.get("/api/workflows", params=params).json()["next_cursor"]
        since = (NOW - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        prefix = f"order-{count // 2:06d}"[:-2]
        cases = [
            ("newest 50", "?"),
            ("status=running", "?status=running"),
            ("status=running,stuck", "?status=running&status=stuck"),
            ("status=failed&workflow", f"?status=failed&workflow={WORKFLOWS[1]}"),
            ("workflow", f"?workflow={WORKFLOWS[2]}"),
            ("id_prefix (100 match)", f"?id_prefix={prefix}"),
            ("since: the last day", f"?since={since}"),
            ("20th page by cursor", f"?cursor={cursor}"),
        ]
        print(f"{'list':<26}{'page median':>12}{'p95':>8}{'API median':>12}{'p95':>8}  (ms)")
        for label, query in cases:
            page = measure(client, "/" + query, repeat)
            api = measure(client, "/api/workflows" + query, repeat)
            print(f"{label:<26}{page[0]:>12.1f}{page[1]:>8.1f}{api[0]:>12.1f}{api[1]:>8.1f}")
        rows = client.get("/api/workflows", params={"status": "running"}).json()["workflows"]
        detail = measure(client, f"/workflows/{rows[0]['id']}", repeat)
        print(f"{'one workflow page':<26}{detail[0]:>12.1f}{detail[1]:>8.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--stores", default="sqlite,postgresql")
    args = parser.parse_args()
    stores = args.stores.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        if "sqlite" in stores:
            run("SQLite", f"sqlite:///{tmp}/console.sqlite3", args.instances, args.repeat)
        if "postgresql" in stores:
            with start_postgres() as pg:
                run("PostgreSQL", pg.url, args.instances, args.repeat)


if __name__ == "__main__":
    main()
