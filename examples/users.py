"""A stand-in user directory for the registration example: one JSON file shared by every
worker process (``USERS_DB``, default ``users.json``)."""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def _directory() -> Iterator[dict[str, Any]]:
    path = os.environ.get("USERS_DB", "users.json")
    with open(path, "a+", encoding="utf-8") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        file.seek(0)
        users: dict[str, Any] = json.loads(file.read() or "{}")
        yield users
        file.seek(0)
        file.truncate()
        file.write(json.dumps(users))


def register(user_id: str, email: str, name: str) -> None:
    """Create an inactive user (idempotent on ``user_id``)."""
    with _directory() as users:
        users.setdefault(user_id, {"email": email, "name": name, "active": False})


def activate(user_id: str) -> None:
    """Mark the user verified."""
    with _directory() as users:
        users[user_id]["active"] = True


def delete(user_id: str) -> None:
    """Remove the user (idempotent)."""
    with _directory() as users:
        users.pop(user_id, None)


def get(user_id: str) -> dict[str, Any] | None:
    """The user's record, or None."""
    with _directory() as users:
        found: dict[str, Any] | None = users.get(user_id)
        return found
