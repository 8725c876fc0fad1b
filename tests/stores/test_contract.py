"""The store contract on every SQL database the SQLAlchemy store is tested with."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

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


class TestPostgreSQL(StoreContract):
    @pytest.fixture
    def store(self, postgres_db_url: str) -> Iterator[SQLAlchemyStore]:
        store = SQLAlchemyStore(postgres_db_url)
        yield store
        store.close()
