"""Whose start mark a late death report is about (runtime/losses.py), on hand-built events.

The worker's main process may report a pool process's death seconds late; by then
recovery may have counted the silent step and sent it again, or a newer run may hold the
mark. Only a death whose run holds the mark counts as a loss.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from celery_durable import Durable
from celery_durable.engine.journal import Event, Kind, State
from celery_durable.runtime.losses import _whose_mark

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)


def step(state: State, started: datetime | None, beat: datetime | None) -> Event:
    return Event(
        0,
        Kind.STEP,
        "s",
        "[[], {}]",
        state,
        T0,
        started_at=started,
        heartbeat_at=beat,
        attempts=1,
    )


def test_the_mark_right_after_acceptance_is_ours(durable: Durable) -> None:
    accepted = T0 + timedelta(seconds=1)
    marked = step(State.STARTED, accepted + timedelta(milliseconds=20), accepted)
    assert _whose_mark(durable, marked, accepted) == "ours"
    assert _whose_mark(durable, marked, None) == "ours"  # acceptance unknown: count it


def test_a_mark_a_silence_limit_later_is_a_newer_run(durable: Durable) -> None:
    accepted = T0 + timedelta(seconds=1)
    later = accepted + durable.silence_limit + timedelta(seconds=1)
    assert _whose_mark(durable, step(State.STARTED, later, later), accepted) == "newer"


def test_a_step_sent_again_since_is_not_counted_twice(durable: Durable) -> None:
    accepted = T0 + timedelta(seconds=1)
    resent = accepted + durable.silence_limit + timedelta(seconds=2)
    assert _whose_mark(durable, step(State.SCHEDULED, None, resent), accepted) == "newer"


def test_a_run_that_died_before_its_mark_is_unmarked(durable: Durable) -> None:
    accepted = T0 + timedelta(seconds=1)
    assert _whose_mark(durable, step(State.SCHEDULED, None, T0), accepted) == "unmarked"
