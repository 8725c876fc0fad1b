"""What the SQL stores do for cancellation, children and ``continue_as_new`` beyond the
contract: the column's default, the children index, the instance lock a cancel request
takes, and the fast path's single statements."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import sqlalchemy as sa
from stores.statements import captured, without_control

from celery_durable.engine.journal import Instance, Kind, State, Status
from celery_durable.stores.base import Commit
from celery_durable.stores.postgres import PostgresStore
from celery_durable.stores.sqlalchemy import SQLAlchemyStore
from celery_durable.testing.contract import T0, make_event, make_instance


def test_cancel_requested_defaults_to_false_in_the_database(store: SQLAlchemyStore) -> None:
    store.list()  # the schema
    engine = store._ready_engine()
    with engine.begin() as conn:
        # A row written without the column (by SQL of its own) gets false.
        conn.exec_driver_sql(
            "INSERT INTO durable_instances (id, workflow, status, input, serializer, version,"
            " created_at, updated_at) VALUES ('wf-raw', 'w', 'running', '[]', 'json', 0,"
            " '2024-05-17 09:30:15', '2024-05-17 09:30:15')"
        )
    instance = store.get("wf-raw")
    assert instance is not None
    assert instance.cancel_requested is False


def test_children_are_found_by_the_parent_index(store: SQLAlchemyStore) -> None:
    for i in range(30):
        store.create(make_instance(f"wf-{i}", parent_id=f"wf-{i % 3}" if i >= 3 else None))
    engine = store._ready_engine()
    statement = "SELECT id FROM durable_instances WHERE parent_id = 'wf-1'"
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}").all()
            plan = "\n".join(str(row[-1]) for row in rows)
        else:
            conn.exec_driver_sql("SET enable_seqscan = off")
            rows = conn.exec_driver_sql(f"EXPLAIN {statement}").all()
            plan = "\n".join(row[0] for row in rows)
        conn.rollback()
    assert "ix_durable_instances_parent_id" in plan, plan


def test_get_many_is_one_statement_and_none_for_no_ids(store: SQLAlchemyStore) -> None:
    for i in range(5):
        store.create(make_instance(f"wf-{i}"))
    engine = store._ready_engine()

    with captured(engine) as seen:
        assert store.get_many([]) == []
    assert without_control(seen) == []

    with captured(engine) as seen:
        got = store.get_many(["wf-1", "wf-3", "nope"])
    assert sorted(i.id for i in got) == ["wf-1", "wf-3"]
    assert len(without_control(seen)) == 1, seen


def test_fast_path_cancel_and_restart_are_single_statements(postgres_db_url: str) -> None:
    store = PostgresStore(postgres_db_url)
    store.create(make_instance("wf-fast", status=Status.RUNNING))
    assert store.commit(
        Commit("wf-fast", 0, Status.RUNNING, T0, new_events=[make_event(0), make_event(1)])
    )
    store.send_signal("wf-fast", "s", None, T0, T0)
    (signal,) = store.signals("wf-fast")
    engine = store._ready_engine()
    with captured(engine) as seen:
        store.request_cancel("wf-fast", T0)
        restart = [make_event(0, kind=Kind.SIGNAL, name="s", state=State.COMPLETED)]
        restart += [make_event(1, kind=Kind.CHILD), make_event(2, kind=Kind.CANCEL)]
        assert store.commit(
            Commit(
                "wf-fast",
                3,
                Status.RUNNING,
                T0,
                restart_input="[[2], {}]",
                new_events=restart,
                consumed=[(signal.id, 0)],
            )
        )

    statements = [s for s, _ in without_control(seen)]
    assert len(statements) == 2, statements
    loaded = store.load("wf-fast")
    assert loaded is not None
    assert loaded[1] == restart
    assert loaded[0].cancel_requested is False
    assert loaded[0].inbox == 0
    with engine.connect() as conn:
        left = conn.exec_driver_sql("SELECT count(*) FROM durable_signals").scalar_one()
    assert left == 0, "the signal the ending run consumed is deleted"
    store.close()


def test_request_cancel_waits_for_a_commit_holding_the_instance(
    pg_store: SQLAlchemyStore, postgres_db_url: str
) -> None:
    """A cancel request locks the instance row: it waits for a commit in progress and then
    works from the row that commit wrote."""
    pg_store.create(make_instance("wf-held", status=Status.RUNNING, wake_at=T0))
    other = sa.create_engine(postgres_db_url)
    returned: list[Instance | None] = []
    try:
        with other.connect() as conn:
            # An orchestrator's commit, in progress: it waits on a timer a day away.
            conn.exec_driver_sql(
                "UPDATE durable_instances SET version = version + 1, wake_at = %(later)s"
                " WHERE id = 'wf-held'",
                {"later": T0 + timedelta(days=1)},
            )
            canceller = threading.Thread(
                target=lambda: returned.append(
                    pg_store.request_cancel("wf-held", T0 + timedelta(minutes=1))
                )
            )
            canceller.start()
            time.sleep(0.5)
            assert canceller.is_alive(), "the request waits for the commit"
            conn.commit()
            canceller.join(10)
    finally:
        other.dispose()

    assert returned == [
        make_instance("wf-held", status=Status.RUNNING, version=1, wake_at=T0 + timedelta(days=1))
    ], "the instance as the commit left it"
    assert pg_store.get("wf-held") == make_instance(
        "wf-held",
        status=Status.RUNNING,
        version=2,
        wake_at=T0 + timedelta(minutes=1),
        cancel_requested=True,
    )


def test_request_cancel_after_a_commit_that_finished_the_instance(
    pg_store: SQLAlchemyStore, postgres_db_url: str
) -> None:
    """A request that waited for a commit completing the instance writes nothing."""
    pg_store.create(make_instance("wf-ending", status=Status.RUNNING, wake_at=T0))
    other = sa.create_engine(postgres_db_url)
    returned: list[Instance | None] = []
    try:
        with other.connect() as conn:
            conn.exec_driver_sql(
                "UPDATE durable_instances SET version = version + 1, status = 'completed',"
                " wake_at = NULL WHERE id = 'wf-ending'"
            )
            canceller = threading.Thread(
                target=lambda: returned.append(pg_store.request_cancel("wf-ending", T0))
            )
            canceller.start()
            time.sleep(0.5)
            assert canceller.is_alive()
            conn.commit()
            canceller.join(10)
    finally:
        other.dispose()

    finished = make_instance("wf-ending", status=Status.COMPLETED, version=1)
    assert returned == [finished]
    assert pg_store.get("wf-ending") == finished
