"""``handle.result()`` on PostgreSQL: woken by the ending's notification, never misled
by an old one (an instance that got stuck, then was retried, then completed)."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone

import pytest

from celery_durable import Durable, WorkflowStuck
from celery_durable.engine.journal import Failure, Status
from celery_durable.stores.base import Commit
from celery_durable.testing.contract.builders import make_instance

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


@pytest.fixture
def store_url(postgres_db_url: str) -> str:
    return postgres_db_url


def _commit(durable: Durable, version: int, status: Status, **fields: object) -> None:
    assert durable.store.commit(
        Commit("wf-r", version, status, T0, **fields)  # type: ignore[arg-type]
    )


def test_result_wakes_on_the_ending(durable: Durable) -> None:
    durable.store.create(make_instance("wf-r", status=Status.RUNNING))
    threading.Timer(0.3, _commit, (durable, 0, Status.COMPLETED), {"output": '"done"'}).start()
    started = time.monotonic()
    assert durable.handle("wf-r").result(timeout=10, interval=5.0) == "done"
    assert time.monotonic() - started < 2.0  # not the 5 s pause: the notification woke it


def test_an_old_ending_does_not_answer_for_a_retried_instance(durable: Durable) -> None:
    durable.store.create(make_instance("wf-r", status=Status.RUNNING))
    durable.handle("wf-r").status()
    durable.store.wait_ended("wf-warm-up", 0.01)  # this process listens
    _commit(durable, 0, Status.STUCK, failure=Failure("KeyError", "'bug'"))
    time.sleep(0.3)  # the stuck ending is heard, and remembered: nobody waited
    _commit(durable, 1, Status.RUNNING)  # retried
    threading.Timer(0.3, _commit, (durable, 2, Status.COMPLETED), {"output": '"fixed"'}).start()
    assert durable.handle("wf-r").result(timeout=10, interval=0.05) == "fixed"


def test_a_stuck_ending_raises(durable: Durable) -> None:
    durable.store.create(make_instance("wf-r", status=Status.RUNNING))
    failure = Failure("KeyError", "'bug'")
    threading.Timer(0.3, _commit, (durable, 0, Status.STUCK), {"failure": failure}).start()
    with pytest.raises(WorkflowStuck, match="bug"):
        durable.handle("wf-r").result(timeout=10, interval=5.0)
