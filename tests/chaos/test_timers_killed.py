"""Sleeping workflows when the worker dies, and two beats at once.

Timers up to ``durable_eta_max`` (2 s here) are resume messages with an ETA, fetched at
once and held in the worker's memory; a SIGKILLed worker leaves them in Redis's
``unacked`` hash for the visibility timeout (3600 s). Longer timers live only in the
store. Either way the instance's ``wake_at`` comes due and the beat tick fires the timer,
exactly once, never early; and two beats (a deployment mistake Celery does not prevent)
only tick twice as often: each due instance is claimed by one tick.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from celery_durable import Status
from celery_durable.client import WorkflowHandle, start
from celery_durable.engine.journal import Kind, State
from chaos import report
from chaos.apps import SLEEP_WORKFLOW, read_records
from chaos.cluster import wait_for
from chaos.scenarios import Setup, describe, unacked

ETA_MAX = 2.0
#: 10 timers kept in the store only (> 2 s), 10 sent as ETA messages (<= 2 s). Started
#: in this order, shortest last, so that every workflow is asleep before any timer is due.
SLEEPS = [6.0, 6.0, 5.5, 5.0, 4.5, 4.0, 3.5, 3.0, 3.0, 2.5]
SLEEPS += [2.0, 2.0, 1.9, 1.8, 1.75, 1.7, 1.6, 1.6, 1.5, 1.5]
#: How long no worker runs while the timers come due.
DOWNTIME = 8.0


def sleeping(setup: Setup, handle: WorkflowHandle[object]) -> bool:
    """The workflow ran its first step and waits on a timer not fired yet."""
    loaded = setup.chaos.durable.store.load(handle.id)
    assert loaded is not None
    _instance, events = loaded
    return (
        len(events) == 2
        and events[0].state is State.COMPLETED
        and events[1].kind is Kind.TIMER
        and not events[1].state.is_final
    )


def completed(setup: Setup, handles: list[WorkflowHandle[object]]) -> bool:
    return all(h.status() == Status.COMPLETED for h in handles)


def warm_up(setup: Setup) -> None:
    """Run a few workflows through the worker first: a pool child's first task opens its
    store and broker connections, which can take seconds on a loaded machine."""
    handles = [start(setup.chaos.durable, SLEEP_WORKFLOW, (0,), {}) for _ in range(8)]
    wait_for(lambda: completed(setup, handles), 60, "warm-up workflows completed", 0.2)


def check_ran_once(setup: Setup, handles: list[WorkflowHandle[object]]) -> None:
    """Each workflow: before-step, one timer fired at or after its time, after-step; each
    step's user code ran exactly once."""
    ids = {h.id for h in handles}
    records = [r for r in read_records(setup.record) if r.key.split(":", 1)[0] in ids]
    starts = Counter((r.label, r.key.split(":", 1)[0]) for r in records if r.event == "start")
    for handle in handles:
        history = handle.history()
        assert [(e.kind, e.state) for e in history] == [
            (Kind.STEP, State.COMPLETED),
            (Kind.TIMER, State.COMPLETED),
            (Kind.STEP, State.COMPLETED),
        ], describe(history)
        timer = history[1]
        (fire_at,) = timer.args
        assert timer.completed_at is not None
        assert timer.completed_at >= fire_at, describe(history)
        assert starts[("before", handle.id)] == 1, records
        assert starts[("after", handle.id)] == 1, records
    assert sum(starts.values()) == 2 * len(handles)


def test_worker_killed_while_workflows_sleep(
    tmp_path: Path, redis_url: str, postgres_db_url: str
) -> None:
    setup = Setup(tmp_path, redis_url, postgres_db_url, eta_max=ETA_MAX)
    try:
        worker1 = setup.cluster.worker("worker1", concurrency=4)
        setup.cluster.beat("beat")
        setup.cluster.wait_ready(worker1)
        warm_up(setup)
        handles = [start(setup.chaos.durable, SLEEP_WORKFLOW, (s,), {}) for s in SLEEPS]
        wait_for(lambda: all(sleeping(setup, h) for h in handles), 15, "all 20 sleeping")
        eta_timers = sum(s <= ETA_MAX for s in SLEEPS)

        def held() -> int:
            """ETA resume messages the worker fetched and holds (unacked in Redis)."""
            return sum(eta is not None for _task, eta in unacked(redis_url, setup.queue))

        wait_for(lambda: held() == eta_timers, 5, "the worker holds every ETA message")
        setup.cluster.kill(worker1)
        # Killed while every timer was still pending; the short ones' ETA messages are
        # stranded in Redis's unacked hash with the dead worker.
        assert all(sleeping(setup, h) for h in handles), "a timer fired before the kill"
        assert held() == eta_timers

        time.sleep(DOWNTIME)  # no worker: every timer comes due meanwhile
        assert all(sleeping(setup, h) for h in handles)
        restarted_at = time.time()
        setup.cluster.worker("worker2", concurrency=4)
        wait_for(lambda: completed(setup, handles), 30, "all 20 completed", interval=0.2)
        journal = setup.chaos.durable.store
        done_at = max(journal.get(h.id).updated_at.timestamp() for h in handles)  # type: ignore[union-attr]
        report.LINES.append(
            f"20 sleeping workflows, worker SIGKILLed, {DOWNTIME:g} s without a worker: "
            f"all completed {done_at - restarted_at:.2f} s after a new worker was started"
        )
        check_ran_once(setup, handles)
        ids = {h.id for h in handles}
        after = [
            r
            for r in read_records(setup.record)
            if r.label == "after" and r.key.split(":", 1)[0] in ids
        ]
        assert len(after) == 2 * len(handles)  # start and end lines
        assert min(r.at for r in after) >= restarted_at
    except BaseException:
        setup.close()
        print(setup.cluster.logs())
        raise
    finally:
        setup.close()


def test_two_beats_fire_each_timer_once(
    tmp_path: Path, redis_url: str, postgres_db_url: str
) -> None:
    setup = Setup(tmp_path, redis_url, postgres_db_url, eta_max=ETA_MAX)
    try:
        worker = setup.cluster.worker("worker", concurrency=4)
        beats = [setup.cluster.beat("beat1"), setup.cluster.beat("beat2")]
        setup.cluster.wait_ready(worker)
        warm_up(setup)
        sleeps = [1 + (i % 9) * 0.25 for i in range(30)]  # 1 to 3 s
        handles = [start(setup.chaos.durable, SLEEP_WORKFLOW, (s,), {}) for s in sleeps]
        wait_for(lambda: completed(setup, handles), 30, "all 30 completed", interval=0.2)
        check_ran_once(setup, handles)
        for beat in beats:  # both beats really ticked
            assert "Sending due task celery_durable.tick" in beat.log_text(), beat.name
    except BaseException:
        setup.close()
        print(setup.cluster.logs())
        raise
    finally:
        setup.close()
