"""What one orchestrator pass decides: the journal changes to commit and the steps to send.

The runtime commits a :class:`Decision` (compare-and-set on the instance version) and only
then publishes its :attr:`Decision.steps`; that order is the outbox guarantee.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from celery_durable.engine.journal import Event, Failure, Status


@dataclass(frozen=True)
class ScheduleStep:
    """Send the step task ``name`` with these arguments; its journal record is ``seq``."""

    seq: int
    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


@dataclass(frozen=True)
class StartChild:
    """Create the child instance ``workflow_id`` of workflow ``workflow`` with the encoded
    ``[args, kwargs]`` ``input``, for the CHILD event ``seq`` of its parent."""

    seq: int
    workflow_id: str
    workflow: str
    input: str
    parent_close: str = "terminate"
    """What to do with the child if the parent ends first (``ctx.child(on_parent_close=)``)."""


@dataclass
class Decision:
    """The outcome of replaying a workflow over its journal.

    Attributes:
        status: the instance's status after this pass (RUNNING while it waits).
        new_events: events to insert: steps scheduled, local runs with their outcome.
        steps: the step messages to publish once ``new_events`` are committed.
        output: the encoded result when ``status`` is COMPLETED.
        failure: the error when ``status`` is FAILED or STUCK.
        fired: existing (journaled, pending) events this pass completed: timers whose
            time had come. They are journaled as outcomes in the same commit.
        wake_at: the earliest fire time among the timers the workflow now waits on, or
            ``None``; the runtime arranges for a pass at (not before) that time.
        custom_status: the encoded value of the last ``ctx.set_status()`` call the pass
            reached, to store on the instance; ``None`` when the workflow never called it
            in the pass: the runtime then keeps the stored value. (``ctx.set_status(None)``
            is encoded, e.g. ``"null"``, so it is not ``None`` here.) Never set on STUCK.
    """

    status: Status
    new_events: list[Event] = field(default_factory=list)
    steps: list[ScheduleStep] = field(default_factory=list)
    output: str | None = None
    failure: Failure | None = None
    fired: list[Event] = field(default_factory=list)
    wake_at: datetime | None = None
    children: list[StartChild] = field(default_factory=list)
    """Child instances to create (idempotently) once this pass is committed."""
    restart_input: str | None = None
    """``ctx.continue_as_new(...)``: the encoded ``[args, kwargs]`` the instance restarts
    with, under the same id, with an empty journal (status RUNNING)."""
    awaited_children: list[StartChild] = field(default_factory=list)
    """The journaled children the workflow still waits on in this pass, as the code starts
    them (its ``on_parent_close`` included): the runtime creates any whose creation a
    crash cut off."""
    consumed: list[tuple[int, int]] = field(default_factory=list)
    """Signals this pass consumed: ``(signal id, seq of the wait that took it)``; the
    commit marks them consumed (exactly once) with the wait's outcome."""
    custom_status: str | None = None
    waiting_at: str | None = None
    """Where the workflow's code is suspended (``"file:line in function"``) when it is
    left waiting; ``None`` otherwise."""

    @property
    def sets_custom_status(self) -> bool:
        """True if the pass called ``ctx.set_status()``: store :attr:`custom_status`."""
        return self.custom_status is not None
