"""The journal's record types: one instance row and one event per command.

Payloads (workflow input, step input, results) are kept *encoded* (a ``str`` produced by
the instance's codec) so that stores never need to understand them; failures are plain
data (:class:`Failure`) that every store keeps as JSON.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any


class Status(str, Enum):
    """Where a workflow instance is in its life."""

    PENDING = "pending"
    """Created; its first orchestrator pass has not committed yet."""
    RUNNING = "running"
    """Waiting on at least one command (a step, a timer, ...)."""
    COMPLETED = "completed"
    FAILED = "failed"
    STUCK = "stuck"
    """Parked: replay cannot go on (changed code); the journal is kept for a retry."""
    CANCELLED = "cancelled"
    """Ended by ``handle.cancel()`` (after its compensations) or ``handle.terminate()``."""

    @property
    def is_terminal(self) -> bool:
        """True for the states an instance never leaves by itself."""
        return self in (Status.COMPLETED, Status.FAILED, Status.CANCELLED)


class Kind(str, Enum):
    """What an event's command is."""

    STEP = "step"
    """A ``@durable.step`` Celery task, run remotely by a worker."""
    RUN = "run"
    """A local function run inline by the orchestrator (``ctx.run``)."""
    TIMER = "timer"
    """A durable timer (``ctx.sleep``, ``ctx.sleep_until``); its input holds the fire time."""
    CHILD = "child"
    """A child workflow (``ctx.child``): named after the child's workflow; its input holds
    ``[[child_id, *args], kwargs]`` and its outcome is the child's result or failure."""
    CANCEL = "cancel"
    """The point where a requested cancellation was thrown into the workflow."""
    SIGNAL = "signal"
    """A wait for an external signal (``ctx.wait_signal``); named after the signal, its
    input holds the deadline (or None) and its output the payload received."""
    PATCH = "patch"
    """A marker that the code which wrote this journal had the patch ``name``
    (``ctx.patched(name)`` reached on new ground); no input, completed when journaled."""


class State(str, Enum):
    """Where one command is: pending (scheduled, started) or done (completed, failed)."""

    SCHEDULED = "scheduled"
    STARTED = "started"
    COMPLETED = "completed"
    FAILED = "failed"

    @property
    def is_final(self) -> bool:
        """True once the command's outcome is journaled."""
        return self in (State.COMPLETED, State.FAILED)


@dataclass(frozen=True)
class Failure:
    """A journaled exception: its class name, message and (optionally) traceback."""

    type: str
    message: str
    details: str | None = None

    @classmethod
    def from_exception(cls, exc: BaseException, *, with_traceback: bool = True) -> Failure:
        """Describe ``exc`` as journal data."""
        details = None
        if with_traceback and exc.__traceback__ is not None:
            details = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return cls(type=type(exc).__name__, message=str(exc), details=details)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form stores keep."""
        return {"type": self.type, "message": self.message, "details": self.details}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Failure:
        """Inverse of :meth:`to_dict`."""
        return cls(type=data["type"], message=data["message"], details=data.get("details"))


@dataclass
class Event:
    """One command of a workflow instance, keyed by its position ``seq`` (0, 1, 2, ...).

    Attributes:
        seq: the command's position in the workflow's sequence of commands.
        kind: what the command is (:class:`Kind`).
        name: the step's task name or the local function's name; replay checks it.
        input: the encoded ``[args, kwargs]`` the command was given.
        state: pending or final (:class:`State`).
        output: the encoded result, once ``state`` is COMPLETED.
        failure: the failure, once ``state`` is FAILED.
        scheduled_at: when the orchestrator pass that created the command ran.
        started_at: when a worker last started the step (cleared when it is sent again).
        completed_at: when the outcome was journaled (for a timer: when it fired).
        attempts: how many runs of the step the journal saw: a run counts when it
            reports in (its first heartbeat) or journals its outcome, and Celery's retries
            count; a run killed before its first heartbeat leaves no trace.
        heartbeat_at: the step's last sign of life: when it was last sent, or when the
            worker running it last reported in. Recovery re-sends a step whose last sign
            of life is too old.
        resends: how many times the step was presumed lost after it had started (its
            worker died, or a hard time limit killed it) and was sent again; past
            ``durable_max_resends`` it fails with ``StepFailed`` of type ``"StepLost"``.
    """

    seq: int
    kind: Kind
    name: str
    input: str | None
    state: State
    scheduled_at: datetime
    output: str | None = None
    failure: Failure | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    attempts: int = 0
    heartbeat_at: datetime | None = None
    resends: int = 0


@dataclass
class Instance:
    """One run of a workflow.

    Attributes:
        id: the workflow id (given by the caller, or generated).
        workflow: the registered workflow name.
        status: see :class:`Status`.
        input: the encoded ``[args, kwargs]``.
        serializer: the name of the codec every payload of this instance is encoded with.
        version: bumped by every commit; the compare-and-set token.
        created_at / updated_at: timestamps (UTC).
        output: the encoded result once COMPLETED.
        failure: the error once FAILED or STUCK.
        wake_at: when the instance wants its orchestrator run next, if it waits on time.
        custom_status: an encoded value set by the workflow for observers.
        parent_id: the parent instance of a child workflow.
        inbox: how many signals were sent to the instance and not consumed yet.
        cancel_requested: ``handle.cancel()`` was called; the next pass throws
            :class:`~celery_durable.errors.WorkflowCancelled` into the workflow.
        run: the run number, 1 for the first run; ``ctx.continue_as_new()`` starts the
            next. Every run has its own identity (step task ids, ``ctx.uuid4()`` seeds,
            default child ids), so nothing of one run is journaled into another.
        note: why a live instance is not moving, for people (e.g. "waiting for a worker
            that knows workflow X"); ``None`` when nothing is in the way.
        parent_close: what happens to this child when its parent ends
            (``"terminate"``, ``"cancel"`` or ``"abandon"``); ``None`` for a top-level
            instance.
        code_version: the version of the code its current run started on
            (``durable_code_version``, or a hash of the workflow function's source).
        patches: the patch ids whose markers its journal holds (``ctx.patched`` reached
            on new ground), in the order they were first journaled.
        waiting_at: where the workflow's code is suspended, as ``"file:line in
            function"`` of the innermost ``await`` of workflow code, captured by the
            last pass that left it waiting; ``None`` once it ended.
        trace_context: the instance's OpenTelemetry trace (its run span's ids, its
            caller's span, its start), as :mod:`celery_durable.telemetry.tracing` stores
            it when the instance is created with tracing on; ``None`` otherwise.
    """

    id: str
    workflow: str
    status: Status
    input: str
    serializer: str
    created_at: datetime
    updated_at: datetime
    version: int = 0
    output: str | None = None
    failure: Failure | None = None
    wake_at: datetime | None = None
    custom_status: str | None = None
    parent_id: str | None = None
    inbox: int = 0
    cancel_requested: bool = False
    run: int = 1
    note: str | None = None
    parent_close: str | None = None
    code_version: str | None = None
    patches: tuple[str, ...] = ()
    waiting_at: str | None = None
    trace_context: str | None = None


@dataclass(frozen=True)
class Signal:
    """A signal sent to an instance: kept in its inbox until a ``ctx.wait_signal`` of that
    name consumes it (oldest first, each exactly once).

    Attributes:
        id: increasing with arrival: the order signals of one name are consumed in.
        name: the signal's name.
        payload: the encoded payload (the instance's codec).
        sent_at: when it arrived (UTC).
    """

    id: int
    name: str
    payload: str | None
    sent_at: datetime
