"""What the SQL stores do for recovery beyond the contract: the due index, heartbeat locking
and durability settings."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
import sqlalchemy as sa
from stores.statements import captured

from celery_durable.engine.journal import Status
from celery_durable.stores.base import Commit
from celery_durable.stores.postgres import PostgresStore
from celery_durable.stores.sqlalchemy import SQLAlchemyStore
from celery_durable.testing.contract import T0, make_event, make_instance


def test_claim_uses_the_due_index(store: SQLAlchemyStore) -> None:
    for i in range(50):
        status = Status.RUNNING if i % 5 == 0 else Status.COMPLETED
        wake_at = T0 - timedelta(seconds=i) if i % 10 else None
        store.create(make_instance(f"wf-{i}", status=status, wake_at=wake_at))
    engine = store._ready_engine()
    with captured(engine) as seen:
        claimed = store.claim_due(T0, T0 + timedelta(minutes=1), 10)

    statements = [(s, p) for s, p in seen if "wake_at <=" in s]
    assert claimed == ["wf-45", "wf-35", "wf-25", "wf-15", "wf-5"]
    assert len(statements) == 1
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
    assert "ix_durable_instances_due" in plan, plan
    sorts = [line for line in plan.splitlines() if "TEMP B-TREE" in line or "Sort Key" in line]
    # The due rows come off the index in order; only the fast path's few claimed rows are
    # sorted (its RETURNING has no order of its own).
    assert all("claimed." in line for line in sorts), plan


def test_due_index_holds_only_live_instances_with_a_wake_at(store: SQLAlchemyStore) -> None:
    engine = store._ready_engine()
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            sql = conn.exec_driver_sql(
                "SELECT sql FROM sqlite_master WHERE name = 'ix_durable_instances_due'"
            ).scalar_one()
        else:
            sql = conn.exec_driver_sql(
                "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_durable_instances_due'"
            ).scalar_one()
    assert "wake_at IS NOT NULL" in sql
    assert "pending" in sql
    assert "running" in sql


def test_heartbeat_does_not_wait_for_a_commit_holding_the_instance(
    pg_store: SQLAlchemyStore, postgres_db_url: str
) -> None:
    """A commit locks the instance row before its events; a heartbeat that waited for the
    instance while holding its event could deadlock with it. It skips the pull instead."""
    pg_store.create(make_instance("wf-locked"))
    later = T0 + timedelta(hours=1)
    assert pg_store.commit(
        Commit("wf-locked", 0, Status.RUNNING, T0, new_events=[make_event(0)], wake_at=later)
    )
    other = sa.create_engine(postgres_db_url)
    try:
        with other.connect() as conn:
            conn.exec_driver_sql(
                "SELECT 1 FROM durable_instances WHERE id = 'wf-locked' FOR UPDATE"
            )
            started = time.monotonic()

            assert pg_store.heartbeat("wf-locked", 1, 0, T0, T0 + timedelta(seconds=30))

            assert time.monotonic() - started < 2
            conn.rollback()
    finally:
        other.dispose()
    loaded = pg_store.load("wf-locked")
    assert loaded is not None
    instance, (step,) = loaded
    assert instance.wake_at == later, "the locked instance was skipped"
    assert step.heartbeat_at == T0
    assert pg_store.heartbeat("wf-locked", 1, 0, T0, T0 + timedelta(seconds=30))
    assert pg_store.get("wf-locked").wake_at == T0 + timedelta(seconds=30)  # type: ignore[union-attr]


def test_heartbeats_and_commits_of_one_step_do_not_deadlock(pg_store: SQLAlchemyStore) -> None:
    """Beats of a step racing the commits that resend it (which lock instance, then event)."""
    pg_store.create(make_instance("wf-race"))
    assert pg_store.commit(
        Commit("wf-race", 0, Status.RUNNING, T0, new_events=[make_event(0)], wake_at=T0)
    )
    stop = threading.Event()
    errors: list[BaseException] = []

    def beat() -> None:
        try:
            i = 0
            while not stop.is_set():
                i += 1
                # wake_by alternates so that the instance row is written now and then.
                wake_by = T0 - timedelta(seconds=i) if i % 2 else T0 + timedelta(hours=i)
                # Beats come after the resends (a beat never revives a step before the
                # time it was sent or rescheduled for).
                at = T0 + timedelta(days=1, seconds=i)
                assert pg_store.heartbeat("wf-race", 1, 0, at, wake_by)
        except BaseException as exc:
            errors.append(exc)

    beater = threading.Thread(target=beat)
    beater.start()
    try:
        for version in range(1, 150):
            assert pg_store.commit(
                Commit(
                    "wf-race",
                    version,
                    Status.RUNNING,
                    T0 + timedelta(minutes=version),
                    wake_at=T0 + timedelta(hours=version),
                    resent=[0],
                )
            )
    finally:
        stop.set()
        beater.join(30)
    assert errors == []


@pytest.mark.parametrize("store_class", [SQLAlchemyStore, PostgresStore])
def test_heartbeat_skips_the_flush_wait_of_its_own_transaction_only(
    store_class: type[SQLAlchemyStore], postgres_db_url: str
) -> None:
    # The test server runs with synchronous_commit=off; these sessions start with it on.
    store = store_class(f"{postgres_db_url}?options=-csynchronous_commit%3Don")
    try:
        store.create(make_instance("wf-sync"))
        assert store.commit(Commit("wf-sync", 0, Status.RUNNING, T0, new_events=[make_event(0)]))
        engine = store._ready_engine()
        with captured(engine) as seen:
            assert store.heartbeat("wf-sync", 1, 0, T0, T0 + timedelta(seconds=30))

        statements = " ".join(s for s, _ in seen)
        assert "synchronous_commit" in statements
        # Local to the heartbeat's transaction: the pooled connection (the only one) is
        # back to its setting for the commits that follow.
        assert isinstance(engine.pool, sa.QueuePool)
        assert engine.pool.checkedout() == 0
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW synchronous_commit").scalar_one() == "on"
    finally:
        # Also on failure: a pool left to the garbage collector warns in a later test.
        store.close()
