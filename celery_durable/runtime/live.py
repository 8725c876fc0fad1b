"""Sticky execution: suspended workflows kept in a worker process between passes.

After a pass that leaves its workflow waiting commits, the process keeps the suspended
coroutine (:class:`~celery_durable.engine.replay.LiveRun`) together with the journal as
that commit left it. The next pass of the instance in the same process (the step that
ran next, a signal, a timer) continues the coroutine with what settled since instead of
replaying the journal from the start, so a pass costs the same at the 1,000th step as at
the first.

Correctness never depends on this cache: an entry is used only when the journal the pass
read is the one the entry recorded (same run, same events, the final ones unchanged;
only pending events may have settled), and any other case — another process moved the
workflow on, a retry rewound it, the cache was full — replays the journal in full. A
pass whose commit loses its compare-and-set drops the entry, whose coroutine has moved
on, and replays.

Each process has its own entries (a pool process forked from another keeps none) and
each entry is taken out while a pass uses it, so threads never share a coroutine.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from celery_durable.engine.journal import Event, Instance, Status
from celery_durable.engine.live import LiveRun
from celery_durable.stores.base import Commit


@dataclass
class LiveEntry:
    """A suspended workflow and the journal its last commit left.

    Attributes:
        run: the suspended coroutine.
        fn: the workflow function it runs (a redeployed function is not continued).
        instance: the instance row as the commit left it (its ``version`` included).
        events: the journal as the commit left it.
        pending_from: a seq before which every event is final (the scans of the next
            pass start there, so a pass costs the same at the 1,000th step as at the
            first); moved up to the first pending event when the entry is made.
    """

    run: LiveRun
    fn: Callable[..., Any]
    instance: Instance
    events: list[Event]
    pending_from: int = 0

    def __post_init__(self) -> None:
        events, seq = self.events, self.pending_from
        while seq < len(events) and events[seq].state.is_final:
            seq += 1
        self.pending_from = seq

    def fits(self, fn: Callable[..., Any], instance: Instance, events: Sequence[Event]) -> bool:
        """True if ``events`` (read with ``instance``) is this entry's journal, with at
        most pending events settled since: the coroutine can go on from there."""
        mine = self.instance
        if (
            fn is not self.fn
            or instance.id != mine.id
            or instance.run != mine.run
            or instance.serializer != mine.serializer
            or len(events) != len(self.events)
            or not self.run.waiting
            or self.run.length != len(events)
        ):
            return False
        if instance.version == mine.version and events is self.events:
            return True  # the very journal recorded, with an outcome merged in by the caller
        for kept, read in zip(self.events, events, strict=True):
            if kept.seq != read.seq or kept.kind != read.kind or kept.name != read.name:
                return False
            if kept.state.is_final and (
                kept.state != read.state
                or kept.output != read.output
                or kept.failure != read.failure
                or kept.input != read.input
            ):
                return False  # a final event never changes: the journal was rewound
        return True


#: Journal events all of one process's kept workflows may hold together (about 100 MB of
#: journal at most): long journals are kept fewer at a time.
MAX_KEPT_EVENTS = 200_000


class LiveWorkflows:
    """This process's suspended workflows, least recently used dropped first.

    Args:
        size: how many it keeps at most (``durable_live_cache``).
        max_events: how many journal events they may hold together.
    """

    def __init__(self, size: int, max_events: int = MAX_KEPT_EVENTS) -> None:
        self.size = size
        self.max_events = max_events
        self._events = 0
        self._entries: OrderedDict[str, LiveEntry] = OrderedDict()
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self.hits = 0
        """Passes that continued a kept workflow (for the benchmarks)."""
        self.misses = 0
        """Passes that replayed in full while a kept workflow could have been used."""

    def take(self, instance_id: str) -> LiveEntry | None:
        """Remove and return the entry of ``instance_id``, if this process holds one."""
        with self._lock:
            if self._pid != os.getpid():  # a forked copy: its entries are the parent's
                self._entries.clear()
                self._events = 0
                self._pid = os.getpid()
            entry = self._entries.pop(instance_id, None)
            if entry is not None:
                self._events -= len(entry.events)
            return entry

    def put(self, entry: LiveEntry) -> None:
        """Keep ``entry`` (replacing any older one of the instance), within the size."""
        if self.size <= 0 or len(entry.events) > self.max_events:
            entry.run.close()
            return
        dropped = []
        with self._lock:
            old = self._entries.pop(entry.instance.id, None)
            if old is not None:
                dropped.append(old)
                self._events -= len(old.events)
            self._entries[entry.instance.id] = entry
            self._events += len(entry.events)
            while len(self._entries) > self.size or self._events > self.max_events:
                gone = self._entries.popitem(last=False)[1]
                self._events -= len(gone.events)
                dropped.append(gone)
        for gone in dropped:
            gone.run.close()

    def clear(self) -> None:
        """Close every kept coroutine."""
        with self._lock:
            entries = list(self._entries.values())
            self._entries.clear()
            self._events = 0
        for entry in entries:
            entry.run.close()

    def __len__(self) -> int:
        return len(self._entries)


def journal_after(
    instance: Instance, events: Sequence[Event], commit: Commit
) -> tuple[Instance, list[Event]] | None:
    """The instance and journal as the store holds them once ``commit`` (a pass leaving
    its workflow running) is applied, or ``None`` for a commit this does not model (a
    restart, a rewind, steps sent again): the next pass then reads the store.

    ``events`` may already hold the commit's outcomes (the orchestrator merges a step's
    outcome into the journal it read); they are applied again as the store applies them.
    A list is updated in place (no copy per pass) and returned.
    """
    if (
        commit.status is not Status.RUNNING
        or commit.restart_input is not None
        or commit.rewind_from is not None
        or commit.resent
    ):
        return None
    journal = events if isinstance(events, list) else list(events)  # the caller's, used up
    for outcome in commit.outcomes:
        before = journal[outcome.seq]
        journal[outcome.seq] = dataclasses.replace(
            outcome,
            attempts=max(before.attempts, outcome.attempts),
            started_at=outcome.started_at or before.started_at,
        )
    for new in commit.new_events:
        if new.seq != len(journal):
            return None
        journal.append(new)
    after = dataclasses.replace(
        instance,
        version=commit.expected_version + 1,
        status=commit.status,
        output=commit.output,
        failure=commit.failure,
        updated_at=commit.updated_at,
        wake_at=commit.wake_at,
        custom_status=commit.custom_status,
        note=commit.note,
        inbox=instance.inbox - len(commit.consumed),
        waiting_at=commit.waiting_at,
        patches=instance.patches if commit.patches is None else tuple(commit.patches),
        code_version=commit.code_version or instance.code_version,
    )
    return after, journal
