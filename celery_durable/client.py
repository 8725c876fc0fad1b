"""Handles on workflow instances: start, wait for, inspect.

This module needs a store and a way to wake an instance's orchestrator, described by the
:class:`Runtime` protocol; it never imports celery, so the layering stays
engine <- stores <- client <- runtime.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any, Generic, Protocol, TypeVar

from celery_durable.engine.journal import Event, Failure, Instance, Kind, State, Status
from celery_durable.engine.serialization import Codec
from celery_durable.errors import (
    DurableError,
    SerializationError,
    WorkflowFailed,
    WorkflowIdConflict,
    WorkflowNotFound,
    WorkflowStuck,
)
from celery_durable.stores.base import Commit, Store
from celery_durable.views import (
    HistoryEvent,
    PendingSignal,
    WorkflowInfo,
    WorkflowStatus,
    decode_payload,
    describe_event,
)

__all__ = [
    "HistoryEvent",
    "PendingSignal",
    "Runtime",
    "WorkflowHandle",
    "WorkflowInfo",
    "WorkflowStatus",
    "cancel",
    "close_children",
    "encode_input",
    "retry",
    "send_signal",
    "start",
    "terminate",
    "utcnow",
]

R = TypeVar("R")


class FirstPassLike(Protocol):
    """A first pass run before the instance is stored (see ``Runtime.first_pass``)."""

    @property
    def instance(self) -> Instance:
        """The instance as its first commit leaves it."""
        ...

    @property
    def events(self) -> list[Event]:
        """The first commit's events."""
        ...

    def publish(self, runtime: Any) -> None:
        """Send the pass's messages, once the instance and its events are stored."""
        ...


class Runtime(Protocol):
    """What a handle needs from the runtime that owns the store and the broker."""

    @property
    def store(self) -> Store:
        """The journal store."""
        ...

    def codec(self, name: str | None = None) -> Codec:
        """The codec called ``name`` (the configured one when ``None``)."""
        ...

    def send_resume(self, instance_id: str, countdown: float | None = None) -> bool:
        """Publish a message that runs the instance's orchestrator (``False`` if the
        broker was down: the instance's ``wake_at`` was pulled for the tick instead)."""
        ...

    def first_pass(self, instance: Instance) -> FirstPassLike | None:
        """An instance's first orchestrator pass, run here before it is stored, if this
        runtime may (it knows the workflow); ``None`` means: create the instance alone
        and send it a resume message."""
        ...

    def now(self) -> datetime:
        """The current time (UTC, aware)."""
        ...

    @property
    def eta_max(self) -> timedelta:
        """The longest delay sent to the broker as a message ETA."""
        ...

    @property
    def redrive_after(self) -> timedelta:
        """How long a sent message may wait before it is presumed lost."""
        ...


class WorkflowHandle(Generic[R]):
    """A reference to one workflow instance, by id; cheap to create, safe to keep.

    Args:
        runtime: the :class:`~celery_durable.Durable` that owns the store.
        workflow_id: the instance's id.
    """

    def __init__(self, runtime: Runtime, workflow_id: str) -> None:
        self._runtime = runtime
        self.id = workflow_id

    def __repr__(self) -> str:
        return f"<WorkflowHandle {self.id}>"

    def _instance(self) -> Instance:
        instance = self._runtime.store.get(self.id)
        if instance is None:
            raise WorkflowNotFound(f"no workflow instance with id {self.id!r} in the store")
        return instance

    def status(self) -> WorkflowStatus:
        """The instance's state, custom status (``ctx.set_status``), run, note and the
        signals waiting in its inbox.

        Compares equal to a :class:`Status`: ``handle.status() == Status.COMPLETED``.

        Raises:
            WorkflowNotFound: no such instance.
            SerializationError: its payloads were encoded with a serializer the app does
                not accept (never decoded).
        """
        instance = self._instance()
        custom = None
        if instance.custom_status is not None:
            custom = self._runtime.codec(instance.serializer).loads(instance.custom_status)
        pending: tuple[PendingSignal, ...] = ()
        if instance.inbox > 0:
            codec = self._runtime.codec(instance.serializer)
            pending = tuple(
                PendingSignal(s.name, decode_payload(codec, s.payload), s.sent_at)
                for s in self._runtime.store.signals(self.id)
            )
        return WorkflowStatus(
            state=instance.status,
            custom=custom,
            error=instance.failure,
            wake_at=instance.wake_at,
            updated_at=instance.updated_at,
            run=instance.run,
            note=instance.note,
            pending_signals=pending,
            code_version=instance.code_version,
            patches=instance.patches,
            waiting_at=instance.waiting_at,
        )

    def signal(self, name: str, payload: Any = None) -> None:
        """Send the workflow the signal ``name``; see :func:`send_signal`."""
        send_signal(self._runtime, self.id, name, payload)

    def cancel(self) -> bool:
        """Cancel the workflow; see :func:`cancel`."""
        return cancel(self._runtime, self.id)

    def terminate(self, reason: str = "terminated") -> bool:
        """Stop the workflow without running more of its code; see :func:`terminate`."""
        return terminate(self._runtime, self.id, reason)

    def result(self, timeout: float | None = None, interval: float = 0.25) -> R:
        """Wait for the workflow to finish and return its result.

        Args:
            timeout: seconds to wait; ``None`` waits forever.
            interval: the longest pause between two looks at the store (polling starts
                fast and backs off to this).

        Raises:
            WorkflowFailed: the workflow ended with an exception; ``.type`` names it
                (``"WorkflowCancelled"`` / ``"WorkflowTerminated"`` for a cancelled one).
            WorkflowStuck: the workflow is parked (e.g. changed code); ``.type`` and
                ``.message`` say why.
            TimeoutError: still running after ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = min(0.005, interval)
        instance = self._instance()
        while True:
            if instance.status is Status.COMPLETED:
                if instance.output is None:
                    return None  # type: ignore[return-value]
                value: R = self._runtime.codec(instance.serializer).loads(instance.output)
                return value
            failure = instance.failure or Failure("UnknownError", "no error was recorded")
            if instance.status is Status.FAILED:
                raise WorkflowFailed(failure.type, failure.message, failure.details)
            if instance.status is Status.STUCK:
                raise WorkflowStuck(failure.type, failure.message, failure.details)
            if instance.status is Status.CANCELLED:
                # .type says which: "WorkflowCancelled" or "WorkflowTerminated".
                raise WorkflowFailed(failure.type, failure.message, failure.details)
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(
                    f"workflow {self.id} ({instance.workflow}) is still {instance.status.value} "
                    f"after {timeout} s"
                )
            wait = pause if deadline is None else min(pause, max(0.0, deadline - time.monotonic()))
            # Returns early on a store that hears of ended instances (PostgreSQL), and
            # with the ending itself when the notification could carry it.
            ending = self._runtime.store.wait_ended(self.id, wait)
            if (
                ending is not None
                and ending.version > instance.version  # news, not an ending retried since
                and (ending.status.is_terminal or ending.status is Status.STUCK)
            ):
                instance = replace(
                    instance,
                    version=ending.version,
                    status=ending.status,
                    output=ending.output,
                    failure=ending.failure,
                )
            else:
                instance = self._instance()
            pause = min(pause * 2, interval)

    def history(self) -> list[HistoryEvent]:
        """The instance's journal, decoded, in order."""
        loaded = self._runtime.store.load(self.id)
        if loaded is None:
            raise WorkflowNotFound(f"no workflow instance with id {self.id!r} in the store")
        instance, events = loaded
        codec = self._runtime.codec(instance.serializer)
        return [describe_event(event, codec) for event in events]

    def steps(self) -> list[str]:
        """The steps the current run has journaled, in order, by their short name.

        A step's short name is its task name's last part (``"myapp.bank.debit"`` ->
        ``"debit"``: the function's name), one entry per journaled step whatever its
        state, so a test can say ``assert handle.steps() == ["debit", "credit"]``. Use
        :meth:`history` for arguments, outcomes and the other kinds of commands.

        Raises:
            WorkflowNotFound: no such instance.
        """
        loaded = self._runtime.store.load(self.id)
        if loaded is None:
            raise WorkflowNotFound(f"no workflow instance with id {self.id!r} in the store")
        return [e.name.rsplit(".", 1)[-1] for e in loaded[1] if e.kind is Kind.STEP]


def encode_input(codec: Codec, workflow: str, args: Sequence[Any], kwargs: dict[str, Any]) -> str:
    """Encode a workflow's arguments, naming the one that cannot be encoded.

    Raises:
        SerializationError: an argument the codec cannot encode; nothing is stored.
    """
    try:
        return codec.dumps([list(args), kwargs])
    except SerializationError:
        labelled = [(f"argument {i}", a) for i, a in enumerate(args)]
        labelled += [(f"argument {k!r}", v) for k, v in kwargs.items()]
        for label, value in labelled:
            try:
                codec.dumps(value)
            except SerializationError as exc:
                raise SerializationError(
                    f"{label} of workflow {workflow!r} ({type(value).__name__}) cannot be "
                    f"encoded with the {codec.name!r} serializer: nothing was started. Pass plain "
                    "data (str, int, float, bool, None, Decimal, datetime, UUID, list, dict) "
                    "or set app.conf.durable_serializer to a serializer that handles it. "
                    f"({exc.__cause__ or exc})"
                ) from exc
        raise


def start(
    runtime: Runtime,
    workflow: str,
    args: Sequence[Any],
    kwargs: dict[str, Any],
    *,
    workflow_id: str | None = None,
    countdown: float | None = None,
    code_version: str | None = None,
    trace_context: str | None = None,
) -> WorkflowHandle[Any]:
    """Create an instance (or find the existing one with that id) and wake its orchestrator.

    ``code_version`` is stamped on the instance (the version of the code starting it);
    ``trace_context`` is its OpenTelemetry trace (:mod:`celery_durable.telemetry.tracing`).

    Starting twice with one ``workflow_id`` returns the first run; the resume message is
    sent again only while that run has not made its first commit, which repairs a start
    whose message was lost. A ``countdown`` longer than the runtime's ETA limit sends no
    message at all: the instance's ``wake_at`` is its start time and the tick starts it.

    Raises:
        SerializationError: an argument cannot be encoded; nothing is stored.
        WorkflowIdConflict: ``workflow_id`` already belongs to an instance of another
            workflow, to a child workflow, or to one started with other arguments;
            nothing is stored.
    """
    codec = runtime.codec()
    encoded = encode_input(codec, workflow, args, kwargs)
    now = runtime.now()
    delay = timedelta(seconds=max(countdown or 0.0, 0.0))
    by_tick = delay > runtime.eta_max
    instance = Instance(
        id=workflow_id or uuid.uuid4().hex,
        workflow=workflow,
        status=Status.PENDING,
        input=encoded,
        serializer=codec.name,
        created_at=now,
        updated_at=now,
        # Due when the first pass should have happened: if the message is lost, the tick
        # sends another.
        wake_at=now + delay if by_tick else now + delay + runtime.redrive_after,
        code_version=code_version,
        trace_context=trace_context,
    )
    # The first pass runs here when it can: the instance is stored with its first
    # events in one statement and its first steps are sent from here (no resume hop).
    first = None if delay else runtime.first_pass(instance)
    if first is not None:
        stored, created = runtime.store.create(first.instance, first.events)
    else:
        stored, created = runtime.store.create(instance)
    if not created:
        _check_same_start(runtime, stored, workflow, encoded)
    if created and first is not None:
        first.publish(runtime)
    elif created and not by_tick:
        runtime.send_resume(stored.id, countdown=delay.total_seconds() or None)
    elif (
        not created
        and stored.status is Status.PENDING
        and stored.wake_at is not None
        and stored.wake_at <= now + runtime.redrive_after
    ):
        # A second start of a run whose first message may be lost (not a deferred one).
        runtime.send_resume(stored.id)
    return WorkflowHandle(runtime, stored.id)


def _check_same_start(runtime: Runtime, stored: Instance, workflow: str, encoded: str) -> None:
    """An existing id is an idempotent start only for the same workflow and arguments."""
    taken = f"workflow id {stored.id!r} already belongs to"
    fix = "choose another workflow_id (nothing was started)"
    if stored.workflow != workflow:
        raise WorkflowIdConflict(
            f"{taken} an instance of workflow {stored.workflow!r}, not {workflow!r}; {fix}"
        )
    if stored.parent_id is not None:
        raise WorkflowIdConflict(
            f"{taken} a child of workflow instance {stored.parent_id!r}; {fix}"
        )
    if stored.run != 1 or stored.input == encoded:
        return  # a run that continued as new has other arguments by design
    try:
        codec = runtime.codec(stored.serializer)
        same = codec.loads(stored.input) == runtime.codec().loads(encoded)
    except SerializationError:
        same = False
    if not same:
        raise WorkflowIdConflict(
            f"{taken} an instance of {workflow!r} started with other arguments; start it "
            f"with the same arguments to get its handle, or {fix}"
        )


def send_signal(runtime: Runtime, workflow_id: str, name: str, payload: Any = None) -> None:
    """Send a signal to a workflow: kept in its inbox until a ``ctx.wait_signal(name)``
    takes it (signals of one name in arrival order, each exactly once), even one that
    arrives before the workflow waits for it.

    Raises:
        WorkflowNotFound: no such instance.
        DurableError: the workflow has finished (completed or failed).
        SerializationError: the payload cannot be encoded; nothing is stored.
    """
    instance = runtime.store.get(workflow_id)
    if instance is None:
        raise WorkflowNotFound(f"no workflow instance with id {workflow_id!r} in the store")
    try:
        encoded = runtime.codec(instance.serializer).dumps(payload)
    except SerializationError as exc:
        raise SerializationError(
            f"the payload of signal {name!r} for workflow {workflow_id} cannot be encoded: "
            f"{exc}; nothing was sent"
        ) from exc
    now = runtime.now()
    before = runtime.store.send_signal(workflow_id, name, encoded, now, now + runtime.redrive_after)
    if before is None:
        raise WorkflowNotFound(f"no workflow instance with id {workflow_id!r} in the store")
    if before.status.is_terminal:
        raise DurableError(
            f"workflow {workflow_id} is {before.status.value}: signal {name!r} was not "
            "delivered (a finished workflow waits for nothing)"
        )
    if before.status is not Status.STUCK:
        runtime.send_resume(workflow_id)


def cancel(runtime: Runtime, workflow_id: str) -> bool:
    """Ask a workflow to stop: its next pass throws
    :class:`~celery_durable.errors.WorkflowCancelled` into it at the ``await`` it is
    blocked on, so ``ctx.saga()`` compensations and ``finally`` blocks run as durable code;
    if the exception propagates, the instance ends ``cancelled``. A running step is not
    interrupted: its outcome is journaled when it ends.

    Returns:
        ``True`` if the cancellation was requested; ``False`` if the workflow had already
        finished (nothing to do).

    Raises:
        WorkflowNotFound: no such instance.
    """
    now = runtime.now()
    before = runtime.store.request_cancel(workflow_id, now + runtime.redrive_after)
    if before is None:
        raise WorkflowNotFound(f"no workflow instance with id {workflow_id!r} in the store")
    if before.status.is_terminal:
        return False
    if before.status is not Status.STUCK:
        runtime.send_resume(workflow_id)
    return True


def terminate(runtime: Runtime, workflow_id: str, reason: str = "terminated") -> bool:
    """End a workflow now, as ``cancelled``, without running any more of its code (no
    compensation). Outcomes of steps still running are journaled when they end. Its
    unfinished children get their parent-close policy (``ctx.child(...,
    on_parent_close=...)``: terminated by default).

    Returns:
        ``True`` if it was terminated; ``False`` if it had already finished.

    Raises:
        WorkflowNotFound: no such instance.
    """
    while True:
        instance = runtime.store.get(workflow_id)
        if instance is None:
            raise WorkflowNotFound(f"no workflow instance with id {workflow_id!r} in the store")
        if instance.status.is_terminal:
            return False
        if runtime.store.commit(
            Commit(
                instance_id=workflow_id,
                expected_version=instance.version,
                status=Status.CANCELLED,
                updated_at=runtime.now(),
                failure=Failure("WorkflowTerminated", reason),
                custom_status=instance.custom_status,
            )
        ):
            if instance.parent_id:
                runtime.send_resume(instance.parent_id)
            close_children(runtime, workflow_id, "was terminated")
            return True


#: The most children one parent's close looks at (a parent with more is unusual; the
#: children's own passes apply the policy to the rest, see the orchestrator).
CHILDREN_LIMIT = 10_000


def close_children(
    runtime: Runtime, parent_id: str, ended: str, child_ids: Sequence[str] | None = None
) -> None:
    """Apply each unfinished child's parent-close policy: its parent ``parent_id`` has
    ended (``ended`` says how, for the reason recorded). ``"terminate"`` ends the child at
    once, ``"cancel"`` asks it to cancel (its compensations run), ``"abandon"`` leaves it.

    Args:
        child_ids: only these children (a run that continues as new closes the children
            it started, not those the next run may already have); all by default.
    """
    if child_ids is None:
        children = runtime.store.list(parent_id=parent_id, limit=CHILDREN_LIMIT)
    else:
        children = runtime.store.get_many(child_ids)
    for child in children:
        if child.status.is_terminal or child.parent_id != parent_id:
            continue
        policy = child.parent_close or "terminate"
        if policy == "terminate":
            terminate(runtime, child.id, f"its parent {parent_id} {ended}")
        elif policy == "cancel":
            cancel(runtime, child.id)


def retry(runtime: Runtime, workflow_id: str) -> WorkflowHandle[Any]:
    """Resume a ``stuck`` instance, or rewind a ``failed`` one, with the code deployed now.

    A stuck instance (a bug, changed code, a blocked pass) is replayed from its journal:
    journaled steps are not run again. A failed instance is rewound to its failure point
    (Azure Durable Functions' "rewind"): the journal record whose failure failed the
    workflow and everything after it are removed (signals they took go back to the inbox;
    a failed child is rewound too), so that step is sent again while everything before it
    replays from the journal. An instance that sent steps after its failure point
    (compensations) is not rewound: their effects cannot be forgotten. A cancellation
    requested while the instance was stuck applies when it resumes.

    Returns:
        A handle on the instance.

    Raises:
        WorkflowNotFound: no such instance.
        DurableError: the instance is neither stuck nor failed, or it failed and then
            sent steps (compensations) that a rewind would forget.
    """
    while True:
        loaded = runtime.store.load(workflow_id)
        if loaded is None:
            raise WorkflowNotFound(f"no workflow instance with id {workflow_id!r} in the store")
        instance, events = loaded
        if instance.status not in (Status.STUCK, Status.FAILED):
            raise DurableError(
                f"workflow {workflow_id} is {instance.status.value}: only stuck instances "
                "(resumed) and failed ones (rewound to their failure point) are retried"
            )
        point = None
        if instance.status is Status.FAILED:
            point = _failure_point(instance, events)
            if point is not None:
                _check_rewindable(instance, events, point)
            if point is not None and point.kind is Kind.CHILD and point.input:
                child_id = runtime.codec(instance.serializer).loads(point.input)[0][0]
                child = runtime.store.get(child_id)
                if child is not None and child.status is Status.FAILED:
                    retry(runtime, child_id)
        if runtime.store.commit(
            Commit(
                instance_id=workflow_id,
                expected_version=instance.version,
                status=Status.RUNNING,
                updated_at=runtime.now(),
                custom_status=instance.custom_status,
                wake_at=runtime.now() + runtime.redrive_after,
                rewind_from=None if point is None else point.seq,
                waiting_at=instance.waiting_at,
            )
        ):
            break
    runtime.send_resume(workflow_id)
    return WorkflowHandle(runtime, workflow_id)


def _check_rewindable(instance: Instance, events: Sequence[Event], point: Event) -> None:
    """Refuse to rewind past steps or children sent after the failure point (typically
    compensations): their effects happened, and a rewind would forget them from the
    journal while the workflow goes on as if they had not."""
    after = [e for e in events[point.seq + 1 :] if e.kind in (Kind.STEP, Kind.CHILD)]
    if after:
        names = ", ".join(f"seq {e.seq} {e.kind.value} {e.name!r}" for e in after)
        raise DurableError(
            f"workflow {instance.id} failed at seq {point.seq} ({point.name!r}) and then sent "
            f"{names} (compensations, typically); a rewind would forget what they did. "
            "It stays failed: start a new instance to do the work again"
        )


def _failure_point(instance: Instance, events: Sequence[Event]) -> Event | None:
    """The last failed journal record whose failure is the instance's own (the step, wait
    or child whose failure escaped the workflow), or ``None`` (the workflow raised a
    failure of its own: it is replayed from the end)."""
    failure = instance.failure
    if failure is None:
        return None
    for event in reversed(events):
        if (
            event.state is State.FAILED
            and event.failure is not None
            and (event.failure.type, event.failure.message) == (failure.type, failure.message)
        ):
            return event
    return None


def utcnow() -> datetime:
    """The current time, UTC, timezone-aware."""
    return datetime.now(timezone.utc)
