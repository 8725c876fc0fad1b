"""Sticky execution: a workflow coroutine kept suspended between passes.

:func:`replay_live` is :func:`~celery_durable.engine.replay.replay` that keeps the
coroutine when the workflow is left waiting; :meth:`LiveRun.resume` then makes the next
pass by resolving the ``await`` it is suspended on against the new journal, exactly as a
full replay would resolve it there after walking the same prefix, and drives it on from
there. A full replay and a resumed pass over the same journal make the same decision
(``tests/engine/test_live_runs.py`` checks it pass after pass); the runtime keeps these in
each worker process (``celery_durable.runtime.live``) and replays in full on any doubt.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping, Sequence
from datetime import datetime
from typing import Any

from celery_durable.engine.awaitables import _Combination, _Command, _Rejoin
from celery_durable.engine.commands import Decision
from celery_durable.engine.journal import Event, Failure, Instance, Kind, Signal, Status
from celery_durable.engine.replay import _NO_CHILDREN, _Pass, task_name
from celery_durable.engine.serialization import Codec
from celery_durable.engine.settling import Settlement, Stuck
from celery_durable.errors import NonDeterminismError


class LiveRun:
    """A workflow coroutine kept suspended after a pass (sticky execution), so that the
    next pass continues it with what settled since instead of replaying the journal.

    Made by :func:`replay_live`. The decision :meth:`resume` returns is the one
    full replay would return over the same journal; the caller must only hand it the
    journal the previous pass left, as committed, plus outcomes journaled since (see
    :meth:`resume`). Not thread-safe: one pass at a time.
    """

    def __init__(self, driver: _Pass) -> None:
        self._driver = driver

    @property
    def waiting(self) -> bool:
        """True while the coroutine is suspended (the last pass left it waiting)."""
        return self._driver.coro is not None

    @property
    def length(self) -> int:
        """How many journal events the suspended coroutine has walked through."""
        return self._driver.cursor.seq

    def resume(
        self,
        instance: Instance,
        events: Sequence[Event],
        *,
        now: datetime,
        signals: Sequence[Signal] = (),
        children: Mapping[str, Instance] = _NO_CHILDREN,
        cancel_requested: bool = False,
        pending_from: int = 0,
    ) -> Decision | None:
        """The next pass, continuing the coroutine the previous pass (a full one, or an
        earlier resume) left suspended, instead of replaying the journal from the start.

        ``events`` must be the journal that pass left (its new events and outcomes
        committed) with whatever settled since (outcomes of pending events): the same
        prefix a full replay would walk through to reach the suspended ``await``, which
        is then resolved against ``events`` exactly as a full replay resolves it there.
        The decision is then the one a full replay would make. Returns ``None`` (and
        closes the coroutine) when the journal is not one it can continue from: the
        caller replays in full.

        The coroutine stays suspended for the next call if the workflow waits again.
        ``pending_from``: a seq before which the caller knows every event is final.
        """
        driver = self._driver
        coro, awaited = driver.coro, driver.waiting_on
        driver.coro = driver.waiting_on = None
        if coro is None or awaited is None:
            return None
        if len(events) != driver.cursor.seq or any(
            event.kind == Kind.CHILD and not event.state.is_final for event in events[pending_from:]
        ):
            # Not the journal it suspended on, or a child whose start a crash may have
            # cut off (a full replay lists every pending child to start again).
            driver._discard(coro)
            return None
        driver.instance = instance
        driver.journal = driver.cursor.journal = events
        driver.now = driver.cursor.now = now
        driver.awaited_children = []
        driver.new_events = []
        driver.cursor.new_events = driver.new_events
        driver.steps = []
        driver.started = []
        driver.timers = []
        driver.cancel_pending = cancel_requested and not any(
            event.kind == Kind.CANCEL for event in events
        )
        driver.settlement = Settlement(
            instance, events, driver.new_events, driver.codec, now, signals, children, driver.label
        )
        kept: Coroutine[Any, Any, Any] | None = coro
        try:
            if isinstance(awaited, _Combination):
                commands = list(awaited.parts)
            elif isinstance(awaited, _Rejoin):
                commands = [awaited.command]
            else:
                assert isinstance(awaited, _Command)
                commands = [awaited]
            outcome = driver._settle_awaited(awaited, [driver._issued(c) for c in commands])
            if outcome is None:
                driver.waiting_on = awaited
                decision = driver._decision(Status.RUNNING)
            else:
                decision = driver._drive(coro, outcome)
            if driver.waiting_on is not None:
                driver.coro, kept = coro, None
            return decision
        except NonDeterminismError as exc:
            driver.mismatch = exc
            return Decision(Status.STUCK, failure=Failure("NonDeterminismError", str(exc)))
        except Stuck as stuck:
            return Decision(Status.STUCK, failure=stuck.failure)
        finally:
            if kept is not None:
                driver._discard(kept)

    def close(self) -> None:
        """Close a coroutine kept suspended (its ``finally`` blocks run quietly)."""
        driver = self._driver
        coro, driver.coro, driver.waiting_on = driver.coro, None, None
        if coro is not None:
            driver._discard(coro)


def replay_live(
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
    keep: bool = True,
) -> tuple[Decision, LiveRun | None]:
    """:func:`~celery_durable.engine.replay.replay`, keeping the coroutine suspended if the
    workflow waits (unless ``keep`` is false).

    Returns:
        The decision, and a :class:`LiveRun` to continue from when the workflow is left
        waiting (``None`` when it ended, continued as new or is stuck).
    """
    driver = _Pass(
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
    )
    decision = driver.run(keep=keep)
    return decision, LiveRun(driver) if driver.coro is not None else None
