"""The soak's run log, read back: one :class:`Run` per execution of a mix step.

``chaos.mix`` writes ``label key event pid time`` lines (``start``, ``effect`` or
``dedup``, ``end`` or ``raise``; ``fault <point> crash`` when a crash point fires), where
``key`` is the step's idempotency key plus ``#attemptN``.
"""

from __future__ import annotations

from dataclasses import dataclass

from chaos.mix import ATTEMPT_SEP

#: A run may start this long after its outcome's commit and still be a race (it read the
#: journal just before the commit): scheduling jitter on a loaded two-core machine. The
#: same allowance applies to any comparison of run-log times with the audit's.
RACE_MARGIN = 1.0


@dataclass(frozen=True)
class Run:
    """One execution of a step, from the run log."""

    label: str
    idem: str
    attempt: int
    pid: int
    start: float
    end: float | None
    raised: bool
    effect: bool


def read_runs(log_text: str) -> tuple[list[Run], list[tuple[str, float]]]:
    """Step runs (in start order) and crash-point firings from the run log."""
    starts: dict[str, tuple[str, int, float]] = {}
    ends: dict[str, float] = {}
    raised: set[str] = set()
    effects: set[str] = set()
    crashes: list[tuple[str, float]] = []
    order: list[str] = []
    for line in log_text.splitlines():
        parts = line.split()
        if len(parts) != 5:
            continue
        label, key, event, pid, at = parts
        if label == "fault":
            crashes.append((key, float(at)))
            continue
        # One run is one (log key, pid): a log key repeats when a killed run's attempt
        # number is reused (nothing journaled its start).
        run_key = f"{key} {pid}"
        if event == "start":
            starts[run_key] = (label, int(pid), float(at))
            order.append(run_key)
        elif event == "end":
            ends[run_key] = float(at)
        elif event == "raise":
            raised.add(run_key)
            ends[run_key] = float(at)
        elif event == "effect":
            effects.add(run_key)
    runs = []
    for run_key in order:
        label, pid_number, started = starts[run_key]
        log_key = run_key.split(" ", 1)[0]
        idem, _, attempt = log_key.partition(ATTEMPT_SEP)
        runs.append(
            Run(
                label,
                idem,
                int(attempt or 0),
                pid_number,
                started,
                ends.get(run_key),
                run_key in raised,
                run_key in effects,
            )
        )
    runs.sort(key=lambda r: r.start)
    return runs, crashes


def root_of(idem: str, roots: list[str]) -> str | None:
    """The planned workflow a step's idempotency key belongs to (children included);
    ``roots`` longest first, so that no id is taken for a prefix of another."""
    for root in roots:
        if idem.startswith(root + ":"):
            return root
    return None
