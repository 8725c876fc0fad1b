"""Messages that could not be sent after their commit: the broker is down.

Every step and resume message follows a commit that already journaled it (a step
scheduled, an outcome, a signal). When the publish fails (Redis or RabbitMQ down or
restarting, after Celery's own publish retries), the journal is told so the message is
not waited for: the step's last sign of life is set one ``durable_step_timeout`` back
and the instance's ``wake_at`` pulled to now, so the first tick once the broker is back
sends it again, instead of one ``durable_step_timeout`` (5 minutes by default) later. If
the store cannot be written either, the publish error is raised as before and the
journal's own ``wake_at`` brings the instance back.
"""

from __future__ import annotations

import builtins
import logging
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from kombu.exceptions import OperationalError

from celery_durable.errors import StoreError

if TYPE_CHECKING:
    from celery_durable.runtime.durable import Durable

logger = logging.getLogger("celery_durable")


def broker_errors(app: Any) -> tuple[type[BaseException], ...]:
    """What a publish raises when the broker cannot be reached: kombu's
    ``OperationalError`` (Celery's publish retries gave up), socket errors, and the
    transport's own connection errors (builtin ones other than ``OSError`` left out:
    kombu's Redis transport lists ``KeyError``)."""
    with app.connection_for_write() as connection:
        declared = tuple(connection.connection_errors)
    transport = tuple(
        error
        for error in declared
        if issubclass(error, OSError) or getattr(builtins, error.__name__, None) is not error
    )
    return (OperationalError, OSError, *transport)


def step_unsent(
    durable: Durable, instance_id: str, run: int, seq: int, name: str, error: BaseException
) -> None:
    """Step ``seq`` of run ``run`` was journaled but its message not sent: make it
    overdue now (``heartbeat_at`` one step timeout back, ``wake_at`` now).

    Raises:
        the publish ``error``, if the store cannot be written either.
    """
    now = durable.now()
    try:
        durable.store.reschedule_step(instance_id, run, seq, now - durable.redrive_after, now)
    except StoreError:
        raise error from None
    logger.warning(
        "workflow %s: step %s (seq %d) is journaled but could not be sent (%s: %s); it is "
        "sent again at the first tick the broker takes",
        instance_id,
        name,
        seq,
        type(error).__name__,
        error,
    )


def resume_unsent(
    durable: Durable, instance_id: str, countdown: float | None, error: BaseException
) -> None:
    """The instance's resume message was not sent: pull its ``wake_at`` to when that
    message was due (now, or after ``countdown``) so the tick resumes it instead.

    Raises:
        the publish ``error``, if the store cannot be written either.
    """
    due = durable.now() + timedelta(seconds=max(countdown or 0.0, 0.0))
    try:
        durable.store.pull_wake_at(instance_id, due)
    except StoreError:
        raise error from None
    logger.warning(
        "workflow %s: its resume message could not be sent (%s: %s); the first tick the "
        "broker takes resumes it",
        instance_id,
        type(error).__name__,
        error,
    )
