"""``Store.wait_ended``: a result waiter wakes when a commit ends the instance.

On PostgreSQL the ending commit sends a NOTIFY that one listening connection per process
hears; elsewhere the call is a plain pause. Either way the waiter looks at the store
again afterwards, so a missed notification costs only the pause.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from celery_durable.engine.journal import Failure, Status
from celery_durable.stores.base import Commit, Ending
from celery_durable.stores.postgres import PostgresStore
from celery_durable.stores.sqlalchemy import SQLAlchemyStore
from celery_durable.testing.contract.builders import T0, make_instance


@pytest.fixture
def fast(postgres_db_url: str) -> Iterator[PostgresStore]:
    store = PostgresStore(postgres_db_url)
    yield store
    store.close()


def _end_later(
    store: SQLAlchemyStore,
    instance_id: str,
    status: Status,
    after: float,
    output: str = '"ok"',
    failure: Failure | None = None,
) -> None:
    def end() -> None:
        time.sleep(after)
        store.commit(
            Commit(
                instance_id,
                expected_version=0,
                status=status,
                updated_at=T0,
                output=output,
                failure=failure,
            )
        )

    threading.Thread(target=end, daemon=True).start()


@pytest.mark.parametrize("status", [Status.COMPLETED, Status.FAILED, Status.STUCK])
def test_postgres_wakes_the_waiter_when_the_instance_ends(
    fast: PostgresStore, status: Status
) -> None:
    fast.create(make_instance("wf-wait", status=Status.RUNNING))
    fast.wait_ended("wf-warm-up", 0.01)  # the listener is up before the commit
    failure = None if status is Status.COMPLETED else Failure("Declined", "no", "Traceback ...")
    output = '"ok"' if status is Status.COMPLETED else None
    _end_later(fast, "wf-wait", status, 0.3, output, failure)
    started = time.monotonic()
    ending = fast.wait_ended("wf-wait", 10.0)
    assert 0.25 < time.monotonic() - started < 3.0
    assert ending == Ending(1, status, output, failure)  # carried: no need to read it back
    stored = fast.get("wf-wait")
    assert stored is not None
    assert (stored.status, stored.output, stored.failure) == (status, output, failure)


def test_an_ending_too_large_to_carry_only_wakes(fast: PostgresStore) -> None:
    fast.create(make_instance("wf-big", status=Status.RUNNING))
    fast.wait_ended("wf-warm-up", 0.01)
    big = '"' + "x" * 20_000 + '"'
    _end_later(fast, "wf-big", Status.COMPLETED, 0.2, big)
    started = time.monotonic()
    assert fast.wait_ended("wf-big", 10.0) is None
    assert time.monotonic() - started < 3.0
    stored = fast.get("wf-big")
    assert stored is not None
    assert stored.output == big


def test_an_ending_just_before_the_wait_is_remembered(fast: PostgresStore) -> None:
    fast.create(make_instance("wf-early", status=Status.RUNNING))
    fast.wait_ended("wf-warm-up", 0.01)
    _end_later(fast, "wf-early", Status.COMPLETED, 0.0)
    time.sleep(0.3)  # ended (and notified) while nobody waited
    started = time.monotonic()
    assert fast.wait_ended("wf-early", 5.0) == Ending(1, Status.COMPLETED, '"ok"')
    assert time.monotonic() - started < 0.5
    started = time.monotonic()
    assert fast.wait_ended("wf-early", 0.3) is None  # remembered once only
    assert time.monotonic() - started >= 0.25


def test_postgres_does_not_wake_other_waiters_nor_on_a_running_commit(fast: PostgresStore) -> None:
    fast.create(make_instance("wf-a", status=Status.RUNNING))
    fast.create(make_instance("wf-b", status=Status.RUNNING))
    fast.wait_ended("wf-warm-up", 0.01)
    _end_later(fast, "wf-a", Status.COMPLETED, 0.1)
    _end_later(fast, "wf-b", Status.RUNNING, 0.1)
    started = time.monotonic()
    fast.wait_ended("wf-b", 1.0)
    assert time.monotonic() - started >= 0.95


def test_elsewhere_it_is_a_pause(tmp_path: object) -> None:
    store = SQLAlchemyStore(f"sqlite:///{tmp_path}/journal.sqlite3")
    started = time.monotonic()
    store.wait_ended("wf-any", 0.2)
    assert 0.19 < time.monotonic() - started < 1.0
    store.close()
