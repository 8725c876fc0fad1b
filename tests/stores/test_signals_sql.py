"""What the SQL stores do for signals beyond the contract: the inbox index, cascading
deletes, the instance lock a send takes, and the fast path's single statements."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
import sqlalchemy as sa
from stores.statements import captured, without_control

from celery_durable.engine.journal import Instance, Kind, State, Status
from celery_durable.stores.base import Commit
from celery_durable.stores.postgres import PostgresStore
from celery_durable.stores.sqlalchemy import SQLAlchemyStore
from celery_durable.testing.contract import T0, make_event, make_instance


def test_inbox_is_read_off_its_index_in_order(store: SQLAlchemyStore) -> None:
    for i in range(20):
        instance_id = f"wf-{i}"
        store.create(make_instance(instance_id, status=Status.RUNNING))
        for n in range(3):
            store.send_signal(instance_id, f"s{n}", None, T0, T0)
    engine = store._ready_engine()
    with captured(engine) as seen:
        inbox = store.signals("wf-7")

    statements = without_control(seen)
    assert [s.name for s in inbox] == ["s0", "s1", "s2"]
    assert len(statements) == 1, statements
    statement, parameters = statements[0]
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters).all()
            plan = "\n".join(str(row[-1]) for row in rows)
        else:
            conn.exec_driver_sql("SET enable_seqscan = off")
            rows = conn.exec_driver_sql(f"EXPLAIN {statement}", parameters).all()
            plan = "\n".join(row[0] for row in rows)
        conn.rollback()
    assert "ix_durable_signals_inbox" in plan, plan
    # Only the unconsumed entries are read: both columns are in the index condition.
    if engine.dialect.name == "sqlite":
        assert "(instance_id=? AND consumed_seq=?)" in plan, plan
        assert "TEMP B-TREE" not in plan, plan
    else:
        # (PostgreSQL does not take IS NULL as an equality for ordering: it sorts the
        # inbox's few rows.)
        assert "consumed_seq IS NULL" in plan.split("Index Cond:")[1], plan


def test_deleting_an_instance_deletes_its_signals(store: SQLAlchemyStore) -> None:
    for instance_id in ("wf-gone", "wf-kept"):
        store.create(make_instance(instance_id, status=Status.RUNNING))
        store.send_signal(instance_id, "s", None, T0, T0)
        store.send_signal(instance_id, "t", None, T0, T0)
    (first, _) = store.signals("wf-gone")
    assert store.commit(Commit("wf-gone", 2, Status.RUNNING, T0, consumed=[(first.id, 0)]))
    engine = store._ready_engine()

    with engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM durable_instances WHERE id = 'wf-gone'")

    with engine.connect() as conn:
        left = conn.exec_driver_sql("SELECT DISTINCT instance_id FROM durable_signals").all()
    assert left == [("wf-kept",)]


def test_naive_datetimes_are_refused(store: SQLAlchemyStore) -> None:
    store.create(make_instance("wf-naive", status=Status.RUNNING))

    with pytest.raises(ValueError, match="at must be a timezone-aware"):
        store.send_signal("wf-naive", "s", None, T0.replace(tzinfo=None), T0)
    with pytest.raises(ValueError, match="wake_by must be a timezone-aware"):
        store.send_signal("wf-naive", "s", None, T0, T0.replace(tzinfo=None))

    assert store.signals("wf-naive") == []


def test_fast_path_signal_calls_are_single_statements(postgres_db_url: str) -> None:
    store = PostgresStore(postgres_db_url)
    store.create(make_instance("wf-fast", status=Status.RUNNING))
    engine = store._ready_engine()
    with captured(engine) as seen:
        store.send_signal("wf-fast", "s", '"p"', T0, T0)
        (signal,) = store.signals("wf-fast")
        wait = make_event(0, kind=Kind.SIGNAL, name="s", state=State.COMPLETED, output='"p"')
        assert store.commit(
            Commit("wf-fast", 1, Status.RUNNING, T0, new_events=[wait], consumed=[(signal.id, 0)])
        )

    statements = [s for s, _ in without_control(seen)]
    assert len(statements) == 3, statements
    assert store.signals("wf-fast") == []
    store.close()


def test_send_signal_waits_for_a_commit_holding_the_instance(
    pg_store: SQLAlchemyStore, postgres_db_url: str
) -> None:
    """A send locks the instance row before it numbers its signal: it waits for a commit
    in progress and then works from the row that commit wrote."""
    pg_store.create(make_instance("wf-held", status=Status.RUNNING, wake_at=T0))
    pg_store.send_signal("wf-held", "first", None, T0, T0 + timedelta(hours=1))
    other = sa.create_engine(postgres_db_url)
    returned: list[Instance | None] = []
    try:
        with other.connect() as conn:
            # An orchestrator's commit, in progress: it consumes the first signal and
            # waits on a timer a day away.
            conn.exec_driver_sql(
                "UPDATE durable_instances SET version = version + 1, inbox = inbox - 1,"
                " wake_at = %(later)s WHERE id = 'wf-held'",
                {"later": T0 + timedelta(days=1)},
            )
            conn.exec_driver_sql(
                "UPDATE durable_signals SET consumed_seq = 0 WHERE instance_id = 'wf-held'"
            )
            sender = threading.Thread(
                target=lambda: returned.append(
                    pg_store.send_signal("wf-held", "second", None, T0, T0 + timedelta(minutes=1))
                )
            )
            sender.start()
            time.sleep(0.5)
            assert sender.is_alive(), "the send waits for the commit"
            conn.commit()
            sender.join(10)
    finally:
        other.dispose()

    assert returned == [
        make_instance("wf-held", status=Status.RUNNING, version=2, wake_at=T0 + timedelta(days=1))
    ], "the instance as the commit left it (the first send and the commit bumped it)"
    assert pg_store.get("wf-held") == make_instance(
        "wf-held", status=Status.RUNNING, version=3, wake_at=T0 + timedelta(minutes=1), inbox=1
    )
    assert [s.name for s in pg_store.signals("wf-held")] == ["second"]
