"""Fixtures of the testing kit's own tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import shop_app as shop

from celery_durable import Durable
from celery_durable.testing import DurableTestEnv


@pytest.fixture
def env() -> Iterator[DurableTestEnv]:
    """The plain API: a running environment around the shop's Durable."""
    shop.LEDGER.clear()
    with DurableTestEnv(shop.durable) as running:
        yield running


@pytest.fixture
def durable_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Durable:
    """The plugin's way, with the fixture overridden: the examples' Durable, their files
    (bank, mailbox, user directory) in the test's directory."""
    from examples.app import durable

    monkeypatch.setenv("BANK_DB", str(tmp_path / "bank.sqlite3"))
    monkeypatch.setenv("MAILBOX", str(tmp_path / "mailbox.txt"))
    monkeypatch.setenv("USERS_DB", str(tmp_path / "users.json"))
    return durable
