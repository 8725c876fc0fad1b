"""The store contract on every SQL database the SQLAlchemy store is tested with."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from servers import create_database

from celery_durable.stores.postgres import PostgresStore
from celery_durable.stores.sqlalchemy import SQLAlchemyStore
from celery_durable.testing.contract import StoreContract


class TestSQLiteFile(StoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[SQLAlchemyStore]:
        store = SQLAlchemyStore(f"sqlite:///{tmp_path / 'journal.sqlite3'}")
        yield store
        store.close()


class TestSQLiteMemory(StoreContract):
    @pytest.fixture
    def store(self) -> Iterator[SQLAlchemyStore]:
        store = SQLAlchemyStore("sqlite://")
        yield store
        store.close()


@pytest.fixture(scope="module")
def contract_database(postgres_url: str) -> Iterator[sa.Engine]:
    """One database for the PostgreSQL contract tests, emptied before each test.

    (A database per test costs ~0.3 s to create; emptying the tables, milliseconds.)
    """
    url = create_database(postgres_url, "store_contract")
    engine = sa.create_engine(url)
    yield engine
    engine.dispose()


class TestPostgreSQL(StoreContract):
    """The generic SQLAlchemy path on PostgreSQL (what any other dialect runs)."""

    store_class: type[SQLAlchemyStore] = SQLAlchemyStore

    @pytest.fixture
    def store(self, contract_database: sa.Engine) -> Iterator[SQLAlchemyStore]:
        url = contract_database.url.render_as_string(hide_password=False)
        store = self.store_class(url)
        store.list()  # creates the schema on the first test
        with contract_database.begin() as conn:
            conn.execute(
                sa.text(
                    "TRUNCATE durable_signals, durable_events, durable_instances, durable_workers"
                )
            )
        yield store
        store.close()


class TestPostgresFastPath(TestPostgreSQL):
    """The PostgreSQL store ``open_store`` gives: single-statement load and commit."""

    store_class = PostgresStore
