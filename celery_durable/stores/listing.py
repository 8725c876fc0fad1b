"""The listing reads of the SQL stores: filtered, paged lists of instances, counts by
status, and what listed instances wait on. Shared by every SQL dialect (SQLAlchemy Core).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, func, or_, select

from celery_durable.engine.journal import Status
from celery_durable.stores.rows import aware
from celery_durable.stores.schema import events, instances

PENDING = ("scheduled", "started")


@dataclass(frozen=True)
class Filters:
    """What :meth:`Store.list` and :meth:`Store.count_by_status` filter on."""

    workflow: str | None = None
    parent_id: str | None = None
    code_version: str | None = None
    id_prefix: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def where(self) -> list[ColumnElement[bool]]:
        """The WHERE terms."""
        c = instances.c
        terms: list[ColumnElement[bool]] = []
        if self.parent_id is not None:
            terms.append(c.parent_id == self.parent_id)
        if self.workflow is not None:
            terms.append(c.workflow == self.workflow)
        if self.code_version is not None:
            terms.append(c.code_version == self.code_version)
        if self.id_prefix:
            # A range rather than LIKE: no wildcard to escape, and it uses the primary key.
            terms.append(c.id >= self.id_prefix)
            terms.append(c.id < self.id_prefix + "\U0010ffff")
        if self.since is not None:
            terms.append(c.created_at >= aware(self.since, "since"))
        if self.until is not None:
            terms.append(c.created_at < aware(self.until, "until"))
        return terms


def list_query(
    filters: Filters,
    statuses: Sequence[Status] | None,
    before: tuple[datetime, str] | None,
    limit: int,
) -> Select[Any]:
    """Instances, newest (``created_at``, then id) first, after the cursor ``before``."""
    c = instances.c
    terms = filters.where()
    if statuses is not None:
        terms.append(c.status.in_([Status(s).value for s in statuses]))
    if before is not None:
        at, last_id = aware(before[0], "before"), before[1]
        terms.append(or_(c.created_at < at, and_(c.created_at == at, c.id < last_id)))
    query = select(instances)
    if terms:
        query = query.where(*terms)
    return query.order_by(c.created_at.desc(), c.id.desc()).limit(max(limit, 0))


def count_query(filters: Filters) -> Select[Any]:
    """``(status, count)`` rows."""
    query = select(instances.c.status, func.count()).group_by(instances.c.status)
    terms = filters.where()
    return query.where(*terms) if terms else query


def pending_query(instance_ids: Sequence[str]) -> Select[Any]:
    """The pending events of these instances, by instance and seq."""
    return (
        select(*(column.label(f"e_{column.name}") for column in events.c))
        .where(events.c.instance_id.in_(list(instance_ids)), events.c.state.in_(PENDING))
        .order_by(events.c.instance_id, events.c.seq)
    )


__all__ = ["Filters", "count_query", "list_query", "pending_query"]
