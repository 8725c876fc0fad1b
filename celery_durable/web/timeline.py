"""The workflow page's timeline: one row per journal event, bars on a shared time axis.

A step's bar is split in two: its queue delay (scheduled -> started: waiting for a
worker) and its run time (started -> completed). Timers, signal waits and children are
drawn as waits. Attempts and re-sends are counted on the row with the last error.

Compensations are not marked in the journal: ``ctx.saga()`` (and a hand-written
``except StepFailed:`` rollback) run them as ordinary steps *after* the failure they
undo. So a step or child journaled after the failure that failed the workflow, or after
the point where a cancellation was thrown in (a CANCEL event), is shown as a
compensation of that event.

Long journals stay light: runs of similar rows (same kind, name and state, no error)
collapse into one group row, and a failed-only view keeps just the rows with an error,
more than one attempt, or a re-send.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from celery_durable.engine.journal import Event, Kind
from celery_durable.engine.saga import compensations

COLLAPSE_FROM = 4
"""A run of at least this many similar rows is shown as one group row."""
GROUP_ROWS_SHOWN = 50
"""How many rows of a group its expanded view lists (the raw journal has them all)."""


@dataclass(frozen=True)
class Bar:
    """One segment of a row's bar, in percent of the axis.

    Attributes:
        part: ``"queue"`` (waiting for a worker), ``"run"`` (running), ``"wait"`` (a
            timer, a signal wait, a child) or ``"mark"`` (an instant: a local run, a
            cancellation, a patch marker).
        left / width: where it starts and how wide it is (0-100).
        open: still going (drawn up to now).
        title: the tooltip: from, to and how long.
    """

    part: str
    left: float
    width: float
    open: bool
    title: str


@dataclass
class Row:
    """One timeline row: an event, or a group of similar consecutive events.

    Attributes:
        seq / last_seq: the event's seq (a group: its first and last).
        kind / name / state: the event's (a group: those its events share).
        bars: the bar's segments.
        queue_ms / run_ms: queue delay and run time (``None`` if not known yet).
        attempts / resends: runs the journal saw and times the step was sent again.
        error: ``Type: message`` of its failure ("" if none).
        compensation_of: the seq of the failure this row compensates, or ``None``.
        count: how many events the row stands for (1, or a group's size).
        rows: a group's own rows (at most :data:`GROUP_ROWS_SHOWN`).
    """

    seq: int
    last_seq: int
    kind: str
    name: str
    state: str
    bars: list[Bar]
    queue_ms: float | None
    run_ms: float | None
    attempts: int
    resends: int
    error: str
    compensation_of: int | None
    count: int = 1
    rows: list[Row] = field(default_factory=list)

    @property
    def troubled(self) -> bool:
        """Failed, run more than once, or sent again: what the failed-only view keeps."""
        return bool(self.error) or self.attempts > 1 or self.resends > 0


@dataclass(frozen=True)
class Timeline:
    """The timeline of one instance.

    Attributes:
        start / end: the axis (the instance's creation to its end, or now).
        rows: the rows to draw, groups collapsed.
        ticks: ``(percent, label)`` marks along the axis.
        events: how many events the journal holds.
        shown: how many events the rows stand for (fewer with the failed-only view).
        compensations: how many events are compensations.
    """

    start: datetime
    end: datetime
    rows: list[Row]
    ticks: list[tuple[float, str]]
    events: int
    shown: int
    compensations: int


def build_timeline(
    events: Sequence[Event],
    start: datetime,
    end: datetime,
    now: datetime,
    failed_only: bool = False,
    compensation_of: dict[int, int] | None = None,
) -> Timeline:
    """Lay the journal out on the axis ``start`` -> ``end``; open bars run up to ``now``.

    Args:
        events: the journal, by seq.
        start / end: the axis (``end`` is moved past ``start`` if needed).
        now: where open bars (pending events) end.
        failed_only: keep only troubled rows (errors, several attempts, re-sends).
        compensation_of: :func:`compensations` of ``events`` (computed if not given).
    """
    marked = compensations(events) if compensation_of is None else compensation_of
    for event in events:
        for moment in (event.scheduled_at, event.started_at, event.completed_at):
            if moment is not None:
                start, end = min(start, moment), max(end, moment)
    if end <= start:
        end = start + timedelta(seconds=1)
    axis = _Axis(start, end)
    rows = [_row(e, axis, now, marked.get(e.seq)) for e in events]
    if failed_only:
        rows = [r for r in rows if r.troubled]
    shown = len(rows)
    return Timeline(
        start=start,
        end=end,
        rows=collapse(rows),
        ticks=axis.ticks(),
        events=len(events),
        shown=shown,
        compensations=len(marked),
    )


def collapse(rows: list[Row]) -> list[Row]:
    """Fold each run of :data:`COLLAPSE_FROM` or more similar rows into one group row."""
    out: list[Row] = []
    i = 0
    while i < len(rows):
        j = i + 1
        while j < len(rows) and _similar(rows[i], rows[j]):
            j += 1
        if j - i >= COLLAPSE_FROM:
            out.append(_group(rows[i:j]))
        else:
            out.extend(rows[i:j])
        i = j
    return out


def _similar(a: Row, b: Row) -> bool:
    return (
        (a.kind, a.name, a.state) == (b.kind, b.name, b.state)
        and not a.troubled
        and not b.troubled
        and (a.compensation_of is None) == (b.compensation_of is None)
    )


def _group(rows: list[Row]) -> Row:
    first, last = rows[0], rows[-1]
    left = min((b.left for r in rows for b in r.bars), default=0.0)
    right = max((b.left + b.width for r in rows for b in r.bars), default=left)
    span = Bar(
        "group",
        left,
        max(right - left, 0.3),
        any(b.open for r in rows for b in r.bars),
        f"{len(rows)} events, seq {first.seq}-{last.seq}",
    )
    queue = [r.queue_ms for r in rows if r.queue_ms is not None]
    run = [r.run_ms for r in rows if r.run_ms is not None]
    return Row(
        seq=first.seq,
        last_seq=last.seq,
        kind=first.kind,
        name=first.name,
        state=first.state,
        bars=[span],
        queue_ms=sum(queue) / len(queue) if queue else None,  # a group shows averages
        run_ms=sum(run) / len(run) if run else None,
        attempts=sum(r.attempts for r in rows),
        resends=0,
        error="",
        compensation_of=first.compensation_of,
        count=len(rows),
        rows=rows[:GROUP_ROWS_SHOWN],
    )


class _Axis:
    def __init__(self, start: datetime, end: datetime) -> None:
        self.start = start
        self.seconds = (end - start).total_seconds()

    def at(self, moment: datetime) -> float:
        return min(max((moment - self.start).total_seconds() / self.seconds * 100, 0.0), 100.0)

    def bar(self, part: str, begin: datetime, finish: datetime, open_: bool) -> Bar:
        left = self.at(begin)
        width = max(self.at(finish) - left, 0.3)  # an instant still shows
        title = f"{part}: {_clock(begin)} -> {_clock(finish)}{' (open)' if open_ else ''}"
        title += f", {duration(finish - begin)}"
        return Bar(part, left, min(width, 100.0 - left) if left < 100 else 0.3, open_, title)

    def ticks(self, count: int = 5) -> list[tuple[float, str]]:
        marks = []
        for i in range(count + 1):
            offset = timedelta(seconds=self.seconds * i / count)
            marks.append((100.0 * i / count, "+" + duration(offset)))
        return marks


def _row(event: Event, axis: _Axis, now: datetime, compensation_of: int | None) -> Row:
    bars: list[Bar] = []
    queue_ms = run_ms = None
    done = event.completed_at
    if event.kind is Kind.STEP:
        started = event.started_at
        if started is not None:
            bars.append(axis.bar("queue", event.scheduled_at, started, False))
            bars.append(axis.bar("run", started, done or now, done is None))
            queue_ms = _ms(started - event.scheduled_at)
            run_ms = _ms(done - started) if done else None
        elif done is not None:  # journaled without a start mark: run time unknown
            bars.append(axis.bar("run", event.scheduled_at, done, False))
            run_ms = _ms(done - event.scheduled_at)
        else:
            bars.append(axis.bar("queue", event.scheduled_at, now, True))
    elif event.kind in (Kind.TIMER, Kind.SIGNAL, Kind.CHILD):
        bars.append(axis.bar("wait", event.scheduled_at, done or now, done is None))
        run_ms = _ms(done - event.scheduled_at) if done else None
    else:  # RUN, CANCEL, PATCH: journaled as they happen
        bars.append(axis.bar("mark", event.scheduled_at, done or event.scheduled_at, False))
    error = ""
    if event.failure is not None:
        error = event.failure.type + (f": {event.failure.message}" if event.failure.message else "")
    return Row(
        seq=event.seq,
        last_seq=event.seq,
        kind=event.kind.value,
        name=event.name,
        state=event.state.value,
        bars=bars,
        queue_ms=queue_ms,
        run_ms=run_ms,
        attempts=event.attempts,
        resends=event.resends,
        error=error,
        compensation_of=compensation_of,
    )


def _ms(delta: timedelta) -> float:
    return max(delta.total_seconds() * 1000, 0.0)


def _clock(moment: datetime) -> str:
    return moment.strftime("%H:%M:%S.%f")[:-3]


def duration(delta: timedelta) -> str:
    """A duration for people: ``850 ms``, ``12.3 s``, ``4 min 5 s``, ``3 h 2 min``,
    ``2 d 4 h``."""
    seconds = delta.total_seconds()
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"
    return f"{int(seconds // 86400)} d {int(seconds % 86400 // 3600)} h"
