"""A version 1 store opened by this version: upgraded in place on SQLite and PostgreSQL.

The version 1 tables are today's without the columns versions 2, 3 and 4 added; a few rows are
written to them as version 1 wrote them. The current store then adds the columns, reads
the old rows with the defaults (run 1, no note, no parent-close policy, no resends),
records the current version and works on them as on any other; stores upgrading one database at
once do not get in each other's way.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from celery_durable.engine.journal import Failure, Kind, State, Status
from celery_durable.stores.base import Commit
from celery_durable.stores.postgres import PostgresStore
from celery_durable.stores.schema import SCHEMA_VERSION, metadata
from celery_durable.stores.sqlalchemy import SQLAlchemyStore
from celery_durable.testing.contract import T0, make_event, make_instance, run_together

ADDED_IN_2 = {
    "durable_instances": frozenset(
        {"run", "note", "parent_close", "code_version", "patches", "waiting_at", "trace_context"}
    ),
    "durable_events": frozenset({"resends"}),
}
"""The columns schema versions 2, 3 and 4 added, by table."""


def _version_1_metadata(keep: frozenset[str] = frozenset()) -> sa.MetaData:
    """The tables of schema version 1 (plus the added columns named in ``keep``)."""
    old = sa.MetaData()
    for table in metadata.sorted_tables:
        added = ADDED_IN_2.get(table.name, frozenset()) - keep
        sa.Table(
            table.name,
            old,
            *(column._copy() for column in table.columns if column.name not in added),
            *(
                sa.Index(index.name, *(c.name for c in index.columns), **index.dialect_kwargs)
                for index in table.indexes
                if not {c.name for c in index.columns} & added
            ),
        )
    return old


def _create_version_1(url: str, keep: frozenset[str] = frozenset()) -> None:
    """A version 1 database at ``url``: its tables, its schema version, and rows as
    version 1 wrote them: a running instance (a completed step, a signal wait that
    consumed one signal, a started step; another signal in its inbox) and its failed
    child."""
    old = _version_1_metadata(keep)
    instances, events, signals, meta = (
        old.tables[name]
        for name in ("durable_instances", "durable_events", "durable_signals", "durable_meta")
    )
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            old.create_all(conn)
            conn.execute(sa.insert(meta).values(key="schema_version", value="1"))
            # One INSERT per row: the rows of a table do not all have the same columns.
            for row in (
                {
                    "id": "wf-old",
                    "workflow": "money_transfer",
                    "status": "running",
                    "input": '[["user1", "user2", "1000"], {}]',
                    "serializer": "json",
                    "version": 4,
                    "created_at": T0,
                    "updated_at": T0 + timedelta(seconds=2),
                    "wake_at": T0 + timedelta(minutes=5),
                    "custom_status": '"charging"',
                    "inbox": 1,
                    "cancel_requested": False,
                },
                {
                    "id": "wf-old-child",
                    "workflow": "refund",
                    "status": "failed",
                    "input": "[[], {}]",
                    "serializer": "json",
                    "version": 2,
                    "created_at": T0,
                    "updated_at": T0,
                    "failure": '{"type": "E", "message": "m", "details": null}',
                    "parent_id": "wf-old",
                    "inbox": 0,
                    "cancel_requested": False,
                },
            ):
                conn.execute(sa.insert(instances).values(row))
            for row in (
                {
                    "instance_id": "wf-old",
                    "seq": 0,
                    "kind": "step",
                    "name": "bank.start_transfer_0",
                    "input": '[["user0", -0], {}]',
                    "state": "completed",
                    "output": '"tran-1"',
                    "scheduled_at": T0,
                    "started_at": T0,
                    "completed_at": T0 + timedelta(seconds=1),
                    "attempts": 1,
                    "heartbeat_at": T0,
                },
                {
                    "instance_id": "wf-old",
                    "seq": 1,
                    "kind": "signal",
                    "name": "go",
                    "state": "completed",
                    "scheduled_at": T0 + timedelta(seconds=1),
                    "attempts": 0,
                },
                {
                    "instance_id": "wf-old",
                    "seq": 2,
                    "kind": "step",
                    "name": "bank.start_transfer_2",
                    "state": "started",
                    "scheduled_at": T0 + timedelta(seconds=2),
                    "started_at": T0 + timedelta(seconds=3),
                    "attempts": 1,
                    "heartbeat_at": T0 + timedelta(seconds=4),
                },
            ):
                conn.execute(sa.insert(events).values(row))
            for row in (
                {"instance_id": "wf-old", "name": "go", "sent_at": T0, "consumed_seq": 1},
                {"instance_id": "wf-old", "name": "later", "payload": '"x"', "sent_at": T0},
            ):
                conn.execute(sa.insert(signals).values(row))
    finally:
        engine.dispose()


def _columns(url: str) -> dict[str, set[str]]:
    engine = sa.create_engine(url)
    try:
        inspector = sa.inspect(engine)
        return {
            table: {column["name"] for column in inspector.get_columns(table)}
            for table in ("durable_instances", "durable_events")
        }
    finally:
        engine.dispose()


def _schema_version(url: str) -> str:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return str(
                conn.execute(
                    sa.text("SELECT value FROM durable_meta WHERE key = 'schema_version'")
                ).scalar_one()
            )
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql", "postgresql-fast"])
def old_url(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, type]:
    """A version 1 database's URL and the store class that opens it."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'journal.sqlite3'}"
    else:
        url = str(request.getfixturevalue("postgres_db_url"))
    _create_version_1(url)
    return url, PostgresStore if request.param == "postgresql-fast" else SQLAlchemyStore


def test_version_1_tables_lack_the_new_columns(old_url: tuple[str, type]) -> None:
    url, _ = old_url

    columns = _columns(url)

    assert not columns["durable_instances"] & ADDED_IN_2["durable_instances"]
    assert not columns["durable_events"] & ADDED_IN_2["durable_events"]
    assert _schema_version(url) == "1"


def test_version_1_store_is_upgraded_on_first_use(old_url: tuple[str, type]) -> None:
    url, store_class = old_url
    store: SQLAlchemyStore = store_class(url)
    try:
        loaded = store.load("wf-old")

        assert loaded is not None
        instance, events = loaded
        assert instance == make_instance(
            "wf-old",
            status=Status.RUNNING,
            version=4,
            updated_at=T0 + timedelta(seconds=2),
            wake_at=T0 + timedelta(minutes=5),
            custom_status='"charging"',
            inbox=1,
        ), "the old row, with run 1, no note and no parent-close policy"
        assert (instance.run, instance.note, instance.parent_close) == (1, None, None)
        assert [(e.seq, e.kind, e.state, e.resends) for e in events] == [
            (0, Kind.STEP, State.COMPLETED, 0),
            (1, Kind.SIGNAL, State.COMPLETED, 0),
            (2, Kind.STEP, State.STARTED, 0),
        ]
        assert events[0] == make_event(
            0,
            state=State.COMPLETED,
            output='"tran-1"',
            scheduled_at=T0,
            started_at=T0,
            completed_at=T0 + timedelta(seconds=1),
            attempts=1,
            heartbeat_at=T0,
        )
        assert [s.name for s in store.signals("wf-old")] == ["later"]
        assert store.list(parent_id="wf-old") == [
            make_instance(
                "wf-old-child",
                workflow="refund",
                status=Status.FAILED,
                input="[[], {}]",
                version=2,
                failure=Failure("E", "m"),
                parent_id="wf-old",
            )
        ]
        assert _schema_version(url) == str(SCHEMA_VERSION) == "4"
        columns = _columns(url)
        assert ADDED_IN_2["durable_instances"] <= columns["durable_instances"]
        assert ADDED_IN_2["durable_events"] <= columns["durable_events"]

        # The old rows take part in everything version 2 does.
        assert store.commit(
            Commit("wf-old", 4, Status.RUNNING, T0, resent=[2], note="waiting", wake_at=T0)
        )
        start = store.start_step("wf-old", 1, 2, "bank.start_transfer_2", T0, T0)
        assert start.marked is True
        assert start.journal is not None
        assert start.journal[1][2].resends == 1
        assert start.journal[0].note == "waiting"
        assert store.commit(
            Commit("wf-old", 6, Status.RUNNING, T0, restart_input="[[], {}]", new_events=[])
        )
        assert store.get("wf-old").run == 2  # type: ignore[union-attr]
        assert store.create(make_instance("wf-new", run=3, note="n")) == (
            make_instance("wf-new", run=3, note="n"),
            True,
        )
    finally:
        store.close()

    again: SQLAlchemyStore = store_class(url)
    try:
        assert again.get("wf-new") == make_instance("wf-new", run=3, note="n")
        assert _schema_version(url) == str(SCHEMA_VERSION)
    finally:
        again.close()


def test_stores_upgrading_at_once(old_url: tuple[str, type]) -> None:
    url, store_class = old_url
    stores: list[SQLAlchemyStore] = [store_class(url) for _ in range(4)]
    try:
        loaded = run_together(4, lambda i: stores[i].load("wf-old"))
        created = run_together(4, lambda i: stores[i].create(make_instance(f"wf-{i}")))
    finally:
        for store in stores:
            store.close()

    assert all(journal is not None and journal[0].run == 1 for journal in loaded)
    assert all(was_created for _, was_created in created)
    assert _schema_version(url) == str(SCHEMA_VERSION)
    columns = _columns(url)
    assert ADDED_IN_2["durable_instances"] <= columns["durable_instances"]


def test_upgrade_adds_only_the_missing_columns(tmp_path: Path) -> None:
    """A version 1 database that has some of the new columns (added by hand) gets the
    others."""
    url = f"sqlite:///{tmp_path / 'journal.sqlite3'}"
    _create_version_1(url, keep=frozenset({"run", "resends"}))
    store = SQLAlchemyStore(url)
    try:
        instance = store.get("wf-old")

        assert instance is not None
        assert (instance.run, instance.note, instance.parent_close) == (1, None, None)
        loaded = store.load("wf-old")
        assert loaded is not None
        assert [e.resends for e in loaded[1]] == [0, 0, 0]
    finally:
        store.close()
    assert _schema_version(url) == str(SCHEMA_VERSION)
