"""What the SQL stores do for step starts beyond the contract: a start mark waits for a
commit holding the instance and returns the journal that commit left (the fast path's
statement reads from a snapshot older than its lock), and is one statement on the fast
path."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
import sqlalchemy as sa
from stores.statements import captured, without_control

from celery_durable.engine.journal import Status
from celery_durable.stores.base import Commit, StepStart
from celery_durable.stores.postgres import PostgresStore
from celery_durable.stores.sqlalchemy import SQLAlchemyStore
from celery_durable.testing.contract import T0, make_event, make_instance

STEP = "bank.start_transfer_0"
AT = T0 + timedelta(seconds=3)
WAKE_BY = T0 + timedelta(minutes=1)

# An orchestrator's commit in progress (row locked, not committed), of three kinds.
_COMMITS = {
    "new step": (
        "UPDATE durable_instances SET version = version + 1 WHERE id = 'wf-held'",
        "INSERT INTO durable_events (instance_id, seq, kind, name, state, scheduled_at,"
        " attempts) VALUES ('wf-held', 1, 'step', 'bank.next', 'scheduled', now(), 0)",
    ),
    "outcome": (
        "UPDATE durable_instances SET version = version + 1 WHERE id = 'wf-held'",
        "UPDATE durable_events SET state = 'completed', output = '\"done\"',"
        " completed_at = now() WHERE instance_id = 'wf-held' AND seq = 0",
    ),
    "restart": (
        "UPDATE durable_instances SET version = version + 1, run = run + 1 WHERE id = 'wf-held'",
        "UPDATE durable_events SET scheduled_at = now() WHERE instance_id = 'wf-held'",
    ),
}


@pytest.mark.parametrize("kind", list(_COMMITS))
def test_start_step_waits_for_a_commit_holding_the_instance(
    pg_store: SQLAlchemyStore, postgres_db_url: str, kind: str
) -> None:
    pg_store.create(make_instance("wf-held"))
    assert pg_store.commit(
        Commit("wf-held", 0, Status.RUNNING, T0, new_events=[make_event(0)], wake_at=T0)
    )
    other = sa.create_engine(postgres_db_url)
    started: list[StepStart] = []
    try:
        with other.connect() as conn:
            for statement in _COMMITS[kind]:
                conn.exec_driver_sql(statement)
            starter = threading.Thread(
                target=lambda: started.append(
                    pg_store.start_step("wf-held", 1, 0, STEP, AT, WAKE_BY)
                )
            )
            starter.start()
            time.sleep(0.5)
            assert starter.is_alive(), "the start waits for the commit"
            conn.commit()
            starter.join(10)
    finally:
        other.dispose()

    (start,) = started
    loaded = pg_store.load("wf-held")
    assert loaded is not None
    assert start.journal == loaded, "the journal as the commit and the mark left it"
    instance, events = loaded
    if kind == "new step":
        assert start.marked is True
        assert instance.version == 3, "the commit, then the mark"
        assert [e.seq for e in events] == [0, 1]
        assert events[0].started_at == AT
    else:
        assert start.marked is False, f"{kind}: not the pending step of run 1 any more"
        assert instance.version == 2, "nothing written by the start"
        assert events[0].started_at is None


def test_fast_path_start_step_is_one_statement(postgres_db_url: str) -> None:
    store = PostgresStore(postgres_db_url)
    try:
        store.create(make_instance("wf-one"))
        assert store.commit(Commit("wf-one", 0, Status.RUNNING, T0, new_events=[make_event(0)]))
        engine = store._ready_engine()
        with captured(engine) as seen:
            start = store.start_step("wf-one", 1, 0, STEP, AT, WAKE_BY)

        assert start.marked is True
        assert len(without_control(seen)) == 1, seen
    finally:
        store.close()
