"""What the SQLAlchemy store does beyond the contract: URLs, schema, processes, failures."""

from __future__ import annotations

import multiprocessing
import re
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from servers import free_port

from celery_durable.engine.journal import Event, Kind, State, Status
from celery_durable.errors import ConfigurationError, SchemaVersionError, StoreError
from celery_durable.stores import open_store
from celery_durable.stores.base import Commit
from celery_durable.stores.schema import SCHEMA_VERSION
from celery_durable.stores.sqlalchemy import SQLAlchemyStore
from celery_durable.testing.contract import T0, make_event, make_instance


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'journal.sqlite3'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def any_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'journal.sqlite3'}"
    return str(request.getfixturevalue("postgres_db_url"))


@pytest.fixture
def store(any_url: str) -> Iterator[SQLAlchemyStore]:
    store = SQLAlchemyStore(any_url)
    yield store
    store.close()


# ---------------------------------------------------------------------- URLs


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("not a url", "is not a database URL"),
        ("nosuchdb://user@host/db", "unknown database 'nosuchdb'"),
        ("postgresql+asyncpg://user@host/db", "asyncio driver"),
        ("mysql+nosuchdriver://user@host/db", "unknown database 'mysql+nosuchdriver'"),
    ],
)
def test_unusable_url_is_a_configuration_error(url: str, expected: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(expected)):
        SQLAlchemyStore(url)


def test_missing_postgres_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg -> ImportError

    with pytest.raises(ConfigurationError) as info:
        open_store("postgresql://bank:s3cret@db.example/bank")

    message = str(info.value)
    assert "pip install 'celery-durable[postgres]'" in message
    assert "db.example" in message
    assert "s3cret" not in message


def test_missing_driver_of_another_dialect(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pymysql", None)

    with pytest.raises(ConfigurationError, match="install the driver for 'mysql\\+pymysql'"):
        SQLAlchemyStore("mysql+pymysql://bank:s3cret@db.example/bank")


def test_malformed_url_message_masks_the_password() -> None:
    with pytest.raises(ConfigurationError) as info:
        SQLAlchemyStore("postgresql://bank:s3cret@db.example:notaport/bank")

    assert "s3cret" not in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://bank:s3cret@db.example/bank",
        "postgres://bank:s3cret@db.example/bank",
        "postgresql+psycopg://bank:s3cret@db.example/bank",
    ],
)
def test_postgres_urls_use_psycopg_3(url: str) -> None:
    store = SQLAlchemyStore(url)

    assert store.url == "postgresql+psycopg://bank:***@db.example/bank"
    assert "s3cret" not in repr(store)


def test_relative_sqlite_path_is_relative_to_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = SQLAlchemyStore("sqlite:///journal.sqlite3")
    monkeypatch.chdir("/")

    store.create(make_instance())
    store.close()

    assert (tmp_path / "journal.sqlite3").is_file()
    assert store.url == f"sqlite:///{tmp_path / 'journal.sqlite3'}"


def test_default_store_is_a_sqlite_file_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    store = open_store()

    assert isinstance(store, SQLAlchemyStore)
    assert store.url == f"sqlite:///{tmp_path / 'celery_durable.sqlite3'}"


# ---------------------------------------------------------------------- failures


def test_postgres_down_is_a_store_error() -> None:
    port = free_port()  # nobody listens there
    store = SQLAlchemyStore(f"postgresql+psycopg://bank:s3cret@127.0.0.1:{port}/bank")

    with pytest.raises(StoreError) as info:
        store.get("wf-1")

    message = str(info.value)
    assert f"postgresql+psycopg://bank:***@127.0.0.1:{port}/bank is unavailable" in message
    assert "Connection refused" in message or "connection failed" in message
    assert "s3cret" not in message
    assert isinstance(info.value.__cause__, sa.exc.OperationalError)
    store.close()


def test_unopenable_sqlite_file_is_a_store_error(tmp_path: Path) -> None:
    store = SQLAlchemyStore(f"sqlite:///{tmp_path / 'missing-dir' / 'journal.sqlite3'}")

    with pytest.raises(StoreError, match="unable to open database file"):
        store.load("wf-1")


def test_naive_datetimes_are_refused(store: SQLAlchemyStore) -> None:
    with pytest.raises(ValueError, match="created_at must be a timezone-aware datetime"):
        store.create(make_instance(created_at=datetime(2024, 1, 1)))
    with pytest.raises(ValueError, match="timezone-aware"):
        store.heartbeat("wf-1", 1, 0, datetime(2024, 1, 1), datetime(2024, 1, 2))


def test_outcome_must_be_final(store: SQLAlchemyStore) -> None:
    store.create(make_instance())

    with pytest.raises(ValueError, match="not a final one"):
        store.commit(Commit("wf-1", 0, Status.RUNNING, T0, outcomes=[make_event(0)]))


# ---------------------------------------------------------------------- schema


def test_schema_version_is_recorded(store: SQLAlchemyStore, any_url: str) -> None:
    store.list()

    assert _schema_version(any_url) == str(SCHEMA_VERSION)


def test_newer_schema_is_refused(store: SQLAlchemyStore, any_url: str) -> None:
    store.create(make_instance())
    engine = sa.create_engine(any_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE durable_meta SET value = '7' WHERE key = 'schema_version'"))
    engine.dispose()

    newer = SQLAlchemyStore(any_url)
    with pytest.raises(SchemaVersionError) as info:
        newer.get("wf-1")

    assert "schema version 7" in str(info.value)
    assert f"version {SCHEMA_VERSION} this celery_durable knows" in str(info.value)
    newer.close()


def test_stores_created_at_once_share_one_schema(any_url: str) -> None:
    from celery_durable.testing.contract import run_together

    stores = [SQLAlchemyStore(any_url) for _ in range(4)]
    try:
        results = run_together(4, lambda i: stores[i].create(make_instance(f"wf-{i}")))
    finally:
        for store in stores:
            store.close()

    assert [created for _, created in results] == [True] * 4
    assert _schema_version(any_url) == str(SCHEMA_VERSION)


def test_sqlite_file_is_in_wal_mode(sqlite_url: str) -> None:
    store = SQLAlchemyStore(sqlite_url)
    store.list()
    store.close()

    engine = sa.create_engine(sqlite_url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    engine.dispose()


# ---------------------------------------------------------------------- processes


def _commit_many(url: str, instance_id: str, commits: int) -> tuple[int, int]:
    """Commit ``commits`` times with compare-and-set retries; return (commits, conflicts)."""
    store = SQLAlchemyStore(url)
    done = conflicts = 0
    while done < commits:
        loaded = store.load(instance_id)
        assert loaded is not None
        instance, _ = loaded
        event = Event(
            seq=instance.version,
            kind=Kind.RUN,
            name=f"pid-{multiprocessing.current_process().pid}",
            input=None,
            state=State.COMPLETED,
            scheduled_at=datetime.now(timezone.utc),
        )
        commit = Commit(
            instance_id,
            instance.version,
            Status.RUNNING,
            datetime.now(timezone.utc),
            new_events=[event],
        )
        if store.commit(commit):
            done += 1
        else:
            conflicts += 1
    store.close()
    return done, conflicts


@pytest.mark.parametrize("fresh_file", [True, False], ids=["fresh-file", "existing-file"])
def test_processes_committing_to_one_sqlite_file(sqlite_url: str, fresh_file: bool) -> None:
    processes, commits = 4, 25
    if not fresh_file:
        _create_shared(sqlite_url)
    context = multiprocessing.get_context("spawn")
    with context.Pool(processes, initializer=_create_shared, initargs=(sqlite_url,)) as pool:
        results = pool.starmap(_commit_many, [(sqlite_url, "wf-shared", commits)] * processes)

    store = SQLAlchemyStore(sqlite_url)
    loaded = store.load("wf-shared")
    store.close()
    assert loaded is not None
    instance, events = loaded
    assert sum(done for done, _ in results) == processes * commits
    assert instance.version == processes * commits
    assert [e.seq for e in events] == list(range(processes * commits))


def _create_shared(url: str) -> None:
    """Every process races to create the schema and the instance on first use."""
    store = SQLAlchemyStore(url)
    store.create(make_instance("wf-shared"))
    store.close()


def test_store_used_across_fork(postgres_db_url: str) -> None:
    """A forked child (a prefork worker) must not talk over the parent's pooled connection."""
    store = SQLAlchemyStore(postgres_db_url)
    store.create(make_instance("wf-fork"))  # the parent's pool now holds a connection

    child = multiprocessing.get_context("fork").Process(
        target=_use_in_child, args=(store, "wf-fork")
    )
    child.start()
    for _ in range(300):  # at the same time as the child
        assert store.get("wf-fork") is not None
    child.join(60)

    assert child.exitcode == 0
    assert store.commit(Commit("wf-fork", 1, Status.COMPLETED, T0))
    instance = store.get("wf-fork")
    assert instance is not None
    assert instance.version == 2
    store.close()


def _use_in_child(store: SQLAlchemyStore, instance_id: str) -> None:
    for _ in range(300):
        if store.get(instance_id) is None:
            sys.exit(2)
    if not store.commit(Commit(instance_id, 0, Status.RUNNING, T0)):
        sys.exit(1)
    store.close()


# ---------------------------------------------------------------------- helpers


def _schema_version(url: str) -> str | None:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            value = conn.execute(
                sa.text("SELECT value FROM durable_meta WHERE key = 'schema_version'")
            ).scalar_one_or_none()
    finally:
        engine.dispose()
    return None if value is None else str(value)
