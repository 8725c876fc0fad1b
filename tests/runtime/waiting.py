"""Bounded waits for runtime tests: real workers take real (if short) time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0) -> None:
    """Poll ``predicate`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def waiting_on(handle: Any, kind: str) -> bool:
    """The workflow's last journal record is a ``kind`` ("timer", "signal") still open."""
    history = handle.history()
    return bool(history) and history[-1].kind.value == kind and history[-1].completed_at is None
