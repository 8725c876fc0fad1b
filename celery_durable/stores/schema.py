"""The SQL journal's tables (SQLAlchemy Core), shared by every SQL dialect.

Enums are kept as short strings (no database enum types, nothing to migrate when a state
is added); failures as JSON text; payloads as the encoded text the instance's codec made.
Timestamps are UTC: ``TIMESTAMP WITH TIME ZONE`` where the dialect has it; on SQLite,
which has no such type, naive UTC text that :class:`UTCDateTime` makes aware again.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    false,
    text,
)

SCHEMA_VERSION = 4
"""The version of the tables below, recorded in ``durable_meta`` as ``schema_version``.

2 added ``durable_instances.run``, ``.note``, ``.parent_close`` and
``durable_events.resends``; 3 added ``durable_instances.code_version``, ``.patches`` and
``.waiting_at`` (and the index on ``code_version``); 4 added
``durable_instances.trace_context``. An older store gets them on first use
(each has a default or allows NULL).
"""

ACTIVE = "status IN ('pending', 'running')"
"""The instances recovery looks at, as SQL: the due index's predicate.

Queries that want the index repeat this text verbatim, with the values inlined (not bound):
SQLite uses a partial index only for a query whose WHERE clause contains the index's terms
as they are written, and PostgreSQL's prepared (generic) plans cannot tell that bound
values match them.
"""


_ZONED_DIALECTS = frozenset({"postgresql", "oracle", "mssql"})
"""Dialects whose ``DateTime(timezone=True)`` keeps an offset; others get naive UTC."""


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC ``datetime`` on every dialect.

    Bound values must be aware (the store checks that before binding); they are converted
    to UTC, and stripped of their zone on dialects that cannot keep one. Values read are
    always aware and in UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.astimezone(timezone.utc)
        if dialect.name not in _ZONED_DIALECTS:
            value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


metadata = MetaData()

instances = Table(
    "durable_instances",
    metadata,
    Column("id", String(255), primary_key=True),
    Column("workflow", String(255), nullable=False),
    Column("status", String(16), nullable=False),
    Column("input", Text, nullable=False),
    Column("serializer", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("output", Text, nullable=True),
    Column("failure", Text, nullable=True),
    Column("wake_at", UTCDateTime, nullable=True),
    Column("custom_status", Text, nullable=True),
    Column("parent_id", String(255), nullable=True),
    # Signals sent and not consumed yet: the orchestrator reads the inbox only when > 0.
    Column("inbox", Integer, nullable=False, default=0, server_default=text("0")),
    # ``handle.cancel()`` was called; cleared by a ``continue_as_new`` commit.
    Column("cancel_requested", Boolean, nullable=False, default=False, server_default=false()),
    # The run number: 1, then one more per ``continue_as_new``; part of every step task id.
    Column("run", Integer, nullable=False, default=1, server_default=text("1")),
    # Why a live instance is not moving (e.g. no worker knows its workflow), for people.
    Column("note", Text, nullable=True),
    # A child's parent-close policy: terminate, cancel or abandon; NULL at top level.
    Column("parent_close", String(16), nullable=True),
    # The code version the current run started on (``durable_code_version`` or a hash of
    # the workflow's source): ``durable list --version``.
    Column("code_version", String(64), nullable=True),
    # The patch ids whose markers the journal holds, as a JSON list (NULL: none).
    Column("patches", Text, nullable=True),
    # Where the workflow's code waits ("file:line in function"), set by every pass.
    Column("waiting_at", Text, nullable=True),
    # The instance's OpenTelemetry trace (run span ids, the caller's span), set at creation.
    Column("trace_context", Text, nullable=True),
    # A status's or a workflow's instances, newest first (the console's list), in index
    # order; they serve ``WHERE status = ...`` and ``WHERE workflow = ...`` alone too.
    Index("ix_durable_instances_status_created_at", "status", "created_at"),
    Index("ix_durable_instances_workflow_created_at", "workflow", "created_at"),
    Index("ix_durable_instances_created_at", "created_at"),
    # A parent's children (``WHERE parent_id = :id``).
    Index("ix_durable_instances_parent_id", "parent_id"),
    Index("ix_durable_instances_code_version", "code_version"),
)

# The tick's index: ``WHERE status IN ('pending', 'running') AND wake_at <= :now ORDER BY
# wake_at LIMIT n`` reads the due instances in order off its front and stops after n rows.
# Partial on the dialects that have partial indexes (a plain ``wake_at`` index elsewhere):
# finished and stuck instances, which are most rows, and live ones without a wake_at get no
# entry, so the index stays as small as the set of live instances that have a wake_at.
_DUE = text(f"{ACTIVE} AND wake_at IS NOT NULL")
Index("ix_durable_instances_due", instances.c.wake_at, postgresql_where=_DUE, sqlite_where=_DUE)

events = Table(
    "durable_events",
    metadata,
    Column(
        "instance_id",
        String(255),
        ForeignKey("durable_instances.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("kind", String(16), nullable=False),
    Column("name", String(255), nullable=False),
    Column("input", Text, nullable=True),
    Column("state", String(16), nullable=False),
    Column("output", Text, nullable=True),
    Column("failure", Text, nullable=True),
    Column("scheduled_at", UTCDateTime, nullable=False),
    Column("started_at", UTCDateTime, nullable=True),
    Column("completed_at", UTCDateTime, nullable=True),
    Column("attempts", Integer, nullable=False),
    Column("heartbeat_at", UTCDateTime, nullable=True),
    # Times the step was sent again after it had started and its worker was lost.
    Column("resends", Integer, nullable=False, default=0, server_default=text("0")),
)

signals = Table(
    "durable_signals",
    metadata,
    # Arrival order. BIGSERIAL on PostgreSQL; on SQLite only an INTEGER primary key is the
    # rowid (autoincremented: one more than the largest id).
    Column(
        "id",
        BigInteger().with_variant(Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    Column(
        "instance_id",
        String(255),
        ForeignKey("durable_instances.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("name", String(255), nullable=False),
    Column("payload", Text, nullable=True),
    Column("sent_at", UTCDateTime, nullable=False),
    # The seq of the event that consumed the signal; NULL while it waits in the inbox.
    Column("consumed_seq", Integer, nullable=True),
    # The inbox (``instance_id = :id AND consumed_seq IS NULL ORDER BY id``): its entries
    # alone, in order on SQLite (PostgreSQL sorts the few rows: IS NULL is no equality to
    # its planner). Not partial: deleting an instance cascades through it too.
    Index("ix_durable_signals_inbox", "instance_id", "consumed_seq", "id"),
)
"""An instance's signals: its inbox (``consumed_seq IS NULL``) and those it consumed."""

meta = Table(
    "durable_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", String(255), nullable=False),
)

workers = Table(
    "durable_workers",
    metadata,
    # "<host>:<pid>:<random>": one row per running worker main process.
    Column("worker_id", String(255), primary_key=True),
    Column("beat_at", UTCDateTime, nullable=False),
    # JSON [[instance_id, run, seq], ...]: the durable steps whose messages it holds.
    Column("reserved", Text, nullable=False),
)
"""Live workers and the step messages they hold (prefetched or running): if a worker's
beats stop, recovery sends again those of its steps that never started."""
