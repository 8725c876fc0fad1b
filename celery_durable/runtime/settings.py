"""The ``durable_*`` settings read from ``app.conf``, with their defaults."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from celery_durable.stores.base import DEFAULT_URL


@dataclass(frozen=True)
class Settings:
    """celery_durable's configuration.

    Attributes:
        store: the journal's URL (``durable_store``); a SQLite file in the working
            directory by default.
        queue: the queue the orchestrator (resume) tasks are sent to (``durable_queue``);
            ``None`` means Celery's default queue.
        serializer: the kombu serializer for journal payloads (``durable_serializer``);
            defaults to the app's ``task_serializer``.
    """

    store: str
    queue: str | None
    serializer: str

    @classmethod
    def from_conf(cls, conf: Any) -> Settings:
        """Read the settings from a Celery app's ``conf``."""
        return cls(
            store=conf.get("durable_store") or DEFAULT_URL,
            queue=conf.get("durable_queue") or None,
            serializer=conf.get("durable_serializer") or conf.get("task_serializer") or "json",
        )
