"""The workflow id, run and seq on every log record of the library.

The runtime opens a :func:`log_context` around everything it does for one instance (an
orchestrator pass, a step, a loss the worker's main process journals); the
:class:`LogContext` filter on the ``celery_durable`` logger copies it onto each record as
attributes ``workflow_id``, ``run`` and ``seq`` (``None`` where unknown), exactly as
``logger.info(..., extra={"workflow_id": ...})`` would, so a JSON formatter (for example
``python-json-logger``) indexes them without parsing messages. A record that already
carries one of them (an explicit ``extra=``) keeps its own.

Example::

    import logging, json

    class Json(logging.Formatter):
        def format(self, record):
            return json.dumps({"msg": record.getMessage(), "workflow_id": record.workflow_id})
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["LOGGER", "LogContext", "install", "log_context", "tag"]

LOGGER = "celery_durable"
"""The library's logger; every line it writes goes through :class:`LogContext`."""


@dataclass(frozen=True)
class _Where:
    workflow_id: str
    run: int | None
    seq: int | None


_where: contextvars.ContextVar[_Where | None] = contextvars.ContextVar(
    "celery_durable_log_context", default=None
)


@contextmanager
def log_context(workflow_id: str, run: int | None = None, seq: int | None = None) -> Iterator[None]:
    """Tag the library's log records written inside the block with this instance.

    Args:
        workflow_id: the instance id.
        run: its run number, if known.
        seq: the journal position (a step's), if the block is about one record.
    """
    token = _where.set(_Where(workflow_id, run, seq))
    try:
        yield
    finally:
        _where.reset(token)


class LogContext(logging.Filter):
    """Adds ``workflow_id``, ``run`` and ``seq`` to every record (``None`` when unknown)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Fill the record's attributes from the current :func:`log_context`; keep it."""
        where = _where.get()
        for name, value in (
            ("workflow_id", where.workflow_id if where else None),
            ("run", where.run if where else None),
            ("seq", where.seq if where else None),
        ):
            if getattr(record, name, None) is None:
                setattr(record, name, value)
        return True

    # One per logger: logging.Logger.addFilter skips a filter equal to one it has.
    def __eq__(self, other: object) -> bool:
        return isinstance(other, LogContext)

    def __hash__(self) -> int:
        return hash(LogContext)


def tag(workflow_id: str | None, run: int | None = None, seq: int | None = None) -> None:
    """Tag this thread's library records from now on with this instance (``None``: stop).

    For a task's whole run, between Celery's ``task_prerun`` and ``task_postrun`` signals
    (a ``with`` block cannot span them); :func:`log_context` blocks nest inside.
    """
    _where.set(None if workflow_id is None else _Where(workflow_id, run, seq))


def install() -> None:
    """Put :class:`LogContext` on the library's loggers (idempotent)."""
    for name in (LOGGER, f"{LOGGER}.web"):
        logging.getLogger(name).addFilter(LogContext())
