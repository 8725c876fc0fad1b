"""Drive a workflow coroutine over its journal: journal in, :class:`Decision` out.

A pass re-runs the workflow from the start. Each ``ctx`` command the coroutine awaits
takes the next ``seq``; if the journal holds an event there, the command must match it
(same kind and name; a step or child also the same arguments) and gets its journaled
outcome; otherwise the command is new: it is journaled (a local ``ctx.run`` is executed
on the spot) and, once the workflow waits on something not done yet, the pass stops.
Pending events may settle in the pass (:mod:`celery_durable.engine.settling`): a timer
whose fire time has come fires (its completion goes to :attr:`Decision.fired`); one still
in the future stops the pass with :attr:`Decision.wake_at`. A pending signal wait takes
the oldest signal of its name in the inbox that no earlier wait took in the pass
(:attr:`Decision.consumed`), or times out once its deadline has passed, or waits (its
deadline, if any, counts as a timer's fire time). ``ctx.gather`` and ``ctx.first`` give
each of their commands the next seq in argument order and wait on all of them; a race
journals its winner as one more event (see :meth:`WorkflowContext.first`). A pending
child workflow resolves with the child's outcome once the runtime hands the ended child in.

Cancellation: when a cancel is requested and the journal holds no CANCEL event yet, the
pass journals one at the frontier and throws
:class:`~celery_durable.errors.WorkflowCancelled` into the workflow there: before it
issues any new command (so nothing more is sent), or where it blocks on commands already
journaled. The workflow goes on (compensations may run) and ends CANCELLED if it lets the
exception out; one that ends without issuing a new command is not interrupted. A replay
throws it again at the same place.
``ctx.continue_as_new()`` ends the pass with a restart (:attr:`Decision.restart_input`).
Nothing here performs I/O: the runtime commits the decision and sends its messages.
"""

from __future__ import annotations

import contextlib
import dataclasses
import reprlib
from collections.abc import Callable, Coroutine, Mapping, Sequence
from datetime import datetime
from types import MappingProxyType
from typing import Any

from celery_durable.engine.awaitables import (
    CANCEL_BEFORE_COMMANDS as CANCEL_BEFORE,
)
from celery_durable.engine.awaitables import (
    CANCEL_WHILE_BLOCKED,
    _Awaitable,
    _CancelCommand,
    _ChildCommand,
    _Combination,
    _Command,
    _ContinueAsNew,
    _Cursor,
    _First,
    _Gather,
    _Rejoin,
    _StepCommand,
)
from celery_durable.engine.commands import Decision, ScheduleStep, StartChild
from celery_durable.engine.context import WorkflowContext
from celery_durable.engine.journal import Event, Failure, Instance, Kind, Signal, State, Status
from celery_durable.engine.patches import skip_markers
from celery_durable.engine.serialization import Codec
from celery_durable.engine.settling import Outcome, Part, Settlement, Stuck
from celery_durable.engine.suspension import suspended_at
from celery_durable.errors import NonDeterminismError, StepFailed, WorkflowCancelled

_NO_CHILDREN: Mapping[str, Instance] = MappingProxyType({})

_FIX = (
    "Deploy code that replays this journal (or restore the previous code, or branch with "
    "ctx.patched()), then retry the instance."
)


class Frontier(Exception):
    """A replay check reached the first command its journal does not hold (``seq``)."""

    def __init__(self, seq: int) -> None:
        super().__init__(seq)
        self.seq = seq


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
    signals: Sequence[Signal] = (),
    children: Mapping[str, Instance] = _NO_CHILDREN,
    cancel_requested: bool = False,
    failure_exceptions: tuple[type[BaseException], ...] = (),
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
        signals: the instance's inbox: the signals sent to it and not consumed yet,
            oldest first. The waits this pass resolves with them are listed in the
            decision's ``consumed``; the others stay for later passes.
        children: the child instances of the journal's pending CHILD events, by id (a
            child missing here counts as still running). An ended child resolves its
            event: COMPLETED gives its output; FAILED or CANCELLED fails the event with
            the child's failure (the workflow gets ``StepFailed`` of that type).
        cancel_requested: ``instance.cancel_requested``. If the journal holds no CANCEL
            event yet, the pass journals one where the workflow blocks and throws
            ``WorkflowCancelled`` into it there (a workflow that never blocks in the pass
            is not interrupted).
        failure_exceptions: exception types that fail the workflow when they escape it
            (``@durable.workflow(failure_exceptions=...)``), besides the journaled
            outcomes (``StepFailed``, ``SignalTimeout``). Any other exception is a bug:
            the instance parks as STUCK with its traceback and nothing of the pass is
            journaled, so a retry with fixed code goes on from the journal.

    Returns:
        RUNNING with the new events and the steps to send when the workflow waits (and
        ``wake_at`` when it waits on a timer or a signal's deadline); COMPLETED with the
        encoded result; FAILED with the workflow's exception; STUCK (and nothing new to
        commit) when the code does not match its journal or awaits something other than a
        ``ctx`` command; CANCELLED (failure type ``WorkflowCancelled``) when a
        cancellation propagates out of the workflow. Every decision but STUCK and a
        restart carries the timers fired, the journaled signal waits and children
        resolved in the pass (``fired``), the children to start (``children``) and the
        signals consumed (``consumed``). ``ctx.continue_as_new()`` gives RUNNING with
        ``restart_input`` and nothing else but ``consumed`` (the signals the ending run
        took are not delivered again).
    """
    return _Pass(
        workflow,
        instance,
        events,
        codec,
        now,
        resolve_step,
        signals,
        children,
        cancel_requested,
        failure_exceptions,
    ).run()


def _describe(event: Event) -> str:
    kind = getattr(event.kind, "value", event.kind)  # a store may hand back plain strings
    return f"{kind} {event.name!r}"


def _call(encoded: Any) -> str:
    """Decoded ``[args, kwargs]`` as a call's argument list, for messages."""
    try:
        args, kwargs = encoded
        parts = [repr(arg) for arg in args] + [f"{key}={value!r}" for key, value in kwargs.items()]
    except (TypeError, ValueError, AttributeError):
        return repr(encoded)
    return f"({', '.join(parts)})"


def _with_notes(failure: Failure, exc: BaseException) -> Failure:
    """``failure`` with the exception's notes (e.g. failed compensations) in its details."""
    details = failure.details or ""
    notes = getattr(exc, "__notes__", None) or []
    missing = [note for note in notes if isinstance(note, str) and note not in details]
    if not missing:
        return failure
    return dataclasses.replace(failure, details="\n\n".join([*filter(None, [details]), *missing]))


class _Pass:
    def __init__(
        self,
        workflow: Callable[..., Coroutine[Any, Any, Any]],
        instance: Instance,
        events: Sequence[Event],
        codec: Codec,
        now: datetime,
        resolve_step: Callable[[Any], str],
        signals: Sequence[Signal],
        children: Mapping[str, Instance],
        cancel_requested: bool,
        failure_exceptions: tuple[type[BaseException], ...],
    ) -> None:
        self.workflow = workflow
        self.instance = instance
        self.journal = events
        self.codec = codec
        self.now = now
        self.cursor = _Cursor(events, now)
        self.ctx = WorkflowContext(
            instance,
            self.cursor,
            codec=codec,
            resolve_step=resolve_step,
            failure_exceptions=failure_exceptions,
        )
        self.awaited_children: list[StartChild] = []
        """StartChild of every journaled, pending child the workflow awaits in this pass."""
        self.new_events: list[Event] = []
        self.cursor.new_events = self.new_events
        self.steps: list[ScheduleStep] = []
        self.started: list[StartChild] = []
        self.cancel_pending = cancel_requested and not any(
            event.kind == Kind.CANCEL for event in events
        )
        """A cancellation to throw where the workflow blocks, not journaled yet."""
        self.timers: list[datetime] = []
        """Fire times of the pending timers the workflow waits on (several in a gather)."""
        self.label = f"workflow {instance.workflow!r} (id {instance.id!r})"
        self.settlement = Settlement(
            instance, events, self.new_events, codec, now, signals, children, self.label
        )
        """Timers fired, signal waits and children resolved in the pass."""
        self.waiting_on: _Awaitable | None = None
        """What the workflow awaits when the pass leaves it waiting."""
        self.coro: Coroutine[Any, Any, Any] | None = None
        """The suspended coroutine, kept by ``run(keep=True)`` for ``engine.live.LiveRun``."""
        self.waiting_at: str | None = None
        """Where the workflow's code is suspended (:func:`suspended_at`), once it waits."""
        self.mismatch: NonDeterminismError | None = None
        """The journal mismatch that parked the pass, if one did."""

    def run(self, keep: bool = False) -> Decision:
        """The pass over the whole journal. With ``keep``, a workflow left waiting stays
        suspended in :attr:`coro` (``engine.live.LiveRun`` resumes it); otherwise it is closed."""
        coro: Coroutine[Any, Any, Any] | None = None
        try:
            self._check_journal()
            args, kwargs = self._decode_input()
            try:
                started = self.workflow(self.ctx, *args, **kwargs)
            except Exception as exc:  # e.g. the input no longer fits the signature
                raise Stuck(Failure.from_exception(exc, with_traceback=False)) from exc
            if not isinstance(started, Coroutine):
                raise Stuck(
                    Failure(
                        "InvalidWorkflow",
                        f"{self.label} is not an async def function: calling it returned "
                        f"{reprlib.repr(started)}, not a coroutine",
                    )
                )
            coro = started
            decision = self._drive(coro, Outcome())
            if keep and self.waiting_on is not None:
                self.coro, coro = coro, None
            return decision
        except NonDeterminismError as exc:
            self.mismatch = exc
            return Decision(Status.STUCK, failure=Failure("NonDeterminismError", str(exc)))
        except Stuck as stuck:
            return Decision(Status.STUCK, failure=stuck.failure)
        except Frontier:
            return Decision(Status.RUNNING)  # a replay check reached new ground
        finally:
            if coro is not None:
                self._discard(coro)

    def _drive(self, coro: Coroutine[Any, Any, Any], outcome: Outcome) -> Decision:
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
            except WorkflowCancelled as exc:
                return self._cancelled(exc)
            except _ContinueAsNew as restart:
                return self._restart(restart.input)
            awaited = self._command(yielded)
            resumed = self._resolve(awaited)
            if resumed is None:
                self.waiting_on = awaited
                self.waiting_at = suspended_at(coro)
                return self._decision(Status.RUNNING)
            outcome = resumed

    def _command(self, yielded: Any) -> _Awaitable:
        """The ctx command the coroutine yielded; anything else means it cannot be replayed."""
        if not isinstance(yielded, _Awaitable):
            raise Stuck(
                Failure(
                    "InvalidAwait",
                    f"{self.label} awaited something that is not a ctx command (it yielded "
                    f"{reprlib.repr(yielded)}, as asyncio awaitables do). Workflow code may "
                    "only await ctx commands (ctx.step, ctx.run, ...): run other async code "
                    "inside a step.",
                )
            )
        if yielded.owner is not self.ctx:
            raise Stuck(
                Failure(
                    "InvalidAwait",
                    f"{self.label} awaited {yielded.describe()} created by another workflow "
                    "context; a workflow may only await commands of its own ctx.",
                )
            )
        return yielded

    def _resolve(self, awaited: _Awaitable) -> Outcome | None:
        """What the awaited command gives the workflow, or ``None`` if the workflow must wait.

        A pending cancellation is thrown before the workflow issues any new command (at
        the end of its journal), so nothing more is sent once a cancel is requested; and
        where the workflow must wait on commands already journaled. Either way a CANCEL
        event is journaled at that seq, and a replay throws the cancellation again there:
        before this await's commands if the journal holds the CANCEL event at their
        place, or after them, whatever became of them since.
        """
        if not isinstance(awaited, _Rejoin):
            here = self.journal[self.cursor.seq] if self.cursor.in_journal else None
            if here is not None and here.kind == Kind.CANCEL and here.name == CANCEL_BEFORE:
                return self._cancel(CANCEL_BEFORE)
            if here is None and self.cancel_pending:
                return self._cancel(CANCEL_BEFORE)
        if isinstance(awaited, _Combination):
            events = [self._issue(command) for command in awaited.parts]
        elif isinstance(awaited, _Command):
            events = [self._issue(awaited)]
        elif isinstance(awaited, _Rejoin):
            events = [self._issued(awaited.command)]
        else:
            raise TypeError(f"the engine cannot resolve {awaited.describe()}")
        return self._settle_awaited(awaited, events)

    def _settle_awaited(self, awaited: _Awaitable, events: list[Event]) -> Outcome | None:
        """What the awaited commands, issued at ``events``, give the workflow now."""
        if self.cursor.in_journal:
            after = self.journal[self.cursor.seq]
            if after.kind == Kind.CANCEL and after.name != CANCEL_BEFORE:
                return self._cancel()  # thrown here, once these commands were issued
        waits = len(self.timers)
        if isinstance(awaited, _Gather):
            outcome = self._gather(events)
        elif isinstance(awaited, _First):
            outcome = self._first(awaited, events)
        else:
            part = self.settlement.keep(self.settlement.settle(events[0]))
            if part.outcome is None:
                self._wait_on([part])
            outcome = part.outcome
        if outcome is None and self.cancel_pending and not self.cursor.in_journal:
            del self.timers[waits:]  # the workflow no longer waits on them
            return self._cancel()
        return outcome

    def _cancel(self, name: str = CANCEL_WHILE_BLOCKED) -> Outcome:
        """Journal (or replay) the CANCEL event at the next seq; throw the cancellation."""
        self._issue(_CancelCommand(self.ctx, name))
        self.cancel_pending = False
        return Outcome(error=WorkflowCancelled())

    def _gather(self, events: list[Event]) -> Outcome | None:
        """All results in argument order once every part is final, or the first failure."""
        parts = [self.settlement.keep(self.settlement.settle(event)) for event in events]
        outcomes = [part.outcome for part in parts if part.outcome is not None]
        if len(outcomes) < len(parts):
            self._wait_on(parts)
            return None
        for outcome in outcomes:
            if outcome.error is not None:
                return outcome
        return Outcome([outcome.value for outcome in outcomes])

    def _first(self, race: _First, events: list[Event]) -> Outcome | None:
        """``(index, result)`` of the race's winner: journaled when decided, then replayed."""
        seqs = [event.seq for event in events]
        if self.cursor.in_journal:  # decided by an earlier pass, which journaled the winner
            index = self._recorded_winner(self._issue(race.record(self.codec, seqs, None)), seqs)
            # The winner's outcome was journaled with the record; a signal wait that is
            # still pending here must not take a signal (nothing would have journaled it).
            outcome = self.settlement.keep(
                self.settlement.settle(events[index], resolve_signal=False)
            ).outcome
            if outcome is None:
                raise Stuck(
                    Failure(
                        "InvalidJournal",
                        f"the journal of {self.label} names seq {seqs[index]} the winner of "
                        "a ctx.first() race, but its outcome is not journaled",
                    )
                )
        else:
            parts = [self.settlement.settle(event) for event in events]
            finished = [
                (self.settlement.finished_at(part), index, part.outcome)
                for index, part in enumerate(parts)
                if part.outcome is not None
            ]
            if not finished:
                self._wait_on(parts)
                return None
            _, index, outcome = min(finished, key=lambda entry: entry[:2])
            for position, part in enumerate(parts):
                if position == index or part.event.kind != Kind.SIGNAL:
                    self.settlement.keep(part)  # a timer that came due fires, winner or not
                else:
                    self.settlement.release(part)  # a losing wait takes nothing, now or later
            self._issue(race.record(self.codec, seqs, index))
        return outcome if outcome.error is not None else Outcome((index, outcome.value))

    def _recorded_winner(self, record: Event, seqs: list[int]) -> int:
        winner = None
        if record.state == State.COMPLETED and record.output is not None:
            winner = self.settlement.decode(record.output, f"the race record at seq {record.seq}")
        if isinstance(winner, int) and not isinstance(winner, bool) and 0 <= winner < len(seqs):
            return winner
        raise NonDeterminismError(
            f"{self.label} does not replay its journal: the ctx.first() race record at seq "
            f"{record.seq} names the winner {winner!r} but the code races {len(seqs)} "
            f"command(s) (seq {seqs[0]} to {seqs[-1]}). {_FIX}",
            seq=record.seq,
            journaled=f"a ctx.first() race won by part {winner!r}",
            asked=f"a ctx.first() race of {len(seqs)} command(s)",
        )

    def _issue(self, command: _Command) -> Event:
        """Give ``command`` the next seq: its journal event, or a new one (journaled now).

        Patch markers the code did not ask for are passed over first: they have no
        effect of their own, and a retired ``ctx.patched``/``ctx.deprecate_patch`` call
        leaves them in the journals that recorded them."""
        skip_markers(self.cursor)
        seq = self.cursor.seq
        if self.cursor.in_journal:
            event = self.journal[seq]
            if event.kind != command.kind or event.name != command.name:
                raise NonDeterminismError(
                    f"{self.label} does not replay its journal: at seq {seq} the journal "
                    f"holds {_describe(event)} but the code asked for "
                    f"{command.describe()}. {_FIX}",
                    seq=seq,
                    journaled=_describe(event),
                    asked=command.describe(),
                )
            self._check_arguments(command, event, seq)
            if isinstance(command, _ChildCommand) and not event.state.is_final:
                message = command.dispatch(seq)
                assert isinstance(message, StartChild)
                self.awaited_children.append(message)
        else:
            if self.cursor.checking:
                raise Frontier(seq)
            event = command.new_event(seq, self.now)
            self.new_events.append(event)
            message = command.dispatch(seq)
            if isinstance(message, StartChild):
                self.started.append(message)
            elif message is not None:
                self.steps.append(message)
        command.seq = seq
        self.cursor.seq += 1
        return event

    def _check_arguments(self, command: _Command, event: Event, seq: int) -> None:
        """A step or child must be called with the arguments its journal record holds."""
        if isinstance(command, _StepCommand):
            expected = command.input
        elif isinstance(command, _ChildCommand):
            expected = command.journal_input(seq)
        else:
            return
        if expected == event.input:
            return
        journaled = (
            self.settlement.decode(event.input, f"the arguments at seq {seq}")
            if event.input
            else None
        )
        asked = self.settlement.decode(expected, f"the arguments asked for at seq {seq}")
        if journaled == asked:
            return  # encoded differently (e.g. another serializer version), same values
        raise NonDeterminismError(
            f"{self.label} does not replay its journal: at seq {seq} the journal holds "
            f"{_describe(event)} called with {_call(journaled)} but the code calls it with "
            f"{_call(asked)}. Values that change between passes (the clock, random numbers) "
            f"must come from ctx.now(), ctx.uuid4() or ctx.run(...). {_FIX}",
            seq=seq,
            journaled=f"{_describe(event)} called with {_call(journaled)}",
            asked=f"{_describe(event)} called with {_call(asked)}",
        )

    def _issued(self, command: _Command) -> Event:
        """The event ``command`` got when it was issued earlier in this pass."""
        assert command.seq is not None
        if command.seq < len(self.journal):
            return self.journal[command.seq]
        return next(event for event in self.new_events if event.seq == command.seq)

    def _wait_on(self, parts: list[Part]) -> None:
        """The workflow waits: the pending timers among ``parts`` set the wake-up time."""
        self.timers.extend(p.fire_at for p in parts if p.outcome is None and p.fire_at is not None)

    def _completed(self, result: Any) -> Decision:
        self._check_consumed(f"returned after {self.cursor.seq} commands")
        try:
            output = self.codec.dumps(result)
        except Exception as exc:
            raise Stuck(
                Failure(
                    "SerializationError",
                    f"{self.label} returned a value of type {type(result).__name__!r} that "
                    f"the {self.codec.name!r} serializer cannot encode: {exc}; return plain "
                    "data, then retry the instance",
                )
            ) from exc
        return self._decision(Status.COMPLETED, output=output)

    def _failed(self, exc: Exception) -> Decision:
        self._check_consumed(f"raised {type(exc).__name__} after {self.cursor.seq} commands")
        if not self.ctx._fails_workflow(exc):
            # A bug, not a journaled outcome: park, journal nothing of this pass.
            raise Stuck(_with_notes(Failure.from_exception(exc), exc))
        if isinstance(exc, StepFailed):
            # A step's failure the workflow let through: the instance fails with the
            # step's own type ("TransferFailed"), as the seed's ProcessException.Type did.
            failure = Failure(exc.type, exc.message, exc.details)
        else:
            failure = Failure.from_exception(exc)
        return self._decision(Status.FAILED, failure=_with_notes(failure, exc))

    def _cancelled(self, exc: WorkflowCancelled) -> Decision:
        self._check_consumed(f"was cancelled after {self.cursor.seq} commands")
        failure = _with_notes(Failure("WorkflowCancelled", "cancelled"), exc)
        return self._decision(Status.CANCELLED, failure=failure)

    def _restart(self, restart_input: str) -> Decision:
        # The new run starts over an empty journal: nothing of this pass is journaled,
        # except that the signals it took are consumed (so the new run does not get them).
        self._check_consumed(f"continued as new after {self.cursor.seq} commands")
        if self.cancel_pending:
            # A cancel requested while this run ended without a new command to throw it
            # at: it applies at the run boundary, never silently dropped with the run.
            failure = Failure("WorkflowCancelled", "cancelled as its run continued as new")
            return self._decision(Status.CANCELLED, failure=failure)
        return Decision(
            Status.RUNNING, restart_input=restart_input, consumed=self.settlement.consumed
        )

    def _decision(
        self, status: Status, *, output: str | None = None, failure: Failure | None = None
    ) -> Decision:
        # The commands run in this pass (ctx.run, timers fired, signal waits resolved) are
        # journaled with the end.
        waiting = status is Status.RUNNING and self.timers
        return Decision(
            status,
            self.new_events,
            self.steps,
            output=output,
            failure=failure,
            fired=self.settlement.fired,
            wake_at=min(self.timers) if waiting else None,
            waiting_at=self.waiting_at if status is Status.RUNNING else None,
            consumed=self.settlement.consumed,
            custom_status=self.cursor.custom_status,
            children=self.started,
            awaited_children=self.awaited_children,
        )

    def _check_consumed(self, ended: str) -> None:
        """A workflow that ends before the end of its journal no longer matches it."""
        skip_markers(self.cursor)
        seq = self.cursor.seq
        if seq < len(self.journal):
            event = self.journal[seq]
            raise NonDeterminismError(
                f"{self.label} {ended} but its journal holds {len(self.journal)} events: "
                f"at seq {seq} the journal holds {_describe(event)} that the "
                f"code no longer asks for. {_FIX}",
                seq=seq,
                journaled=_describe(event),
                asked=None,
            )

    def _check_journal(self) -> None:
        for position, event in enumerate(self.journal):
            if event.seq != position:
                raise Stuck(
                    Failure(
                        "InvalidJournal",
                        f"the journal of {self.label} is not contiguous: position {position} "
                        f"holds seq {event.seq}",
                    )
                )

    def _decode_input(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        try:
            args, kwargs = self.settlement.decode(self.instance.input, "the input")
            return tuple(args), dict(kwargs)
        except (TypeError, ValueError) as exc:
            raise Stuck(
                Failure(
                    "SerializationError",
                    f"the input of {self.label} is not an encoded [args, kwargs] pair: {exc}",
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
