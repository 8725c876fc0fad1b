"""Capture the SQL statements a store sends (to check plans and round trips)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa


@contextmanager
def captured(engine: sa.Engine) -> Iterator[list[tuple[str, Any]]]:
    """Collect ``(statement, parameters)`` for everything ``engine`` runs in the block."""
    seen: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        seen.append((statement, parameters))

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)


def without_control(statements: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """The statements that do work: BEGIN, SET and the like left out."""
    return [(s, p) for s, p in statements if s.split()[0].upper() not in ("BEGIN", "SET")]
