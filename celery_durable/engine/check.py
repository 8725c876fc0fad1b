"""Replay checks: would the code now importable replay a journal, before it is deployed?

:func:`check_replay` walks a workflow over a journal exactly as an orchestrator pass does,
and stops at the first command the journal does not hold yet: no ``ctx.run`` function is
run, no step scheduled, nothing journaled. What it finds is a :class:`ReplayCheck`: the
journal replays (``OK``), or the first mismatch (the seq, what the journal holds there and
what the code asks for), or an error the code would park the instance with.
``celery -A app durable replay-check`` and ``celery_durable.testing.replay`` are built on it.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from celery_durable.engine.journal import Event, Instance, Status
from celery_durable.engine.replay import _NO_CHILDREN, _Pass, task_name
from celery_durable.engine.serialization import Codec


@dataclass(frozen=True)
class ReplayCheck:
    """What replaying one journal against the current code found.

    Attributes:
        instance_id: the instance (or exported journal) checked.
        workflow: its workflow name.
        verdict: ``"OK"`` (the code replays the journal), ``"MISMATCH"`` (the code asks
            for another command than the journal holds) or ``"ERROR"`` (the code raises,
            or cannot start with the journaled input: the instance would park as stuck).
        replayed: how many journal events the code walked through.
        seq: the mismatch's journal position (``None`` if OK).
        journaled: what the journal holds at ``seq`` (``None`` past its end).
        asked: what the code asks for at ``seq`` (``None`` when the code ended instead).
        message: the full explanation, as the instance would be parked with.
        patches: ``(patch id, how)`` for each ``ctx.patched`` / ``ctx.deprecate_patch``
            answered: ``"old"`` (the old branch replays), ``"marker"`` (a journaled
            marker replays) or ``"new"`` (reached on new ground).
    """

    instance_id: str
    workflow: str
    verdict: str
    replayed: int
    seq: int | None = None
    journaled: str | None = None
    asked: str | None = None
    message: str | None = None
    patches: tuple[tuple[str, str], ...] = ()

    @property
    def ok(self) -> bool:
        """True when the code replays the journal."""
        return self.verdict == "OK"

    def describe(self) -> str:
        """One line for people: ``OK ...`` or the mismatch / error."""
        head = f"{self.instance_id} ({self.workflow})"
        if self.ok:
            return f"OK        {head}: replays {self.replayed} event(s)"
        if self.verdict == "MISMATCH":
            asked = self.asked if self.asked is not None else "nothing more (the code ends)"
            return (
                f"MISMATCH  {head}: at seq {self.seq} the journal holds {self.journaled}, "
                f"the code asks for {asked}"
            )
        return f"ERROR     {head}: {self.message}"


def check_replay(
    workflow: Callable[..., Coroutine[Any, Any, Any]],
    instance: Instance,
    events: Sequence[Event],
    *,
    codec: Codec,
    now: datetime,
    resolve_step: Callable[[Any], str] = task_name,
    failure_exceptions: tuple[type[BaseException], ...] = (),
) -> ReplayCheck:
    """Replay ``workflow`` over ``events`` up to the first command not journaled yet.

    Pending events are resolved as a pass would at ``now`` (a timer due fires, in the
    check only); the inbox is left alone and children count as running. Nothing is run
    that the journal does not already hold.
    """
    driver = _Pass(
        workflow,
        instance,
        events,
        codec,
        now,
        resolve_step,
        (),
        _NO_CHILDREN,
        instance.cancel_requested,
        failure_exceptions,
    )
    driver.cursor.checking = True
    decision = driver.run()
    replayed = min(driver.cursor.seq, len(events))
    patches = tuple(driver.cursor.patch_log)
    mismatch = driver.mismatch
    verdict, message = "OK", None
    if mismatch is not None:
        verdict, message = "MISMATCH", str(mismatch)
    elif decision.status is Status.STUCK:
        failure = decision.failure
        verdict = "ERROR"
        message = f"{failure.type}: {failure.message}" if failure else "it parks as stuck"
    return ReplayCheck(
        instance_id=instance.id,
        workflow=instance.workflow,
        verdict=verdict,
        replayed=replayed,
        seq=mismatch.seq if mismatch else None,
        journaled=mismatch.journaled if mismatch else None,
        asked=mismatch.asked if mismatch else None,
        message=message,
        patches=patches,
    )
