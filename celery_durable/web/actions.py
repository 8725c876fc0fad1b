"""The console's actions on an instance: signal, cancel, terminate, retry.

Each one is checked before anything is written (an unknown id, a bad signal, an action a
finished workflow cannot take: a :class:`~celery_durable.web.errors.ConsoleError` and no
change) and logged on the ``celery_durable.web`` logger with when, who and from where.
The HTML forms and the JSON API both call :func:`perform`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from celery_durable.engine.journal import Status
from celery_durable.errors import DurableError, SerializationError, WorkflowNotFound
from celery_durable.runtime.durable import Durable
from celery_durable.web.errors import ConsoleError

logger = logging.getLogger("celery_durable.web")

ACTIONS = ("signal", "cancel", "terminate", "retry")
MAX_SIGNAL_NAME = 200


@dataclass(frozen=True)
class Actor:
    """Who asked for an action, for the log.

    Attributes:
        user: the authenticated user (``"token"`` for a token, ``"-"`` without auth).
        address: the client's address (``host:port``), with any ``X-Forwarded-For``.
    """

    user: str
    address: str


@dataclass(frozen=True)
class Outcome:
    """What an action did.

    Attributes:
        id: the instance.
        action: ``signal``, ``cancel``, ``terminate`` or ``retry``.
        status: the instance's status right after the action.
        message: one line for people.
    """

    id: str
    action: str
    status: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        """The JSON the API answers with."""
        return {
            "ok": True,
            "id": self.id,
            "action": self.action,
            "status": self.status,
            "message": self.message,
        }


def signal_from_text(name: str | None, payload: str | None) -> tuple[str, Any]:
    """A signal as a form gives it: a name and JSON text (empty means ``null``).

    Raises:
        ConsoleError: no name, or the payload is not valid JSON (400).
    """
    text = (payload or "").strip()
    if not text:
        return check_signal_name(name), None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ConsoleError(
            400,
            f"the payload is not valid JSON ({exc}); nothing was sent. "
            'Text is sent as a JSON string: "like this"',
        ) from None
    return check_signal_name(name), value


def check_signal_name(name: Any) -> str:
    """The signal's name, checked (a non-empty string of at most 200 characters).

    Raises:
        ConsoleError: it is missing or not such a string (400).
    """
    if not isinstance(name, str) or not name.strip():
        raise ConsoleError(400, "a signal needs a name (a non-empty string); nothing was sent")
    if len(name) > MAX_SIGNAL_NAME:
        raise ConsoleError(400, f"a signal name is at most {MAX_SIGNAL_NAME} characters")
    return name.strip()


def perform(
    durable: Durable,
    workflow_id: str,
    action: str,
    actor: Actor,
    name: str | None = None,
    payload: Any = None,
) -> Outcome:
    """Do ``action`` on the instance and log it.

    Args:
        durable: the runtime (its store and broker).
        workflow_id: the instance.
        action: one of :data:`ACTIONS`.
        actor: who asked, and from where.
        name / payload: the signal's (``signal`` only; ``name`` checked already).

    Raises:
        ConsoleError: no such instance (404), an action the instance cannot take in its
            state (409), a payload its codec cannot encode or an unknown action (400).
            Nothing was changed.
    """
    if action not in ACTIONS:
        raise ConsoleError(400, f"unknown action {action!r}; use one of: {', '.join(ACTIONS)}")
    instance = durable.store.get(workflow_id)
    if instance is None:
        raise ConsoleError(404, f"no workflow instance with id {workflow_id!r} in the store")
    try:
        message = _ACT[action](durable, workflow_id, actor, name, payload)
    except WorkflowNotFound as exc:
        raise ConsoleError(404, str(exc)) from None
    except SerializationError as exc:
        raise ConsoleError(400, str(exc)) from None
    except DurableError as exc:
        raise ConsoleError(409, str(exc)) from None
    after = durable.store.get(workflow_id)
    status = after.status.value if after is not None else instance.status.value
    what = f"signal {name!r}" if action == "signal" else action
    logger.info(
        "console: %s on workflow %s by %s from %s at %s: %s",
        what,
        workflow_id,
        actor.user,
        actor.address,
        datetime.now(timezone.utc).isoformat(timespec="seconds"),
        message,
    )
    return Outcome(workflow_id, action, status, message)


def _signal(
    durable: Durable, workflow_id: str, actor: Actor, name: str | None, payload: Any
) -> str:
    durable.signal(workflow_id, check_signal_name(name), payload)
    return f"signal {name!r} sent"


def _cancel(
    durable: Durable, workflow_id: str, actor: Actor, name: str | None, payload: Any
) -> str:
    if not durable.cancel(workflow_id):
        raise DurableError(_finished(durable, workflow_id, "cancelled"))
    instance = durable.store.get(workflow_id)
    if instance is not None and instance.status is Status.STUCK:
        return "cancellation requested; it applies when the stuck workflow is retried"
    return "cancellation requested; a worker runs its compensations"


def _terminate(
    durable: Durable, workflow_id: str, actor: Actor, name: str | None, payload: Any
) -> str:
    reason = f"terminated from the console by {actor.user} ({actor.address})"
    if not durable.terminate(workflow_id, reason):
        raise DurableError(_finished(durable, workflow_id, "terminated"))
    return "terminated"


def _retry(durable: Durable, workflow_id: str, actor: Actor, name: str | None, payload: Any) -> str:
    before = durable.store.get(workflow_id)
    durable.retry(workflow_id)
    if before is not None and before.status is Status.FAILED:
        return "rewound to its failure point; a worker sends the failed step again"
    return "resumed; a worker replays it with the code deployed now"


def _finished(durable: Durable, workflow_id: str, verb: str) -> str:
    instance = durable.store.get(workflow_id)
    status = instance.status.value if instance is not None else "gone"
    return f"workflow {workflow_id} is already {status}: it cannot be {verb}; nothing changed"


_ACT = {"signal": _signal, "cancel": _cancel, "terminate": _terminate, "retry": _retry}
