"""Fixtures of the SQL-specific store tests: each SQL path on its real database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from celery_durable.stores.postgres import PostgresStore
from celery_durable.stores.sqlalchemy import SQLAlchemyStore


@pytest.fixture(params=["sqlite", "postgresql", "postgresql-fast"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SQLAlchemyStore]:
    """The generic path on SQLite and PostgreSQL, and the PostgreSQL fast path."""
    if request.param == "sqlite":
        store = SQLAlchemyStore(f"sqlite:///{tmp_path / 'journal.sqlite3'}")
    else:
        url = str(request.getfixturevalue("postgres_db_url"))
        store = PostgresStore(url) if request.param == "postgresql-fast" else SQLAlchemyStore(url)
    yield store
    store.close()


@pytest.fixture(params=["postgresql", "postgresql-fast"])
def pg_store(request: pytest.FixtureRequest, postgres_db_url: str) -> Iterator[SQLAlchemyStore]:
    """Both PostgreSQL paths, on a database of the test's own."""
    store_class = PostgresStore if request.param == "postgresql-fast" else SQLAlchemyStore
    store = store_class(postgres_db_url)
    yield store
    store.close()
