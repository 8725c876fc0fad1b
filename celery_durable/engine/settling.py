"""Where each journal event a replay pass reaches stands: its outcome, or still pending.

A final event gives its journaled outcome. A pending one may settle in the pass: a timer
whose fire time has come fires; a signal wait takes the oldest signal of its name in the
inbox that no earlier wait took, or times out once its deadline has passed; a child
workflow resolves with the outcome of the ended child the runtime handed in (or fails
with ``WorkflowIdConflict`` if that instance is not the parent's own). What settles is
journaled only once the driver (:mod:`celery_durable.engine.replay`) keeps it: the losing
signal wait of a race takes nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from celery_durable.engine.awaitables import decode_child_id, decode_deadline, decode_fire_time
from celery_durable.engine.children import child_outcome, foreign_owner
from celery_durable.engine.journal import Event, Failure, Instance, Kind, Signal, State
from celery_durable.engine.serialization import Codec
from celery_durable.errors import SignalTimeout, StepFailed

T = TypeVar("T")


class Stuck(Exception):
    """The pass cannot go on until the code (or the configuration) is fixed: the instance
    parks as STUCK with ``failure`` and nothing of the pass is journaled."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


@dataclass
class Outcome:
    """What to resume the coroutine with: a value to send or an exception to throw."""

    value: Any = None
    error: BaseException | None = None


@dataclass
class Part:
    """One command's journal event as this pass sees it."""

    event: Event
    outcome: Outcome | None = None
    """Its outcome once final (or fired in this pass); ``None`` while pending."""
    fire_at: datetime | None = None
    """A timer's fire time, or a signal wait's deadline, if the pass decoded it."""
    resolved: Event | None = None
    """A timer fired or a signal wait resolved in this pass: the outcome to journal once
    the part is kept (:meth:`Settlement.keep`); a losing signal wait of a race is never
    kept."""
    signal: Signal | None = None
    """The inbox signal it takes, if resolved with one."""
    child: Instance | None = None
    """The ended child instance that resolved it, for a child workflow."""


class Settlement:
    """The events one pass settles, and what of it is journaled.

    Args:
        instance: the instance replayed (the parent of its children).
        journal: the journal the pass started from.
        new_events: the events the pass issues, appended to by the driver; an event
            issued and settled in the same pass is replaced there by its outcome.
        codec: the instance's codec.
        now: the time of the pass.
        signals: the instance's inbox, oldest first.
        children: the child instances of pending CHILD events, by id.
        label: how messages name the instance.
    """

    def __init__(
        self,
        instance: Instance,
        journal: Sequence[Event],
        new_events: list[Event],
        codec: Codec,
        now: datetime,
        signals: Sequence[Signal],
        children: Mapping[str, Instance],
        label: str,
    ) -> None:
        self.instance = instance
        self.journal = journal
        self.new_events = new_events
        self.codec = codec
        self.now = now
        self.inbox = signals
        self.children = children
        self.label = label
        self.fired: list[Event] = []
        """Journal events settled and kept in this pass (:attr:`Decision.fired`)."""
        self.taken: set[int] = set()
        """Ids of the inbox signals resolved waits took in this pass."""
        self.consumed: list[tuple[int, int]] = []
        """``(signal id, seq)`` of the signals kept waits took (:attr:`Decision.consumed`)."""

    def settle(self, event: Event, *, resolve_signal: bool = True) -> Part:
        """Where ``event`` stands in this pass.

        A timer whose time has come fires now; a pending signal wait takes a signal from
        the inbox or times out (unless ``resolve_signal`` is false). Either outcome is
        only journaled once the part is kept (:meth:`keep`).
        """
        if event.state.is_final:
            return Part(event, self.outcome_of(event))
        if event.kind == Kind.SIGNAL:
            return self._settle_signal(event) if resolve_signal else Part(event)
        if event.kind == Kind.CHILD:
            return self._settle_child(event)
        if event.kind != Kind.TIMER:
            return Part(event)
        fire_at = self.fire_time(event)  # the journaled fire time governs, not today's code
        if fire_at > self.now:  # never early: a pass that comes too soon waits again
            return Part(event, fire_at=fire_at)
        fired = dataclasses.replace(
            event, state=State.COMPLETED, completed_at=self.now, output=None
        )
        return Part(event, Outcome(), fire_at, resolved=fired)

    def _settle_signal(self, event: Event) -> Part:
        """A pending wait: the oldest signal of its name not taken yet, or its timeout."""
        deadline = self._deadline(event)
        for signal in self.inbox:
            if signal.name == event.name and signal.id not in self.taken:
                self.taken.add(signal.id)
                received = dataclasses.replace(
                    event,
                    state=State.COMPLETED,
                    output=signal.payload,  # encoded by the sender with the instance's codec
                    failure=None,
                    completed_at=self.now,
                )
                outcome = self.outcome_of(received)
                return Part(event, outcome, deadline, resolved=received, signal=signal)
        if deadline is None or deadline > self.now:  # never early, as timers
            return Part(event, fire_at=deadline)
        timeout = deadline - event.scheduled_at
        failure = Failure("SignalTimeout", f"no signal {event.name!r} within {timeout}")
        timed_out = dataclasses.replace(
            event, state=State.FAILED, output=None, failure=failure, completed_at=self.now
        )
        return Part(event, self.outcome_of(timed_out), deadline, resolved=timed_out)

    def _settle_child(self, event: Event) -> Part:
        """A pending child: its outcome once the child has ended, else still pending."""
        child_id = self._event_input(event, decode_child_id, "the child id of the child workflow")
        child = self.children.get(child_id)
        if child is not None:
            owner = foreign_owner(self.instance.id, event, child, self.decode)
            if owner is not None:
                failure = Failure(
                    "WorkflowIdConflict",
                    f"child workflow id {child_id!r} already belongs to {owner}; pass "
                    "ctx.child(..., workflow_id=...) an id of its own",
                )
                conflict = dataclasses.replace(
                    event, state=State.FAILED, output=None, failure=failure, completed_at=self.now
                )
                return Part(event, self.outcome_of(conflict), resolved=conflict)
        ended = child_outcome(event, child, self.now)
        if ended is None:
            return Part(event)
        return Part(event, self.outcome_of(ended), resolved=ended, child=child)

    def keep(self, part: Part) -> Part:
        """Journal what the pass resolved for ``part`` (a timer fired, a signal wait).

        An event of the journal goes to :attr:`fired`; one issued in this pass is
        replaced, in the new events, by its outcome.
        """
        resolved = part.resolved
        if resolved is None:
            return part
        part.resolved = None  # kept once
        first_new = len(self.journal)
        if resolved.seq < first_new:
            self.fired.append(resolved)
        else:
            self.new_events[resolved.seq - first_new] = resolved
        if part.signal is not None:
            self.consumed.append((part.signal.id, resolved.seq))
        return part

    def release(self, part: Part) -> None:
        """Drop what the pass resolved for ``part``: its signal goes back to the inbox."""
        if part.signal is not None:
            self.taken.discard(part.signal.id)
        part.resolved = part.signal = None

    def finished_at(self, part: Part) -> datetime:
        """When a final part finished, for a race: a timer at its fire time.

        A signal wait resolved in this pass finished when its signal arrived (or when the
        wait was issued, for a signal that came earlier), or at its deadline if it timed out.
        """
        if part.event.kind == Kind.TIMER:
            return part.fire_at or self.fire_time(part.event)
        if part.signal is not None:
            return max(part.signal.sent_at, part.event.scheduled_at)
        if part.resolved is not None and part.fire_at is not None:
            return part.fire_at  # a signal wait that timed out in this pass
        if part.child is not None:
            return max(part.child.updated_at, part.event.scheduled_at)  # when it ended
        return part.event.completed_at or part.event.scheduled_at

    def outcome_of(self, event: Event) -> Outcome:
        """What a final ``event`` gives the workflow: its decoded result or its failure."""
        if event.state == State.FAILED:
            failure = event.failure or Failure("UnknownError", "the journal holds no details")
            if event.kind == Kind.SIGNAL and failure.type == "SignalTimeout":
                return Outcome(error=SignalTimeout(failure.message))
            return Outcome(error=StepFailed(failure.type, failure.message, failure.details))
        if event.output is None:
            return Outcome()
        return Outcome(self.decode(event.output, f"the result of seq {event.seq}"))

    def _deadline(self, event: Event) -> datetime | None:
        return self._event_input(event, decode_deadline, "the deadline of the signal wait")

    def fire_time(self, event: Event) -> datetime:
        """The fire time a timer's journal record holds."""
        return self._event_input(event, decode_fire_time, "the fire time of the timer")

    def _event_input(self, event: Event, decode: Callable[[Codec, str | None], T], what: str) -> T:
        """What ``decode`` reads in ``event``'s input; undecodable input parks the instance."""
        try:
            return decode(self.codec, event.input)
        except Exception as exc:
            raise Stuck(
                Failure(
                    "SerializationError",
                    f"cannot decode {what} at seq {event.seq} of {self.label} with the "
                    f"{self.codec.name!r} serializer: {exc}",
                )
            ) from exc

    def decode(self, data: str, what: str) -> Any:
        """``data`` decoded with the instance's codec; undecodable data parks the instance.

        Undecodable journal data is a deployment problem (a codec missing or changed), not
        the workflow's failure: the instance waits until it is fixed.
        """
        try:
            return self.codec.loads(data)
        except Exception as exc:
            raise Stuck(
                Failure(
                    "SerializationError",
                    f"cannot decode {what} of {self.label} with the {self.codec.name!r} "
                    f"serializer: {exc}",
                )
            ) from exc
