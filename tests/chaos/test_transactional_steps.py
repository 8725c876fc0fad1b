"""Exactly-once database steps on real prefork workers: a pool process SIGKILLed after a
transactional step's writes and before the commit that journals them.

The writes die with the transaction: the step is sent again, runs again, and the
bookings table ends with one row, journaled once. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy
from servers import create_database

from celery_durable import Status
from celery_durable.client import start
from chaos.test_lost_steps import Trust, _databases, _trust
from chaos.trust_workflows import BOOK_SEAT


@pytest.fixture(params=["sqlite", "postgresql"])
def trust(
    request: pytest.FixtureRequest, tmp_path: Path, redis_url: str, postgres_url: str
) -> Iterator[Trust]:
    if request.param == "sqlite":
        store = f"sqlite:///{tmp_path}/journal.sqlite3"
    else:
        store = create_database(postgres_url, f"tx_{os.getpid()}_{next(_databases)}")
    yield from _trust(tmp_path / "run", redis_url, store, TRUST_CRASH_POINTS="1")


@pytest.mark.timeout(180)
def test_a_kill_between_the_writes_and_the_commit_leaves_one_effect(trust: Trust) -> None:
    token = f"t{uuid.uuid4().hex[:8]}"
    (trust.record.parent / f"{token}.crash").touch()
    worker = trust.cluster.worker("worker", concurrency=2)
    trust.cluster.wait_ready(worker)
    handle = start(trust.durable, BOOK_SEAT, (token,), {})
    assert trust.wait_done(handle.id, 120) is Status.COMPLETED

    assert (trust.record.parent / f"{token}.crashed").exists()  # it did die once
    assert len(trust.starts("book")) == 2  # ran twice...
    assert handle.result(timeout=1) == 1  # ...and the second run saw one row: its own
    engine = sqlalchemy.create_engine(str(trust.durable.settings.store))
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sqlalchemy.text("SELECT count(*) FROM bookings WHERE token = :t"), {"t": token}
            ).scalar()
    finally:
        engine.dispose()
    assert rows == 1
    step = handle.history()[0]
    assert (step.state.value, step.attempts) == ("completed", 2)
