"""What handles and listings show: journal records decoded for people and tools.

:class:`WorkflowStatus` (``handle.status()``), :class:`HistoryEvent`
(``handle.history()``), :class:`WorkflowInfo` (``durable.list()``) and
:class:`PendingSignal`. Each is built from store records with the instance's codec; none
talks to the store itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from celery_durable.engine.journal import Event, Failure, Instance, Kind, State, Status
from celery_durable.engine.serialization import Codec


@dataclass(frozen=True)
class HistoryEvent:
    """One journaled command, decoded for people.

    Attributes:
        seq: position in the workflow's sequence of commands.
        kind: ``"step"`` or ``"run"``.
        name: the step's task name or the local function's name.
        args / kwargs: what the command was given.
        state: ``"scheduled"``, ``"started"``, ``"completed"`` or ``"failed"``.
        result: the decoded result once completed.
        error: the failure once failed.
        scheduled_at / started_at / completed_at: timestamps (UTC).
        attempts: how many times a worker started it.
        heartbeat_at: a step's last sign of life (sent again, or its worker reporting in).
    """

    seq: int
    kind: Kind
    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    state: State
    result: Any
    error: Failure | None
    scheduled_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    attempts: int
    heartbeat_at: datetime | None = None


@dataclass(frozen=True)
class WorkflowInfo:
    """One workflow instance, decoded for people: what ``durable.list()`` returns.

    Attributes:
        id: the workflow id.
        workflow: the registered workflow name.
        status: where the instance is in its life (:class:`Status`).
        args / kwargs: the arguments the current run was started with.
        result: the decoded result of a completed instance, else ``None``.
        error: the failure of a failed, stuck or cancelled instance.
        custom: the last value the workflow gave ``ctx.set_status`` (decoded), or None.
        created_at / updated_at: creation and last commit (UTC).
        wake_at: when the instance is due to be looked at next (a timer, a deadline).
        parent_id: the parent instance of a child workflow.
        run: the run number (``ctx.continue_as_new`` starts the next).
        note: why a live instance is not moving (e.g. "waiting for a worker that knows
            workflow X"), or ``None``.
        code_version: the code version its current run started on (``None`` if unknown).
        patches: the patch ids whose markers its journal holds.
        waiting_at: where its code waits (``"file:line in function"``), while it waits.
    """

    id: str
    workflow: str
    status: Status
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    result: Any
    error: Failure | None
    custom: Any
    created_at: datetime
    updated_at: datetime
    wake_at: datetime | None
    parent_id: str | None
    run: int
    note: str | None
    code_version: str | None = None
    patches: tuple[str, ...] = ()
    waiting_at: str | None = None

    @classmethod
    def from_instance(cls, instance: Instance, codec: Codec) -> WorkflowInfo:
        """Decode an instance record with its codec (``runtime.codec(instance.serializer)``).

        Raises:
            SerializationError: a payload cannot be decoded.
        """
        args, kwargs = codec.loads(instance.input)
        completed = instance.status is Status.COMPLETED
        return cls._of(
            instance,
            tuple(args),
            dict(kwargs),
            decode_payload(codec, instance.output) if completed else None,
            decode_payload(codec, instance.custom_status),
            instance.note,
        )

    @classmethod
    def _of(
        cls,
        instance: Instance,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        result: Any,
        custom: Any,
        note: str | None,
    ) -> WorkflowInfo:
        return cls(
            id=instance.id,
            workflow=instance.workflow,
            status=instance.status,
            args=args,
            kwargs=kwargs,
            result=result,
            error=instance.failure,
            custom=custom,
            created_at=instance.created_at,
            updated_at=instance.updated_at,
            wake_at=instance.wake_at,
            parent_id=instance.parent_id,
            run=instance.run,
            note=note,
            code_version=instance.code_version,
            patches=instance.patches,
            waiting_at=instance.waiting_at,
        )


def undecoded_info(instance: Instance, reason: str) -> WorkflowInfo:
    """A listing's record of an instance whose payloads are not decoded (their serializer
    is not accepted, or they are unreadable): ids, states and times, and ``note`` says why."""
    return WorkflowInfo._of(instance, (), {}, None, None, f"payloads not decoded: {reason}")


def decode_payload(codec: Codec, data: str | None) -> Any:
    """``data`` decoded with ``codec``; ``None`` stays ``None``."""
    return codec.loads(data) if data is not None else None


@dataclass(frozen=True)
class PendingSignal:
    """A signal in an instance's inbox that no ``ctx.wait_signal`` has taken yet.

    Attributes:
        name: the signal's name.
        payload: its payload, decoded.
        sent_at: when it arrived (UTC).
    """

    name: str
    payload: Any
    sent_at: datetime


@dataclass(frozen=True, eq=False)
class WorkflowStatus:
    """What ``handle.status()`` tells: the instance's state and what the workflow shows.

    It compares equal to its :class:`Status` (or that status's name), so
    ``handle.status() == "completed"`` reads as it should.

    Attributes:
        state: pending, running, completed, failed or stuck.
        custom: the last value the workflow gave ``ctx.set_status`` (decoded), or None.
        error: the failure of a failed or stuck instance.
        wake_at: when the instance is due to be looked at next (a timer, a deadline).
        updated_at: its last commit.
        run: the run number (``ctx.continue_as_new`` starts the next).
        note: why a live instance is not moving (e.g. "waiting for a worker that knows
            workflow X"), or ``None``.
        pending_signals: signals sent to it that no ``ctx.wait_signal`` has taken yet,
            oldest first (a signal nobody waits for stays here, visible).
        code_version: the code version its current run started on (``None`` if unknown).
        patches: the patch ids whose markers its journal holds.
        waiting_at: where its code waits (``"file:line in function"``), while it waits.
    """

    state: Status
    custom: Any = None
    error: Failure | None = None
    wake_at: datetime | None = None
    updated_at: datetime | None = None
    run: int = 1
    note: str | None = None
    pending_signals: tuple[PendingSignal, ...] = ()
    code_version: str | None = None
    patches: tuple[str, ...] = ()
    waiting_at: str | None = None

    def __eq__(self, other: object) -> bool:
        if isinstance(other, WorkflowStatus):
            return (self.state, self.custom, self.error) == (other.state, other.custom, other.error)
        if isinstance(other, str):  # Status is a str enum too
            return self.state.value == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.state)

    def __str__(self) -> str:
        return self.state.value


def describe_event(event: Event, codec: Codec) -> HistoryEvent:
    args: Sequence[Any] = ()
    kwargs: dict[str, Any] = {}
    if event.input is not None:
        args, kwargs = codec.loads(event.input)
    return HistoryEvent(
        seq=event.seq,
        kind=event.kind,
        name=event.name,
        args=tuple(args),
        kwargs=dict(kwargs),
        state=event.state,
        result=codec.loads(event.output) if event.output is not None else None,
        error=event.failure,
        scheduled_at=event.scheduled_at,
        started_at=event.started_at,
        completed_at=event.completed_at,
        attempts=event.attempts,
        heartbeat_at=event.heartbeat_at,
    )
