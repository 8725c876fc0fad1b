"""When an instance is looked at next (``recovery.plan``): no server needed."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from celery import Celery

from celery_durable import Durable
from celery_durable.engine.journal import Event, Kind, State
from celery_durable.runtime.recovery import HEARTBEAT_MISSES, plan

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc)


@pytest.fixture
def durable() -> Durable:
    app = Celery("plan", set_as_current=False)
    app.conf.update(
        durable_eta_max=60,
        durable_tick_interval=5,
        durable_step_timeout=300,
        durable_heartbeat_interval=2,
    )
    return Durable(app)


def step(
    seq: int, scheduled: timedelta, started: timedelta | None = None, beat: timedelta | None = None
) -> Event:
    return Event(
        seq,
        Kind.STEP,
        "s",
        "[[], {}]",
        State.STARTED if started else State.SCHEDULED,
        scheduled_at=NOW - scheduled,
        started_at=NOW - started if started is not None else None,
        heartbeat_at=NOW - beat if beat is not None else None,
    )


def timer(seq: int, fire_at: datetime) -> Event:
    return Event(seq, Kind.TIMER, "sleep", "[[], {}]", State.SCHEDULED, scheduled_at=NOW)


def test_a_new_step_is_looked_at_after_the_step_timeout(durable: Durable) -> None:
    wake = plan(durable, NOW, [], [step(0, timedelta(0))], None)
    assert wake.at == NOW + timedelta(seconds=300)
    assert wake.resend == ()
    assert wake.eta is None


def test_a_step_waiting_unstarted_past_the_timeout_is_sent_again(durable: Durable) -> None:
    lost = step(0, timedelta(seconds=301))
    wake = plan(durable, NOW, [lost], [], None)
    assert wake.resend == (lost,)
    assert wake.at == NOW + timedelta(seconds=300)


def test_a_running_step_is_judged_by_its_heartbeat(durable: Durable) -> None:
    alive = step(0, timedelta(minutes=30), started=timedelta(minutes=29), beat=timedelta(seconds=1))
    wake = plan(durable, NOW, [alive], [], None)
    assert wake.resend == ()
    assert wake.at == NOW - timedelta(seconds=1) + timedelta(seconds=2 * HEARTBEAT_MISSES)

    dead = step(0, timedelta(minutes=1), started=timedelta(seconds=50), beat=timedelta(seconds=11))
    assert plan(durable, NOW, [dead], [], None).resend == (dead,)


def test_a_step_sent_again_waits_a_full_timeout_before_the_next_resend(durable: Durable) -> None:
    # Re-sent 10 s ago (heartbeat_at = when sent, started_at cleared): not started yet.
    resent = step(0, timedelta(hours=1), beat=timedelta(seconds=10))
    wake = plan(durable, NOW, [resent], [], None)
    assert wake.resend == ()
    assert wake.at == NOW - timedelta(seconds=10) + timedelta(seconds=300)


def test_a_new_short_timer_gets_an_eta_and_the_tick_as_backup(durable: Durable) -> None:
    fire_at = NOW + timedelta(seconds=30)
    wake = plan(durable, NOW, [], [timer(0, fire_at)], fire_at)
    assert wake.eta == fire_at
    assert wake.at == fire_at + timedelta(seconds=10)


def test_a_long_timer_is_the_ticks_alone(durable: Durable) -> None:
    fire_at = NOW + timedelta(days=30)
    wake = plan(durable, NOW, [], [timer(0, fire_at)], fire_at)
    assert wake.eta is None
    assert wake.at == fire_at


def test_an_old_short_timer_is_not_sent_again(durable: Durable) -> None:
    fire_at = NOW + timedelta(seconds=30)
    wake = plan(durable, NOW, [], [], fire_at)
    assert wake.eta is None
    assert wake.at == fire_at


def test_the_earliest_deadline_wins(durable: Durable) -> None:
    fire_at = NOW + timedelta(days=1)
    wake = plan(durable, NOW, [step(0, timedelta(seconds=100))], [], fire_at)
    assert wake.at == NOW + timedelta(seconds=200)
