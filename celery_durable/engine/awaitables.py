"""What workflow code awaits: the ``ctx`` commands and their combinations.

A *command* (:class:`_Command`: a step, a local run, a timer, a signal wait, a child
workflow, the point of a cancellation) is one journal event. Its
``__await__`` yields the command itself to the replay driver
(:mod:`celery_durable.engine.replay`), which gives it the next ``seq``, matches it against
the journal and sends back its outcome. A *combination* (:class:`_Gather`,
:class:`_First`) yields itself once and stands for several commands, each with its own
``seq`` in argument order.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine, Generator, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, ClassVar

from celery_durable.engine.commands import ScheduleStep, StartChild
from celery_durable.engine.journal import Event, Failure, Kind, State
from celery_durable.engine.serialization import Codec
from celery_durable.errors import SerializationError

if TYPE_CHECKING:
    from celery_durable.engine.context import WorkflowContext


@dataclass
class _Cursor:
    """Where one replay pass stands in the journal; shared by the context and the driver."""

    journal: Sequence[Event]
    now: datetime
    seq: int = 0
    discarding: bool = False
    """The driver is closing the suspended coroutine; its ``finally`` blocks now run."""
    custom_status: str | None = None
    """The encoded value of the last ``ctx.set_status()`` call reached in the pass, if any."""
    new_events: list[Event] = field(default_factory=list)
    """The pass's new events (the driver's list): where ``ctx.patched`` journals markers."""
    patches: dict[str, bool] = field(default_factory=dict)
    """What each ``ctx.patched(id)`` answered in the pass (a run answers once per id)."""
    patch_log: list[tuple[str, str]] = field(default_factory=list)
    """``(patch id, "old" | "marker" | "new")`` per first call in the pass: the old
    branch replayed, a journaled marker replayed, or new ground (the new branch)."""
    taken: set[int] = field(default_factory=set)
    """Seqs of patch markers answered ahead of the cursor (patches met in another order)."""
    checking: bool = False
    """A replay check: stop at the first command the journal does not hold yet."""

    @property
    def in_journal(self) -> bool:
        return self.seq < len(self.journal)


class _Awaitable:
    """Anything workflow code awaits: it yields itself to the replay driver, once."""

    verb: ClassVar[str]
    """The ``ctx`` method that makes it, for messages."""

    def __init__(self, owner: WorkflowContext) -> None:
        self.owner = owner
        self._used: str | None = None
        """How it was used up: ``"awaited"`` or ``"passed to ctx.gather()"``; ``None`` if not."""

    def __await__(self) -> Generator[_Awaitable, Any, Any]:
        self._use("awaited")
        return (yield self)

    def _use(self, how: str) -> None:
        if self._used is not None:
            # A second use would silently issue a second command with the same payload.
            raise RuntimeError(
                f"{self.describe()} was already {self._used}; call ctx.{self.verb}(...) again "
                "to issue another command"
            )
        self._used = how

    def describe(self) -> str:
        """How messages name it."""
        raise NotImplementedError


class _Command(_Awaitable):
    """A durable operation that workflow code awaits: one journal event.

    Subclasses say what the command is (``kind``, ``name``, encoded ``input``), what it
    journals when issued for the first time (:meth:`new_event`) and what the runtime must
    send once that event is committed (:meth:`dispatch`).
    """

    kind: ClassVar[Kind]

    def __init__(self, owner: WorkflowContext, name: str, input: str) -> None:  # noqa: A002
        super().__init__(owner)
        self.name = name
        self.input = input
        self.seq: int | None = None
        """Its place in the journal, once the replay driver has issued it."""

    def rejoin(self) -> _Rejoin:
        """Wait again for this command, already issued, after a cancellation was thrown at
        its await (a saga finishing the compensation it was running)."""
        if self.seq is None:
            raise RuntimeError(f"{self.describe()} was never issued; await it instead")
        return _Rejoin(self.owner, self)

    def describe(self) -> str:
        """How messages name this command, e.g. ``step 'bank.start_transfer'``."""
        return f"{self.kind.value} {self.name!r}"

    def new_event(self, seq: int, now: datetime) -> Event:
        """The journal record of this command, issued for the first time at ``seq``."""
        raise NotImplementedError

    def dispatch(self, seq: int) -> ScheduleStep | StartChild | None:
        """What the runtime must do once :meth:`new_event` is committed, if anything: send
        a step, or create a child instance."""
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

    def dispatch(self, seq: int) -> ScheduleStep | StartChild | None:
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


class _SignalCommand(_Command):
    """A wait for the signal ``name``; its input is the encoded ``[[deadline or None], {}]``.

    Issued pending: the replay driver resolves it against the inbox (or its deadline)
    in the same pass, see :meth:`WorkflowContext.wait_signal`.
    """

    kind = Kind.SIGNAL
    verb = "wait_signal"

    def new_event(self, seq: int, now: datetime) -> Event:
        return Event(seq, self.kind, self.name, self.input, State.SCHEDULED, scheduled_at=now)


PARENT_CLOSE_POLICIES = ("terminate", "cancel", "abandon")
"""What ``ctx.child(..., on_parent_close=...)`` may do with a child its parent leaves."""


class _ChildCommand(_Command):
    """A child workflow, named after its workflow; ``input`` is the encoded ``[args, kwargs]``
    the child starts with (what :class:`StartChild` carries).

    Its journal event's input is ``[[child_id, *args], kwargs]``: the child id is fixed
    when the command is first issued (by default ``"<parent id>:<seq>"``).
    """

    kind = Kind.CHILD
    verb = "child"

    def __init__(
        self,
        owner: WorkflowContext,
        name: str,
        input: str,  # noqa: A002
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        workflow_id: str | None,
        codec: Codec,
        on_parent_close: str = "terminate",
    ) -> None:
        super().__init__(owner, name, input)
        self.args = args
        self.kwargs = kwargs
        self.workflow_id = workflow_id
        self.codec = codec
        self.on_parent_close = on_parent_close

    def child_id(self, seq: int) -> str:
        """The child's workflow id when issued at ``seq`` (in run ``n > 1`` of the parent,
        ``"<parent id>:<seq>~<n>"``: each run has children of its own)."""
        if self.workflow_id is not None:
            return self.workflow_id
        run = self.owner.run_number
        return (
            f"{self.owner.workflow_id}:{seq}"
            if run == 1
            else f"{self.owner.workflow_id}:{seq}~{run}"
        )

    def journal_input(self, seq: int) -> str:
        """The encoded ``[[child_id, *args], kwargs]`` its journal record holds at ``seq``."""
        return _encode_call(
            self.codec,
            f"child workflow {self.name!r}",
            (self.child_id(seq), *self.args),
            self.kwargs,
        )

    def new_event(self, seq: int, now: datetime) -> Event:
        return Event(
            seq, self.kind, self.name, self.journal_input(seq), State.SCHEDULED, scheduled_at=now
        )

    def dispatch(self, seq: int) -> ScheduleStep | StartChild | None:
        return StartChild(
            seq, self.child_id(seq), self.name, self.input, parent_close=self.on_parent_close
        )


def decode_child_id(codec: Codec, data: str | None) -> str:
    """The child workflow id a CHILD event's input ``[[child_id, *args], kwargs]`` holds.

    Raises:
        ValueError: the input is not such a pair.
    """
    if data is None:
        raise ValueError("the child event has no input")
    decoded = codec.loads(data)
    try:
        [[child_id, *_args], _kwargs] = decoded
    except (TypeError, ValueError):
        raise ValueError(f"{decoded!r} is not a [[child_id, *args], kwargs] pair") from None
    if not isinstance(child_id, str):
        raise ValueError(f"the child id {child_id!r} is not a string")
    return child_id


CANCEL_WHILE_BLOCKED = "cancel"
"""The name of a CANCEL event thrown at an await whose journaled commands it follows."""
CANCEL_BEFORE_COMMANDS = "cancel before"
"""The name of a CANCEL event thrown at an await before its commands were issued: at its
seq the workflow would have issued a new command, and never did."""


class _CancelCommand(_Command):
    """Where a requested cancellation was thrown into the workflow (issued by the driver,
    never by workflow code): journaled completed, with no input, named after where it was
    thrown (:data:`CANCEL_WHILE_BLOCKED` or :data:`CANCEL_BEFORE_COMMANDS`)."""

    kind = Kind.CANCEL
    verb = "cancel"

    def __init__(self, owner: WorkflowContext, name: str = CANCEL_WHILE_BLOCKED) -> None:
        super().__init__(owner, name, "")

    def new_event(self, seq: int, now: datetime) -> Event:
        return Event(
            seq, self.kind, self.name, None, State.COMPLETED, scheduled_at=now, completed_at=now
        )


class _ContinueAsNew(BaseException):
    """Raised by ``ctx.continue_as_new()``; the replay driver turns it into a restart.

    A :class:`BaseException` so that workflow code's ``except Exception`` does not stop it
    (and ``ctx.saga()`` blocks do not compensate for it).
    """

    def __init__(self, input: str) -> None:  # noqa: A002
        super().__init__("ctx.continue_as_new()")
        self.input = input


def _encode_fire_time(
    codec: Codec, fire_at: datetime | None, what: str = "a timer's fire time"
) -> str:
    """The input ``[[fire_at], {}]`` of a timer (or ``[[deadline or None], {}]`` of a
    signal wait); the time as ISO text if the codec has no dates."""
    error: Exception
    try:
        return codec.dumps([[fire_at], {}])
    except Exception as exc:
        error = exc
    if fire_at is not None:
        try:
            return codec.dumps([[fire_at.isoformat()], {}])
        except Exception as exc:
            error = exc
    raise SerializationError(
        f"cannot encode {what} with the {codec.name!r} serializer: {error}"
    ) from error


def decode_fire_time(codec: Codec, data: str | None) -> datetime:
    """The fire time (UTC) a timer event's input holds.

    Raises:
        ValueError: the input is not an encoded ``[[fire_at], {}]``.
    """
    fire_at = _decode_time(codec, data, "timer", "fire time", "fire_at")
    if fire_at is None:
        raise ValueError("the fire time None is not a datetime")
    return fire_at


def decode_deadline(codec: Codec, data: str | None) -> datetime | None:
    """The deadline (UTC) a signal wait's input holds; ``None`` if it waits forever.

    Raises:
        ValueError: the input is not an encoded ``[[deadline or None], {}]``.
    """
    return _decode_time(codec, data, "signal wait", "deadline", "deadline")


def _decode_time(
    codec: Codec, data: str | None, event: str, what: str, slot: str
) -> datetime | None:
    if data is None:
        raise ValueError(f"the {event} event has no input")
    decoded = codec.loads(data)
    try:
        [[when], _kwargs] = decoded
    except (TypeError, ValueError):
        raise ValueError(f"{decoded!r} is not a [[{slot}], {{}}] pair") from None
    if when is None:
        return None
    if isinstance(when, str):
        when = datetime.fromisoformat(when)
    if not isinstance(when, datetime):
        raise ValueError(f"the {what} {when!r} is not a datetime")
    if when.tzinfo is None:  # a codec that drops the zone: times are kept in UTC
        return when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc)


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


# -- combinations: ctx.gather and ctx.first -----------------------------------------------

RACE_RECORD = "ctx.first"
"""The name of the ``run`` event that journals the winner of a ``ctx.first`` race."""


class _Rejoin(_Awaitable):
    """Waits for the outcome of a command issued earlier; issues nothing."""

    verb = "step"

    def __init__(self, owner: WorkflowContext, command: _Command) -> None:
        super().__init__(owner)
        self.command = command

    def describe(self) -> str:
        return f"the rest of {self.command.describe()}"


class _Combination(_Awaitable):
    """Several commands awaited together; each part takes its own seq, in argument order."""

    def __init__(self, owner: WorkflowContext, awaitables: Sequence[Any]) -> None:
        super().__init__(owner)
        self.parts = _take_parts(owner, self.verb, awaitables)

    def describe(self) -> str:
        count = len(self.parts)
        return f"ctx.{self.verb}() of {count} command{'s' if count != 1 else ''}"


class _Gather(_Combination):
    """``ctx.gather``: every part's outcome, in argument order."""

    verb = "gather"

    def __await__(self) -> Generator[_Awaitable, Any, Any]:
        self._use("awaited")
        if not self.parts:  # nothing to wait for: no seq, no journal event
            return []
        return (yield self)


class _First(_Combination):
    """``ctx.first``: the index and outcome of the part that became final first."""

    verb = "first"

    def record(self, codec: Codec, seqs: Sequence[int], winner: int | None) -> _RaceRecord:
        """The command that journals (or, on replay, matches) the race's winner."""
        output = None if winner is None else codec.dumps(winner)
        return _RaceRecord(self.owner, codec.dumps([list(seqs), {}]), output)


class _RaceRecord(_Command):
    """The winner of a race, journaled right after its parts as a completed ``run`` event.

    Its input is ``[[seq of each part], {}]``, its output the winner's index. Replays
    take the winner from it rather than from the timestamps, which later outcomes
    journaled by other processes (other clocks) could reorder.
    """

    kind = Kind.RUN
    verb = "first"

    def __init__(self, owner: WorkflowContext, input: str, output: str | None) -> None:  # noqa: A002
        super().__init__(owner, RACE_RECORD, input)
        self.output = output

    def new_event(self, seq: int, now: datetime) -> Event:
        if self.output is None:
            raise RuntimeError("a race record is journaled only once its winner is known")
        return Event(
            seq,
            self.kind,
            self.name,
            self.input,
            State.COMPLETED,
            now,
            self.output,
            completed_at=now,
        )


def _take_parts(
    owner: WorkflowContext, verb: str, awaitables: Sequence[Any]
) -> tuple[_Command, ...]:
    """Check that ``awaitables`` are unused commands of ``owner``, and mark them used.

    Raises:
        TypeError: one is not a command of this ctx (a coroutine, a future, a command of
            another context, a nested ``ctx.gather``/``ctx.first``).
        RuntimeError: one was already awaited or passed to a combination, or is passed twice.
    """
    call = f"ctx.{verb}()"
    for position, item in enumerate(awaitables):
        problem = _not_a_part(owner, item)
        if problem is not None:
            _close_coroutines(awaitables)  # never awaited: close them so Python does not warn
            raise TypeError(f"{call} argument {position} {problem}")
    parts: tuple[_Command, ...] = tuple(awaitables)
    seen: set[int] = set()
    for position, part in enumerate(parts):
        if id(part) in seen:
            raise RuntimeError(
                f"{call} got {part.describe()} twice (again as argument {position}); "
                "pass a new command for each part"
            )
        seen.add(id(part))
        if part._used is not None:
            part._use(f"passed to {call}")  # raises: it says how it was used
    for part in parts:
        part._use(f"passed to {call}")
    return parts


def _not_a_part(owner: WorkflowContext, item: Any) -> str | None:
    """Why ``item`` cannot be a part of a combination of ``owner``, or ``None`` if it can."""
    if isinstance(item, _Command):
        if item.owner is not owner:
            return (
                f"is {item.describe()} created by another workflow context; a workflow may "
                "only await commands of its own ctx"
            )
        return None
    if isinstance(item, _Combination):
        return (
            f"is a {item.describe()}: combinations do not nest (yet); await it on its own "
            "or pass its commands directly"
        )
    if inspect.iscoroutine(item):
        return (
            f"is a coroutine ({getattr(item, '__qualname__', type(item).__name__)}), not a ctx "
            "command. Only ctx commands (ctx.step, ctx.sleep, ctx.run, ...) can be combined; "
            "awaiting helper `async def` functions together is not supported (yet): await "
            "the helper on its own, or pass the ctx commands it would issue"
        )
    return (
        f"is a {type(item).__name__!r}, not a ctx command. Workflow code may only await ctx "
        "commands (ctx.step, ctx.sleep, ctx.run, ...): run other async code inside a step"
    )


def _close_coroutines(items: Iterable[Any]) -> None:
    for item in items:
        if isinstance(item, Coroutine):
            item.close()
