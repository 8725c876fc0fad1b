"""What a soak round starts: one workflow of each kind in the mix, and how each must end."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, replace
from typing import Any

#: ``mix.renewed``: how long run 1's step runs (it loses its race against a 0.3 s timer,
#: so it is still running when the instance continues as new).
STRAGGLER_SECONDS = 2.5

#: ``mix.short_steps``: that many steps of that many seconds, shorter than the soak's
#: heartbeat interval (0.5 s): a chain that runs through the moment of the round's fault.
SHORT_STEPS = 12
SHORT_SECONDS = 0.3


@dataclass(frozen=True)
class Planned:
    """One workflow the soak started, and what it must end as."""

    id: str
    workflow: str
    round: int
    status: str
    """``"completed"`` or ``"failed"``."""
    result: Any = None
    """The exact result (``None`` with ``check``)."""
    check: str = ""
    """A named check instead of an exact result (see ``verdict``)."""
    failure_type: str = ""
    effects: tuple[str, ...] = ()
    """Labels of the steps that must take effect exactly once (children's included)."""
    signals: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    """Labels of steps that may take effect, at most once (a cancelled workflow's)."""
    cancel_after: float | None = None
    """Seconds after the round's start at which the soak cancels it."""
    args: tuple[Any, ...] = ()
    """The arguments it was started with."""
    conflicting_args: tuple[Any, ...] | None = None
    """If set, the soak starts it again with ``args`` (the same handle must come back)
    and with these (``WorkflowIdConflict`` must be raised, and nothing stored)."""


def plan_round(
    number: int, rng: random.Random, fault: str = "none"
) -> list[tuple[Planned, tuple[Any, ...]]]:
    """The workflows of one round (ids unique to the run) and their arguments.

    Under a bad deploy, ``mix.long_steps`` (the workflow the deploy changes) runs 6 s
    steps, so it is still running when the changed code is.
    """
    tag = f"r{number}-{uuid.uuid4().hex[:6]}"
    p1, p2 = f"{tag}-go-1", f"{tag}-go-2"
    refuse = number % 2 == 1
    plans: list[tuple[Planned, tuple[Any, ...]]] = [
        (
            Planned(
                f"{tag}-transfer",
                "mix.transfer",
                number,
                "failed" if refuse else "completed",
                result=None if refuse else "transferred",
                failure_type="CreditRefused" if refuse else "",
                effects=("debit", "refund") if refuse else ("debit", "credit"),
                conflicting_args=("acct", 1000 + number, refuse),
            ),
            ("acct", 10 + number, refuse),
        ),
        (
            Planned(
                f"{tag}-retry",
                "mix.retry_and_run",
                number,
                "completed",
                check="token_then_flaky",
                effects=("flaky",),
            ),
            (2,),
        ),
        (
            Planned(
                f"{tag}-timers",
                "mix.timers",
                number,
                "completed",
                result="slept",
                effects=("tick", "tock"),
            ),
            (0.5, 3.0 + rng.random() * 2),
        ),
        (
            Planned(
                f"{tag}-signals",
                "mix.signals",
                number,
                "completed",
                result=[p1, p2],
                effects=("signalled",),
                signals=(p1, p2),
            ),
            (),
        ),
        (
            Planned(
                f"{tag}-fanout",
                "mix.fanout",
                number,
                "completed",
                result=["fan0", "fan1", 30],
                effects=("fan0", "fan1", "child"),
            ),
            (1.0,),
        ),
        (
            Planned(
                f"{tag}-long",
                "mix.long_steps",
                number,
                "completed",
                result=["long1", "long2"],
                effects=("long1", "long2"),
            ),
            (6.0 if fault == "bad_deploy" else 1.5,),
        ),
        (
            Planned(
                f"{tag}-cancelled",
                "mix.cancelled",
                number,
                "cancelled",
                failure_type="WorkflowCancelled",
                # A cancel is thrown before the workflow issues any new command: one that
                # comes before the first pass means ``hold`` is never sent. The step
                # running when the cancel comes ends all the same (or never starts, if
                # its message is lost: a cancelled workflow resends nothing); the
                # compensation runs if the cancel came after ``hold`` returned (checked
                # against the journal).
                optional=("hold", "held", "unhold"),
                check="compensated_if_held",
                cancel_after=rng.uniform(1.0, 2.0),
            ),
            (4.0,),
        ),
        (
            Planned(
                f"{tag}-renewed",
                "mix.renewed",
                number,
                "completed",
                check="renewed",
                effects=("probe1",),
                # Run 1's step may never run: its message lost (or its run killed) after
                # the instance moved on to run 2, nothing sends it again.
                optional=("probe0",),
            ),
            (STRAGGLER_SECONDS,),
        ),
        (
            Planned(
                f"{tag}-poisoned",
                "mix.poisoned",
                number,
                "failed",
                failure_type="StepLost",
                effects=("reserve", "release"),
                check="poisoned",
            ),
            ("acct",),
        ),
        (
            Planned(
                f"{tag}-short",
                "mix.short_steps",
                number,
                "completed",
                result=[f"short{i}" for i in range(SHORT_STEPS)],
                effects=tuple(f"short{i}" for i in range(SHORT_STEPS)),
            ),
            (SHORT_STEPS, SHORT_SECONDS),
        ),
    ]
    return [(replace(planned, args=args), args) for planned, args in plans]
