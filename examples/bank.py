"""A toy bank for the money-transfer example: accounts and pending transfers in SQLite.

It stands for the external service a real saga calls. It is shared by every worker
process through one SQLite file, and it uses the step's idempotency key so that a step
delivered twice books one transfer, not two.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from decimal import Decimal


class TransferFailed(Exception):
    """The bank refused a transfer (unknown account, insufficient funds)."""


@contextmanager
def _db() -> Iterator[sqlite3.Connection]:
    """One transaction on the bank's file (taken for writing at once), then closed."""
    path = os.environ.get("BANK_DB", "bank.sqlite3")
    with closing(sqlite3.connect(path, timeout=30, isolation_level=None)) as conn:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS accounts (name TEXT PRIMARY KEY, balance TEXT NOT NULL)"
            )
            conn.execute(
                "CREATE TABLE IF NOT EXISTS transfers (id TEXT PRIMARY KEY,"
                " account TEXT NOT NULL, amount TEXT NOT NULL, state TEXT NOT NULL)"
            )
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")


def open_account(name: str, balance: Decimal) -> None:
    """Create (or reset) an account."""
    with _db() as conn:
        conn.execute("INSERT OR REPLACE INTO accounts VALUES (?, ?)", (name, str(balance)))


def balance(name: str) -> Decimal:
    """The account's balance, pending transfers included."""
    with _db() as conn:
        row = conn.execute("SELECT balance FROM accounts WHERE name = ?", (name,)).fetchone()
    if row is None:
        raise TransferFailed(f"account {name!r} does not exist")
    return Decimal(row[0])


def transfers(name: str) -> list[tuple[str, Decimal, str]]:
    """The account's transfers: (id, amount, state)."""
    with _db() as conn:
        rows = conn.execute(
            "SELECT id, amount, state FROM transfers WHERE account = ? ORDER BY rowid", (name,)
        ).fetchall()
    return [(r[0], Decimal(r[1]), r[2]) for r in rows]


def start_transfer(key: str, name: str, amount: Decimal) -> str:
    """Book a pending transfer; idempotent on ``key``. Returns the transfer id."""
    with _db() as conn:
        if conn.execute("SELECT 1 FROM transfers WHERE id = ?", (key,)).fetchone():
            return key  # the same step delivered again: already booked
        row = conn.execute("SELECT balance FROM accounts WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise TransferFailed(f"account {name!r} does not exist")
        new_balance = Decimal(row[0]) + amount
        if new_balance < 0:
            raise TransferFailed(f"account {name!r} has insufficient funds")
        conn.execute("UPDATE accounts SET balance = ? WHERE name = ?", (str(new_balance), name))
        conn.execute("INSERT INTO transfers VALUES (?, ?, ?, 'pending')", (key, name, str(amount)))
    return key


def complete_transfer(name: str, transfer_id: str) -> None:
    """Make a pending transfer final."""
    with _db() as conn:
        conn.execute(
            "UPDATE transfers SET state = 'completed' WHERE id = ? AND account = ?",
            (transfer_id, name),
        )


def rollback_transfer(name: str, transfer_id: str) -> None:
    """Undo a pending transfer (idempotent)."""
    with _db() as conn:
        row = conn.execute(
            "SELECT amount, state FROM transfers WHERE id = ? AND account = ?",
            (transfer_id, name),
        ).fetchone()
        if row is None or row[1] == "rolled back":
            return
        current = conn.execute("SELECT balance FROM accounts WHERE name = ?", (name,)).fetchone()
        conn.execute(
            "UPDATE accounts SET balance = ? WHERE name = ?",
            (str(Decimal(current[0]) - Decimal(row[0])), name),
        )
        conn.execute("UPDATE transfers SET state = 'rolled back' WHERE id = ?", (transfer_id,))


def new_key() -> str:
    """A fresh transfer id for calls made outside a workflow."""
    return uuid.uuid4().hex
