"""How late the tick runs: the oldest due ``wake_at`` of the live instances.

Read once per tick when metrics are on (``durable_tick_lag_seconds``), off the front of
the due index (``ORDER BY wake_at LIMIT 1``), so it costs one index probe.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, text

from celery_durable.stores.rows import aware
from celery_durable.stores.schema import ACTIVE, UTCDateTime

__all__ = ["oldest_due"]

_OLDEST_DUE = (
    f"SELECT wake_at FROM durable_instances WHERE {ACTIVE}"
    " AND wake_at IS NOT NULL AND wake_at <= :now ORDER BY wake_at LIMIT 1"
)


def oldest_due(store: Any, now: datetime) -> datetime | None:
    """The earliest ``wake_at <= now`` among pending and running instances, or ``None``
    (none is due, or ``store`` is not a SQL store)."""
    read = getattr(store, "_read", None)
    if read is None:
        return None
    query = (
        text(_OLDEST_DUE)
        .bindparams(bindparam("now", aware(now, "now"), type_=UTCDateTime))
        .columns(wake_at=UTCDateTime)
    )
    with read() as conn:
        value = conn.execute(query).scalar()
    return value if isinstance(value, datetime) else None
