"""Child workflows as the parent's replay sees them: a CHILD event's outcome.

The runtime hands the replay the child instances of the journal's pending CHILD events;
:func:`foreign_owner` tells whether such an instance is really the event's child, and
:func:`child_outcome` turns an ended child into the outcome its event journals.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import datetime
from typing import Any

from celery_durable.engine.journal import Event, Failure, Instance, State, Status


def child_outcome(event: Event, child: Instance | None, now: datetime) -> Event | None:
    """The CHILD ``event`` completed or failed with ``child``'s outcome, or ``None`` while
    the child has not ended (or is unknown).

    A COMPLETED child gives its (encoded) output. A FAILED child gives its failure, type
    kept (e.g. ``"TransferFailed"``); a CANCELLED child a failure of type
    ``"WorkflowCancelled"``. A STUCK child has not ended: it may be retried.
    """
    if child is None:
        return None
    status = Status(child.status)  # a store may hand back plain strings
    if not status.is_terminal:
        return None
    if status is Status.COMPLETED:
        return dataclasses.replace(
            event, state=State.COMPLETED, output=child.output, failure=None, completed_at=now
        )
    failure = child.failure
    if status is Status.CANCELLED and (failure is None or failure.type != "WorkflowCancelled"):
        failure = Failure("WorkflowCancelled", f"child workflow {child.id!r} was cancelled")
    elif failure is None:
        failure = Failure("WorkflowFailed", f"child workflow {child.id!r} failed")
    return dataclasses.replace(
        event, state=State.FAILED, output=None, failure=failure, completed_at=now
    )


def foreign_owner(
    parent_id: str, event: Event, child: Instance, decode: Callable[[str, str], Any]
) -> str | None:
    """Who owns ``child`` if it is not the CHILD ``event``'s: another parent (or none),
    another workflow, or the same workflow started with other arguments; ``None`` if it is
    the child instance that ``parent_id`` started for ``event``.

    ``decode(data, what)`` decodes the event's and the child's encoded input.
    """
    if child.parent_id != parent_id:
        parent = "no parent" if child.parent_id is None else f"parent {child.parent_id!r}"
        return f"instance {child.id!r} of workflow {child.workflow!r} ({parent})"
    if child.workflow != event.name:
        return f"a child of workflow {child.workflow!r}, not {event.name!r}"
    if child.run == 1 and event.input is not None:  # a later run has other arguments
        [[_child_id, *args], kwargs] = decode(event.input, "the child's arguments")
        if decode(child.input, "the child instance's input") != [args, kwargs]:
            return f"a child of workflow {child.workflow!r} started with other arguments"
    return None
