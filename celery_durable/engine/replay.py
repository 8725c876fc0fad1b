"""Drive a workflow coroutine over its journal: journal in, :class:`Decision` out.

A pass re-runs the workflow from the start. Each ``ctx`` command the coroutine awaits
takes the next ``seq``; if the journal holds an event there, the command must match it
(same kind and name) and gets its journaled outcome; otherwise the command is new: it is
journaled (a local ``ctx.run`` is executed on the spot) and, once the workflow waits on
something not done yet, the pass stops. A pending timer whose fire time has come fires in
the pass (its completion goes to :attr:`Decision.fired`); one still in the future stops
the pass with :attr:`Decision.wake_at`. Nothing here performs I/O: the runtime commits
the decision and sends its messages.
"""

from __future__ import annotations

import contextlib
import dataclasses
import reprlib
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from celery_durable.engine.commands import Decision, ScheduleStep
from celery_durable.engine.context import WorkflowContext, _Command, _Cursor, decode_fire_time
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

    def _command(self, yielded: Any) -> _Command:
        """The ctx command the coroutine yielded; anything else means it cannot be replayed."""
        if not isinstance(yielded, _Command):
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

    def _resolve(self, command: _Command) -> _Outcome | None:
        """Give ``command`` the next seq; its outcome, or ``None`` if the workflow must wait.

        A command made of several (such as a gather) would resolve each part here and
        wait if any part has no outcome yet.
        """
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
        if not event.state.is_final:
            return self._pending(event)
        if event.state == State.FAILED:
            failure = event.failure or Failure("UnknownError", "the journal holds no details")
            return _Outcome(error=StepFailed(failure.type, failure.message, failure.details))
        if event.output is None:
            return _Outcome()
        return _Outcome(self._decode(event.output, f"the result of seq {seq}"))

    def _pending(self, event: Event) -> _Outcome | None:
        """A timer whose time has come fires now (outcome ``None``); anything else waits."""
        if event.kind != Kind.TIMER:
            return None
        try:  # the journaled fire time governs, whatever the code computes today
            fire_at = decode_fire_time(self.codec, event.input)
        except Exception as exc:
            raise _Stuck(
                Failure(
                    "SerializationError",
                    f"cannot decode the fire time of the timer at seq {event.seq} of "
                    f"{self.label} with the {self.codec.name!r} serializer: {exc}",
                )
            ) from exc
        if fire_at > self.now:  # never early: a pass that comes too soon waits again
            self.timers.append(fire_at)
            return None
        self.fired.append(
            dataclasses.replace(event, state=State.COMPLETED, completed_at=self.now, output=None)
        )
        return _Outcome()

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
        return self._decision(Status.FAILED, failure=failure)

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
