"""Drive a workflow coroutine over its journal: journal in, :class:`Decision` out.

A pass re-runs the workflow from the start. Each ``ctx`` command the coroutine awaits
takes the next ``seq``; if the journal holds an event there, the command must match it
(same kind and name) and gets its journaled outcome; otherwise the command is new: it is
journaled (a local ``ctx.run`` is executed on the spot) and, once the workflow waits on
something not done yet, the pass stops. A pending timer whose fire time has come fires in
the pass (its completion goes to :attr:`Decision.fired`); one still in the future stops
the pass with :attr:`Decision.wake_at`. ``ctx.gather`` and ``ctx.first`` give each of
their commands the next seq in argument order and wait on all of them; a race journals
its winner as one more event (see :meth:`WorkflowContext.first`). Nothing here performs
I/O: the runtime commits the decision and sends its messages.
"""

from __future__ import annotations

import contextlib
import dataclasses
import reprlib
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from celery_durable.engine.awaitables import (
    _Awaitable,
    _Command,
    _Cursor,
    _First,
    _Gather,
    decode_fire_time,
)
from celery_durable.engine.commands import Decision, ScheduleStep
from celery_durable.engine.context import WorkflowContext
from celery_durable.engine.journal import Event, Failure, Instance, Kind, State, Status
from celery_durable.engine.serialization import Codec
from celery_durable.errors import NonDeterminismError, StepFailed

_FIX = (
    "Deploy code that replays this journal (or restore the previous code), then retry the instance."
)


def task_name(task: Any) -> str:
    """The journal name of a step: the task's ``name`` attribute, or ``task`` if a string.

    Raises:
        TypeError: ``task`` is neither a string nor an object with a string ``name``.
    """
    if isinstance(task, str):
        return task
    name = getattr(task, "name", None)
    if isinstance(name, str):
        return name
    raise TypeError(f"ctx.step needs a @durable.step task or a task name, got {task!r}")


def replay(
    workflow: Callable[..., Coroutine[Any, Any, Any]],
    instance: Instance,
    events: Sequence[Event],
    *,
    codec: Codec,
    now: datetime,
    resolve_step: Callable[[Any], str] = task_name,
) -> Decision:
    """Run one orchestrator pass of ``workflow`` over its journal.

    Every error of the workflow's code becomes part of the decision; only exceptions
    that are not :class:`Exception` (``KeyboardInterrupt``, ``SystemExit``) propagate.

    Args:
        workflow: the ``async def wf(ctx, *args, **kwargs)`` function.
        instance: the instance; its ``input`` is the encoded ``[args, kwargs]``.
        events: the journal, ordered by ``seq`` (0, 1, ... n-1).
        codec: the instance's codec, for every payload.
        now: the time of this pass (UTC): the ``scheduled_at`` of new events; timers
            whose fire time is at or before it fire.
        resolve_step: turns the ``task`` given to ``ctx.step`` into the step's name.

    Returns:
        RUNNING with the new events and the steps to send when the workflow waits (and
        ``wake_at`` when it waits on a timer); COMPLETED with the encoded result; FAILED
        with the workflow's exception; STUCK (and nothing new to commit) when the code
        does not match its journal or awaits something other than a ``ctx`` command.
        Every decision but STUCK carries the timers fired in the pass (``fired``).
    """
    return _Pass(workflow, instance, events, codec, now, resolve_step).run()


def _describe(event: Event) -> str:
    kind = getattr(event.kind, "value", event.kind)  # a store may hand back plain strings
    return f"{kind} {event.name!r}"


def _with_notes(failure: Failure, exc: BaseException) -> Failure:
    """``failure`` with the exception's notes (e.g. failed compensations) in its details."""
    details = failure.details or ""
    notes = getattr(exc, "__notes__", None) or []
    missing = [note for note in notes if isinstance(note, str) and note not in details]
    if not missing:
        return failure
    return dataclasses.replace(failure, details="\n\n".join([*filter(None, [details]), *missing]))


class _Stuck(Exception):
    """The pass cannot go on until the code (or the configuration) is fixed."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


@dataclass
class _Outcome:
    """What to resume the coroutine with: a value to send or an exception to throw."""

    value: Any = None
    error: BaseException | None = None


@dataclass
class _Part:
    """One command's journal event as this pass sees it."""

    event: Event
    outcome: _Outcome | None = None
    """Its outcome once final (or fired in this pass); ``None`` while pending."""
    fire_at: datetime | None = None
    """A timer's fire time, if the pass decoded it."""


class _Pass:
    def __init__(
        self,
        workflow: Callable[..., Coroutine[Any, Any, Any]],
        instance: Instance,
        events: Sequence[Event],
        codec: Codec,
        now: datetime,
        resolve_step: Callable[[Any], str],
    ) -> None:
        self.workflow = workflow
        self.instance = instance
        self.journal = events
        self.codec = codec
        self.now = now
        self.cursor = _Cursor(events, now)
        self.ctx = WorkflowContext(instance, self.cursor, codec=codec, resolve_step=resolve_step)
        self.new_events: list[Event] = []
        self.steps: list[ScheduleStep] = []
        self.fired: list[Event] = []
        self.timers: list[datetime] = []
        """Fire times of the pending timers the workflow waits on (several in a gather)."""
        self.label = f"workflow {instance.workflow!r} (id {instance.id!r})"

    def run(self) -> Decision:
        coro: Coroutine[Any, Any, Any] | None = None
        try:
            self._check_journal()
            args, kwargs = self._decode_input()
            try:
                started = self.workflow(self.ctx, *args, **kwargs)
            except Exception as exc:  # e.g. the input no longer fits the signature
                return self._failed(exc)
            if not isinstance(started, Coroutine):
                raise _Stuck(
                    Failure(
                        "InvalidWorkflow",
                        f"{self.label} is not an async def function: calling it returned "
                        f"{reprlib.repr(started)}, not a coroutine",
                    )
                )
            coro = started
            return self._drive(coro)
        except NonDeterminismError as exc:
            return Decision(Status.STUCK, failure=Failure("NonDeterminismError", str(exc)))
        except _Stuck as stuck:
            return Decision(Status.STUCK, failure=stuck.failure)
        finally:
            if coro is not None:
                self._discard(coro)

    def _drive(self, coro: Coroutine[Any, Any, Any]) -> Decision:
        outcome = _Outcome()
        while True:
            try:
                if outcome.error is not None:
                    yielded = coro.throw(outcome.error)
                else:
                    yielded = coro.send(outcome.value)
            except StopIteration as stop:
                return self._completed(stop.value)
            except Exception as exc:
                return self._failed(exc)
            resumed = self._resolve(self._command(yielded))
            if resumed is None:
                return self._decision(Status.RUNNING)
            outcome = resumed

    def _command(self, yielded: Any) -> _Awaitable:
        """The ctx command the coroutine yielded; anything else means it cannot be replayed."""
        if not isinstance(yielded, _Awaitable):
            raise _Stuck(
                Failure(
                    "InvalidAwait",
                    f"{self.label} awaited something that is not a ctx command (it yielded "
                    f"{reprlib.repr(yielded)}, as asyncio awaitables do). Workflow code may "
                    "only await ctx commands (ctx.step, ctx.run, ...): run other async code "
                    "inside a step.",
                )
            )
        if yielded.owner is not self.ctx:
            raise _Stuck(
                Failure(
                    "InvalidAwait",
                    f"{self.label} awaited {yielded.describe()} created by another workflow "
                    "context; a workflow may only await commands of its own ctx.",
                )
            )
        return yielded

    def _resolve(self, awaited: _Awaitable) -> _Outcome | None:
        """What the awaited command gives the workflow, or ``None`` if the workflow must wait."""
        if isinstance(awaited, _Gather):
            return self._gather(awaited)
        if isinstance(awaited, _First):
            return self._first(awaited)
        if not isinstance(awaited, _Command):
            raise TypeError(f"the engine cannot resolve {awaited.describe()}")
        part = self._settle(self._issue(awaited))
        if part.outcome is None:
            self._wait_on([part])
        return part.outcome

    def _gather(self, gather: _Gather) -> _Outcome | None:
        """All results in argument order once every part is final, or the first failure."""
        parts = [self._settle(self._issue(command)) for command in gather.parts]
        outcomes = [part.outcome for part in parts if part.outcome is not None]
        if len(outcomes) < len(parts):
            self._wait_on(parts)
            return None
        for outcome in outcomes:
            if outcome.error is not None:
                return outcome
        return _Outcome([outcome.value for outcome in outcomes])

    def _first(self, race: _First) -> _Outcome | None:
        """``(index, result)`` of the race's winner: journaled when decided, then replayed."""
        events = [self._issue(command) for command in race.parts]
        seqs = [event.seq for event in events]
        if self.cursor.in_journal:  # decided by an earlier pass, which journaled the winner
            index = self._recorded_winner(self._issue(race.record(self.codec, seqs, None)), seqs)
            outcome = self._settle(events[index]).outcome
            if outcome is None:
                raise _Stuck(
                    Failure(
                        "InvalidJournal",
                        f"the journal of {self.label} names seq {seqs[index]} the winner of "
                        "a ctx.first() race, but its outcome is not journaled",
                    )
                )
        else:
            parts = [self._settle(event) for event in events]
            finished = [
                (self._finished_at(part), index, part.outcome)
                for index, part in enumerate(parts)
                if part.outcome is not None
            ]
            if not finished:
                self._wait_on(parts)
                return None
            _, index, outcome = min(finished, key=lambda entry: entry[:2])
            self._issue(race.record(self.codec, seqs, index))
        return outcome if outcome.error is not None else _Outcome((index, outcome.value))

    def _recorded_winner(self, record: Event, seqs: list[int]) -> int:
        winner = None
        if record.state == State.COMPLETED and record.output is not None:
            winner = self._decode(record.output, f"the race record at seq {record.seq}")
        if isinstance(winner, int) and not isinstance(winner, bool) and 0 <= winner < len(seqs):
            return winner
        raise NonDeterminismError(
            f"{self.label} does not replay its journal: the ctx.first() race record at seq "
            f"{record.seq} names the winner {winner!r} but the code races {len(seqs)} "
            f"command(s) (seq {seqs[0]} to {seqs[-1]}). {_FIX}"
        )

    def _issue(self, command: _Command) -> Event:
        """Give ``command`` the next seq: its journal event, or a new one (journaled now)."""
        seq = self.cursor.seq
        if self.cursor.in_journal:
            event = self.journal[seq]
            if event.kind != command.kind or event.name != command.name:
                raise NonDeterminismError(
                    f"{self.label} does not replay its journal: at seq {seq} the journal "
                    f"holds {_describe(event)} but the code asked for "
                    f"{command.describe()}. {_FIX}"
                )
        else:
            event = command.new_event(seq, self.now)
            self.new_events.append(event)
            message = command.dispatch(seq)
            if message is not None:
                self.steps.append(message)
        self.cursor.seq += 1
        return event

    def _settle(self, event: Event) -> _Part:
        """Where ``event`` stands in this pass; a timer whose time has come fires now."""
        if event.state.is_final:
            return _Part(event, self._outcome_of(event))
        if event.kind != Kind.TIMER:
            return _Part(event)
        fire_at = self._fire_time(event)  # the journaled fire time governs, not today's code
        if fire_at > self.now:  # never early: a pass that comes too soon waits again
            return _Part(event, fire_at=fire_at)
        self.fired.append(
            dataclasses.replace(event, state=State.COMPLETED, completed_at=self.now, output=None)
        )
        return _Part(event, _Outcome(), fire_at)

    def _wait_on(self, parts: list[_Part]) -> None:
        """The workflow waits: the pending timers among ``parts`` set the wake-up time."""
        self.timers.extend(p.fire_at for p in parts if p.outcome is None and p.fire_at is not None)

    def _finished_at(self, part: _Part) -> datetime:
        """When a final part finished, for a race: a timer at its fire time."""
        if part.event.kind == Kind.TIMER:
            return part.fire_at or self._fire_time(part.event)
        return part.event.completed_at or part.event.scheduled_at

    def _outcome_of(self, event: Event) -> _Outcome:
        if event.state == State.FAILED:
            failure = event.failure or Failure("UnknownError", "the journal holds no details")
            return _Outcome(error=StepFailed(failure.type, failure.message, failure.details))
        if event.output is None:
            return _Outcome()
        return _Outcome(self._decode(event.output, f"the result of seq {event.seq}"))

    def _fire_time(self, event: Event) -> datetime:
        try:
            return decode_fire_time(self.codec, event.input)
        except Exception as exc:
            raise _Stuck(
                Failure(
                    "SerializationError",
                    f"cannot decode the fire time of the timer at seq {event.seq} of "
                    f"{self.label} with the {self.codec.name!r} serializer: {exc}",
                )
            ) from exc

    def _completed(self, result: Any) -> Decision:
        self._check_consumed(f"returned after {self.cursor.seq} commands")
        try:
            output = self.codec.dumps(result)
        except Exception as exc:
            failure = Failure(
                "SerializationError",
                f"{self.label} returned a value of type {type(result).__name__!r} that the "
                f"{self.codec.name!r} serializer cannot encode: {exc}",
            )
            return self._decision(Status.FAILED, failure=failure)
        return self._decision(Status.COMPLETED, output=output)

    def _failed(self, exc: Exception) -> Decision:
        self._check_consumed(f"raised {type(exc).__name__} after {self.cursor.seq} commands")
        if isinstance(exc, StepFailed):
            # A step's failure the workflow let through: the instance fails with the
            # step's own type ("TransferFailed"), as the seed's ProcessException.Type did.
            failure = Failure(exc.type, exc.message, exc.details)
        else:
            failure = Failure.from_exception(exc)
        return self._decision(Status.FAILED, failure=_with_notes(failure, exc))

    def _decision(
        self, status: Status, *, output: str | None = None, failure: Failure | None = None
    ) -> Decision:
        # The commands run in this pass (ctx.run, timers fired) are journaled with the end.
        waiting = status is Status.RUNNING and self.timers
        return Decision(
            status,
            self.new_events,
            self.steps,
            output=output,
            failure=failure,
            fired=self.fired,
            wake_at=min(self.timers) if waiting else None,
            custom_status=self.cursor.custom_status,
        )

    def _check_consumed(self, ended: str) -> None:
        """A workflow that ends before the end of its journal no longer matches it."""
        seq = self.cursor.seq
        if seq < len(self.journal):
            event = self.journal[seq]
            raise NonDeterminismError(
                f"{self.label} {ended} but its journal holds {len(self.journal)} events: "
                f"at seq {seq} the journal holds {_describe(event)} that the "
                f"code no longer asks for. {_FIX}"
            )

    def _check_journal(self) -> None:
        for position, event in enumerate(self.journal):
            if event.seq != position:
                raise _Stuck(
                    Failure(
                        "InvalidJournal",
                        f"the journal of {self.label} is not contiguous: position {position} "
                        f"holds seq {event.seq}",
                    )
                )

    def _decode_input(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        try:
            args, kwargs = self._decode(self.instance.input, "the input")
            return tuple(args), dict(kwargs)
        except (TypeError, ValueError) as exc:
            raise _Stuck(
                Failure(
                    "SerializationError",
                    f"the input of {self.label} is not an encoded [args, kwargs] pair: {exc}",
                )
            ) from exc

    def _decode(self, data: str, what: str) -> Any:
        # Undecodable journal data is a deployment problem (a codec missing or changed),
        # not the workflow's failure: park the instance until it is fixed.
        try:
            return self.codec.loads(data)
        except Exception as exc:
            raise _Stuck(
                Failure(
                    "SerializationError",
                    f"cannot decode {what} of {self.label} with the {self.codec.name!r} "
                    f"serializer: {exc}",
                )
            ) from exc

    def _discard(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Close the coroutine, whose ``finally`` blocks then run (quietly, see is_replaying).

        A block that awaits a command makes ``close()`` raise RuntimeError: the command is
        never answered, so nothing of it is journaled; the coroutine is thrown away anyway.
        """
        self.cursor.discarding = True
        with contextlib.suppress(Exception):
            coro.close()
