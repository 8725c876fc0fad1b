"""Store URLs naming a PostgreSQL driver that is not installed: the message names it."""

from __future__ import annotations

import sys

import pytest

from celery_durable.errors import ConfigurationError
from celery_durable.stores import open_store


def _refusal(url: str) -> str:
    with pytest.raises(ConfigurationError) as info:
        open_store(url)
    message = str(info.value)
    assert "the database driver is not installed" in message
    assert "s3cret" not in message
    return message


def test_missing_psycopg2_names_psycopg2_and_the_psycopg_3_alternative(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "psycopg2", None)  # import psycopg2 -> ImportError

    message = _refusal("postgresql+psycopg2://bank:s3cret@db.example/bank")

    assert "store URL postgresql+psycopg2://bank:***@db.example/bank" in message
    assert "install the driver (psycopg2): pip install psycopg2-binary" in message
    assert (
        "or switch to psycopg 3 with a 'postgresql+psycopg://' URL and "
        "pip install 'celery-durable[postgres]'"
    ) in message


def test_missing_psycopg_3_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)

    message = _refusal("postgresql+psycopg://bank:s3cret@db.example/bank")

    assert "install the driver (psycopg 3): pip install 'celery-durable[postgres]'" in message
    assert "psycopg2" not in message


def test_another_missing_postgres_driver_is_named_with_the_psycopg_3_alternative(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "pg8000", None)

    message = _refusal("postgresql+pg8000://bank:s3cret@db.example/bank")

    assert "install the driver for 'postgresql+pg8000'" in message
    assert "or switch to psycopg 3" in message
