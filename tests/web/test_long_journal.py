"""A 5,000-event journal renders quickly and light: similar rows collapse, the
failed-only view keeps the troubled ones, the raw table is paged (no worker needed)."""

from __future__ import annotations

import re
import time
from datetime import datetime, timedelta, timezone

import httpx

from celery_durable import Durable
from celery_durable.engine.journal import Event, Failure, Instance, Kind, State, Status

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
EVENTS = 5000


def _long_instance(durable: Durable) -> None:
    events = []
    for seq in range(EVENTS):
        at = T0 + timedelta(seconds=seq)
        failed = seq % 1000 == 999  # five failed steps, each retried, caught by the workflow
        events.append(
            Event(
                seq=seq,
                kind=Kind.STEP,
                name="shop.check_item",
                input=f"[[{seq}], {{}}]",
                state=State.FAILED if failed else State.COMPLETED,
                scheduled_at=at,
                started_at=at + timedelta(milliseconds=40),
                completed_at=at + timedelta(milliseconds=300),
                output=None if failed else "true",
                failure=Failure("OutOfStock", f"item {seq}") if failed else None,
                attempts=3 if failed else 1,
            )
        )
    instance = Instance(
        id="long-1",
        workflow="shop.inventory",
        status=Status.RUNNING,
        input='[["all"], {}]',
        serializer="json",
        created_at=T0,
        updated_at=T0 + timedelta(seconds=EVENTS),
    )
    durable.store.create(instance, events)


def test_five_thousand_events(durable: Durable, http: httpx.Client) -> None:
    _long_instance(durable)
    started = time.monotonic()
    page = http.get("/workflows/long-1")
    elapsed = time.monotonic() - started
    assert page.status_code == 200
    assert elapsed < 10, f"the page took {elapsed:.1f} s"
    assert len(page.content) < 3_000_000
    timeline = page.text.split('id="timeline"')[1].split('id="journal"')[0]
    groups = re.findall("\N{MULTIPLICATION SIGN}(\\d+)", timeline)
    assert sum(int(n) for n in groups) == EVENTS - 5  # all but the failed rows collapsed
    assert len(groups) == 5  # the runs before each of the five failures
    assert "compensation of" not in timeline  # caught failures: nothing rolled back
    assert timeline.count("OutOfStock") == 5
    journal = page.text.split('id="journal"')[1]
    assert journal.count("<tr class=") == 500  # the raw table is paged
    assert "later »" in journal

    failed = http.get("/workflows/long-1", params={"failed": "1"}).text
    rows = failed.split('id="timeline"')[1].split('id="journal"')[0]
    assert re.findall(r'data-seq="(\d+)"', rows) == ["999", "1999", "2999", "3999", "4999"]
    assert "3 attempts" in rows

    second = http.get("/workflows/long-1", params={"journal_from": "4500"}).text
    assert ">4999<" in second.split('id="journal"')[1]
    assert http.get("/workflows/long-1", params={"journal_from": "x"}).status_code == 400
    assert len(http.get("/api/workflows/long-1").json()["events"]) == EVENTS
