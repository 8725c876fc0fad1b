"""The workflow context: what workflow code awaits, and its deterministic helpers.

Every ``ctx`` command (``ctx.step``, ``ctx.run``, ``ctx.sleep``) is an awaitable whose ``__await__``
yields the command itself to the replay driver (:mod:`celery_durable.engine.replay`),
which gives it the next ``seq``, matches it against the journal and sends back its
outcome. Workflow code therefore never touches an event loop: it is an ordinary coroutine
driven with ``send()`` and ``throw()``.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import math
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Generator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, ClassVar, ParamSpec, TypeVar

from celery_durable.engine.commands import ScheduleStep
from celery_durable.engine.journal import Event, Failure, Instance, Kind, State
from celery_durable.engine.serialization import Codec
from celery_durable.errors import SerializationError

P = ParamSpec("P")
T = TypeVar("T")

if TYPE_CHECKING:
    _LoggerAdapter = logging.LoggerAdapter[logging.Logger]
else:  # LoggerAdapter is subscriptable at runtime only from Python 3.11
    _LoggerAdapter = logging.LoggerAdapter


@dataclass
class _Cursor:
    """Where one replay pass stands in the journal; shared by the context and the driver."""

    journal: Sequence[Event]
    now: datetime
    seq: int = 0
    discarding: bool = False
    """The driver is closing the suspended coroutine; its ``finally`` blocks now run."""

    @property
    def in_journal(self) -> bool:
        return self.seq < len(self.journal)


class _Command:
    """A durable operation that workflow code awaits.

    Subclasses say what the command is (``kind``, ``name``, encoded ``input``), what it
    journals when issued for the first time (:meth:`new_event`) and what the runtime must
    send once that event is committed (:meth:`dispatch`).
    """

    kind: ClassVar[Kind]
    verb: ClassVar[str]

    def __init__(self, owner: WorkflowContext, name: str, input: str) -> None:  # noqa: A002
        self.owner = owner
        self.name = name
        self.input = input
        self._awaited = False

    def __await__(self) -> Generator[_Command, Any, Any]:
        if self._awaited:
            # A second await would silently issue a second command with the same payload.
            raise RuntimeError(
                f"{self.describe()} was already awaited; call ctx.{self.verb}(...) again "
                "to issue another command"
            )
        self._awaited = True
        return (yield self)

    def describe(self) -> str:
        """How messages name this command, e.g. ``step 'bank.start_transfer'``."""
        return f"{self.kind.value} {self.name!r}"

    def new_event(self, seq: int, now: datetime) -> Event:
        """The journal record of this command, issued for the first time at ``seq``."""
        raise NotImplementedError

    def dispatch(self, seq: int) -> ScheduleStep | None:
        """The message to send once :meth:`new_event` is committed, if the command needs one."""
        return None


class _StepCommand(_Command):
    kind = Kind.STEP
    verb = "step"

    def __init__(
        self,
        owner: WorkflowContext,
        name: str,
        input: str,  # noqa: A002
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        super().__init__(owner, name, input)
        self.args = args
        self.kwargs = kwargs

    def new_event(self, seq: int, now: datetime) -> Event:
        return Event(seq, self.kind, self.name, self.input, State.SCHEDULED, scheduled_at=now)

    def dispatch(self, seq: int) -> ScheduleStep | None:
        return ScheduleStep(seq, self.name, self.args, self.kwargs)


class _RunCommand(_Command):
    kind = Kind.RUN
    verb = "run"

    def __init__(
        self,
        owner: WorkflowContext,
        name: str,
        input: str,  # noqa: A002
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        codec: Codec,
    ) -> None:
        super().__init__(owner, name, input)
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.codec = codec

    def new_event(self, seq: int, now: datetime) -> Event:
        # Failed until proven otherwise: every early return below records a failure.
        event = Event(
            seq, self.kind, self.name, self.input, State.FAILED, now, completed_at=now, attempts=1
        )
        try:
            result = self.fn(*self.args, **self.kwargs)
        except Exception as exc:
            event.failure = Failure.from_exception(exc)
            return event
        if inspect.isawaitable(result):
            if isinstance(result, Coroutine):
                result.close()  # never awaited: close it so Python does not warn about it
            event.failure = Failure(
                "TypeError",
                f"ctx.run({self.name}) returned an awaitable; ctx.run runs plain functions "
                "inline: make it a @durable.step to run async code",
            )
            return event
        try:
            event.output = self.codec.dumps(result)
        except Exception as exc:
            event.failure = Failure(
                "SerializationError",
                f"ctx.run({self.name}) returned a value of type {type(result).__name__!r} that the "
                f"{self.codec.name!r} serializer cannot encode: {exc}",
            )
            return event
        event.state = State.COMPLETED
        return event


class _TimerCommand(_Command):
    """A durable timer; its input is the encoded ``[[fire_at], {}]``."""

    kind = Kind.TIMER
    verb = "sleep"

    def __init__(self, owner: WorkflowContext, input: str, fire_at: datetime) -> None:  # noqa: A002
        super().__init__(owner, "sleep", input)
        self.fire_at = fire_at

    def new_event(self, seq: int, now: datetime) -> Event:
        event = Event(seq, self.kind, self.name, self.input, State.SCHEDULED, scheduled_at=now)
        if self.fire_at <= now:  # a zero delay or a time already past: it fires at once
            event.state = State.COMPLETED
            event.completed_at = now
        return event


def _encode_fire_time(codec: Codec, fire_at: datetime) -> str:
    """The timer input ``[[fire_at], {}]``; the fire time as ISO text if the codec has no dates."""
    try:
        return codec.dumps([[fire_at], {}])
    except Exception:
        pass
    try:
        return codec.dumps([[fire_at.isoformat()], {}])
    except Exception as exc:
        raise SerializationError(
            f"cannot encode a timer's fire time with the {codec.name!r} serializer: {exc}"
        ) from exc


def decode_fire_time(codec: Codec, data: str | None) -> datetime:
    """The fire time (UTC) a timer event's input holds.

    Raises:
        ValueError: the input is not an encoded ``[[fire_at], {}]``.
    """
    if data is None:
        raise ValueError("the timer event has no input")
    decoded = codec.loads(data)
    try:
        [[fire_at], _kwargs] = decoded
    except (TypeError, ValueError):
        raise ValueError(f"{decoded!r} is not a [[fire_at], {{}}] pair") from None
    if isinstance(fire_at, str):
        fire_at = datetime.fromisoformat(fire_at)
    if not isinstance(fire_at, datetime):
        raise ValueError(f"the fire time {fire_at!r} is not a datetime")
    if fire_at.tzinfo is None:  # a codec that drops the zone: fire times are kept in UTC
        return fire_at.replace(tzinfo=timezone.utc)
    return fire_at.astimezone(timezone.utc)


def _encode_call(codec: Codec, what: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    try:
        return codec.dumps([list(args), kwargs])
    except Exception as exc:
        # Codecs may fail with ValueError (e.g. circular data); the workflow sees one type.
        raise SerializationError(
            f"cannot encode the arguments of {what} with the {codec.name!r} serializer: {exc}"
        ) from exc


def _function_name(fn: Callable[..., Any]) -> str:
    for attribute in ("__qualname__", "__name__"):
        name = getattr(fn, attribute, None)
        if isinstance(name, str):
            return name
    return type(fn).__name__  # e.g. functools.partial


class _ReplayQuietLogger(_LoggerAdapter):
    """Drops records while the workflow re-runs code that already ran (and logged)."""

    def __init__(self, logger: logging.Logger, context: WorkflowContext) -> None:
        super().__init__(
            logger, {"workflow_id": context.workflow_id, "workflow_name": context.workflow_name}
        )
        self._context = context

    def isEnabledFor(self, level: int) -> bool:  # every LoggerAdapter method asks this first
        return not self._context.is_replaying and super().isEnabledFor(level)


class WorkflowContext:
    """What a workflow receives as its first argument, ``ctx``.

    Workflow code must be deterministic: each pass of the orchestrator re-runs it from
    the start and feeds it the journaled outcomes, so it may only await ``ctx`` commands,
    and must take time, randomness and other changing values from ``ctx`` (``ctx.now()``,
    ``ctx.uuid4()``, ``ctx.run(...)``).

    The engine builds one context per pass; workflow code never builds one.
    """

    def __init__(
        self,
        instance: Instance,
        cursor: _Cursor,
        *,
        codec: Codec,
        resolve_step: Callable[[Any], str],
    ) -> None:
        self._instance = instance
        self._cursor = cursor
        self._codec = codec
        self._resolve_step = resolve_step
        self._uuid_count = 0
        self._logger: _ReplayQuietLogger | None = None

    @property
    def workflow_id(self) -> str:
        """The id of this workflow instance."""
        return self._instance.id

    @property
    def workflow_name(self) -> str:
        """The registered name of this workflow."""
        return self._instance.workflow

    @property
    def is_replaying(self) -> bool:
        """True while the code being run already ran in an earlier pass.

        That is while the workflow has not yet reached the end of its journal (and while
        the engine closes a suspended workflow, whose ``finally`` blocks then run). Use it
        to skip side effects that must happen once, such as metrics; :attr:`logger`
        already does.
        """
        return self._cursor.discarding or self._cursor.in_journal

    @property
    def logger(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger (named after the workflow) that stays quiet while :attr:`is_replaying`.

        Its records carry ``workflow_id`` and ``workflow_name`` as extra attributes.
        """
        if self._logger is None:
            name = self._instance.workflow or "celery_durable.workflow"
            self._logger = _ReplayQuietLogger(logging.getLogger(name), self)
        return self._logger

    def now(self) -> datetime:
        """The current time (UTC), the same on every replay.

        The time a workflow sees at a given point is the time of the orchestrator pass
        that first reached that point: if the journal holds an event at the current
        position, that event's ``scheduled_at``; otherwise the time of this pass (which
        will become the ``scheduled_at`` of the next command issued).
        """
        if self._cursor.in_journal:
            return self._cursor.journal[self._cursor.seq].scheduled_at
        return self._cursor.now

    def sleep(self, delay: timedelta | float, /) -> Awaitable[None]:
        """Wait durably for ``delay``: minutes or a year, across restarts and deploys.

        The fire time is ``ctx.now() + delay``, computed when the timer is first issued
        and journaled; no worker holds anything while the workflow waits. The timer
        never fires early: a pass that runs before the fire time just waits again.
        Once set, a timer keeps its journaled fire time: changing ``delay`` in the code
        does not move a timer an instance has already set (only the timers it sets
        afterwards). Switching between ``sleep`` and :meth:`sleep_until` is not a change
        of the workflow's commands.

        Args:
            delay: a ``datetime.timedelta``, or a number of seconds (``int`` or
                ``float``); zero fires at once (the workflow goes on in the same pass).

        Returns:
            An awaitable giving ``None`` once the fire time has come. After it,
            ``ctx.now()`` is at or past the fire time.

        Raises:
            ValueError: ``delay`` is negative, not finite, or too long to add to a date.
            TypeError: ``delay`` is neither a timedelta nor a number.
        """
        if isinstance(delay, timedelta):
            span = delay
        elif isinstance(delay, (int, float)) and not isinstance(delay, bool):
            if not math.isfinite(delay):
                raise ValueError(f"ctx.sleep() needs a finite delay, got {delay!r}")
            try:
                span = timedelta(seconds=delay)
            except OverflowError:
                raise ValueError(f"ctx.sleep() delay {delay!r} seconds is too long") from None
        else:
            raise TypeError(
                "ctx.sleep() takes a datetime.timedelta or a number of seconds, got "
                f"{type(delay).__name__!r}; use ctx.sleep_until() for a datetime"
            )
        if span < timedelta(0):
            raise ValueError(f"ctx.sleep() needs a delay >= 0, got {delay!r}")
        try:
            fire_at = self.now() + span
        except OverflowError:
            raise ValueError(f"ctx.sleep() delay {delay!r} is too long") from None
        return self._timer(fire_at)

    def sleep_until(self, when: datetime, /) -> Awaitable[None]:
        """Wait durably until ``when``; a time already past fires at once.

        Like :meth:`sleep` (same journal record, so switching between the two is not a
        change of the workflow's commands): the fire time is journaled when the timer is
        first issued, and a later change of ``when`` in the code does not move a timer
        already set. The timer never fires before ``when``.

        Args:
            when: a timezone-aware datetime, e.g. ``datetime(2025, 1, 1, tzinfo=timezone.utc)``;
                it is journaled in UTC.

        Returns:
            An awaitable giving ``None`` once ``when`` has come (in the same pass if it
            is already past). After it, ``ctx.now()`` is at or past ``when``.

        Raises:
            TypeError: ``when`` is not a datetime, or is naive (no time zone).
        """
        if not isinstance(when, datetime):
            raise TypeError(
                f"ctx.sleep_until() takes a datetime, got {type(when).__name__!r}; "
                "use ctx.sleep() for a delay"
            )
        if when.tzinfo is None or when.utcoffset() is None:
            raise TypeError(
                f"ctx.sleep_until() got the naive datetime {when.isoformat()}; pass an aware "
                "UTC datetime, e.g. datetime(..., tzinfo=timezone.utc)"
            )
        return self._timer(when.astimezone(timezone.utc))

    def _timer(self, fire_at: datetime) -> _TimerCommand:
        return _TimerCommand(self, _encode_fire_time(self._codec, fire_at), fire_at)

    def uuid4(self) -> uuid.UUID:
        """A random-looking UUID (version 4), the same on every replay.

        The n-th call in a workflow instance always returns the same value, derived from
        the workflow id and n, and values are unique across calls and instances. They are
        NOT secret (anyone knowing the workflow id can compute them): use
        ``await ctx.run(secrets.token_hex)`` for secrets.
        """
        seed = f"{self._instance.id}\x00{self._uuid_count}".encode()
        self._uuid_count += 1
        return uuid.UUID(bytes=hashlib.sha256(seed).digest()[:16], version=4)

    def step(self, task: Any, /, *args: Any, **kwargs: Any) -> Awaitable[Any]:
        """Run a step (a ``@durable.step`` Celery task) once, and return its result.

        The first time, the step is journaled and sent to a worker, and the workflow waits;
        on later passes the journaled result is returned without running it again.

        Args:
            task: the step task, or its registered name.
            *args: positional arguments for the task; they must be serializable.
            **kwargs: keyword arguments for the task; they must be serializable.

        Returns:
            An awaitable giving the step's result, decoded by the instance's serializer
            (so a tuple comes back as a list with JSON).

        Raises:
            StepFailed: (when awaited) the step failed for good; ``.type`` names the
                step's exception class.
            SerializationError: the arguments cannot be encoded; nothing is journaled.
            TypeError: ``task`` is not a step task or a task name.
        """
        name = self._resolve_step(task)
        what = f"step {name!r}"
        encoded = _encode_call(self._codec, what, args, kwargs)
        return _StepCommand(self, name, encoded, tuple(args), dict(kwargs))

    def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Awaitable[T]:
        """Run a small local function inline, once, and journal its result.

        For values that differ between runs (ids, secrets, reading a clock or a file):
        the function runs on the first pass only; replays return the journaled result.
        The first pass also sees the value after a trip through the serializer, exactly
        as replays will.

        Args:
            fn: a plain (not async) function; it is journaled under its qualified name.
            *args: positional arguments for ``fn``; they must be serializable.
            **kwargs: keyword arguments for ``fn``; they must be serializable.

        Returns:
            An awaitable giving ``fn``'s result.

        Raises:
            StepFailed: (when awaited) ``fn`` raised, or returned a value the serializer
                cannot encode; the failure is journaled.
            SerializationError: the arguments cannot be encoded; nothing is journaled.
            TypeError: ``fn`` is an ``async def`` function.
        """
        name = _function_name(fn)
        if inspect.iscoroutinefunction(fn):
            raise TypeError(
                f"ctx.run({name}): ctx.run runs plain functions inline, not async ones; "
                "make it a @durable.step to run async code"
            )
        encoded = _encode_call(self._codec, f"ctx.run({name})", args, kwargs)
        return _RunCommand(self, name, encoded, fn, tuple(args), dict(kwargs), self._codec)
