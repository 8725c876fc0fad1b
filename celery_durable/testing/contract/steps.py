"""The step part of the store contract: what a worker writes around a step's run.

``start_step`` (marks a pending step of the instance's current run and of that name
started before its code runs: ``started_at`` = ``heartbeat_at`` = the start, one more
attempt, the version bumped, a live instance's ``wake_at`` pulled earlier; anything else
is refused and nothing is written; the journal it returns is the one a ``load`` then
reads), ``reschedule_step`` (a step Celery retries later goes back to scheduled until
then), the run check of ``heartbeat``, and ``Commit.resent`` counting ``resends`` only for
a step that had started. A commit read before a start mark loses its compare-and-set,
also when the two race.
"""

from __future__ import annotations

import dataclasses
import time
from datetime import datetime, timedelta

import pytest

from celery_durable.engine.journal import Event, Kind, State, Status
from celery_durable.stores.base import Commit, StepStart, Store
from celery_durable.testing.contract.builders import (
    ELSEWHERE,
    T0,
    assert_event_types,
    assert_instance_types,
    completed,
    failed,
    make_event,
    make_instance,
    run_together,
)

STEP = "bank.start_transfer_0"
"""The name :func:`make_event` gives the step at seq 0."""

AT = T0 + timedelta(seconds=3, microseconds=17)
"""When the tests' workers start their steps."""

WAKE_BY = T0 + timedelta(minutes=1)
"""The ``wake_at`` the tests' workers ask for."""


def pending_step(
    store: Store,
    instance_id: str,
    *,
    status: Status = Status.RUNNING,
    wake_at: datetime | None = None,
    run: int = 1,
    events: list[Event] | None = None,
) -> None:
    """An instance of run ``run`` at version 1 with one pending step at seq 0 (or
    ``events``)."""
    store.create(make_instance(instance_id, run=run))
    assert store.commit(
        Commit(
            instance_id,
            0,
            status,
            T0,
            new_events=[make_event(0)] if events is None else events,
            wake_at=wake_at,
        )
    )


def assert_is_the_journal(store: Store, instance_id: str, start: StepStart) -> None:
    """What ``start_step`` returned is what a ``load`` reads now, in UTC and enums."""
    assert start.journal == store.load(instance_id), "the journal after the mark"
    assert start.journal is not None
    assert_instance_types(start.journal[0])
    assert_event_types(start.journal[1])


class StepContract:
    """Start marks, reschedules, run-checked heartbeats and resends of steps."""

    # ------------------------------------------------------------------ start_step

    def test_start_step_marks_a_pending_step(self, store: Store) -> None:
        pending_step(store, "wf-start", wake_at=T0 + timedelta(hours=1))

        start = store.start_step("wf-start", 1, 0, STEP, AT.astimezone(ELSEWHERE), WAKE_BY)

        assert start.marked is True
        assert_is_the_journal(store, "wf-start", start)
        assert start.journal is not None
        instance, (step,) = start.journal
        assert step == make_event(
            0, state=State.STARTED, started_at=AT, heartbeat_at=AT, attempts=1
        ), "started, at the start; one attempt"
        assert instance == make_instance(
            "wf-start", status=Status.RUNNING, version=2, wake_at=WAKE_BY
        ), "version bumped, wake_at pulled, nothing else changed"

    @pytest.mark.parametrize("state", [State.SCHEDULED, State.STARTED])
    def test_start_step_counts_every_start(self, store: Store, state: State) -> None:
        """A step redelivered (its first worker presumed dead) is started again."""
        first = make_event(0, state=state, attempts=2, started_at=T0, heartbeat_at=T0)
        pending_step(store, "wf-start-again", events=[first])

        start = store.start_step("wf-start-again", 1, 0, STEP, AT, WAKE_BY)

        assert start.marked is True
        assert_is_the_journal(store, "wf-start-again", start)
        assert start.journal is not None
        assert start.journal[1] == [
            dataclasses.replace(
                first, state=State.STARTED, started_at=AT, heartbeat_at=AT, attempts=3
            )
        ]
        assert start.journal[0].version == 2

    def test_heartbeat_after_a_start_counts_no_attempt(self, store: Store) -> None:
        pending_step(store, "wf-start-beat")
        assert store.start_step("wf-start-beat", 1, 0, STEP, AT, WAKE_BY).marked

        beat = AT + timedelta(seconds=10)
        assert store.heartbeat("wf-start-beat", 1, 0, beat, WAKE_BY) is True

        loaded = store.load("wf-start-beat")
        assert loaded is not None
        (step,) = loaded[1]
        assert (step.attempts, step.started_at, step.heartbeat_at) == (1, AT, beat)
        assert loaded[0].version == 2, "the beat bumped nothing"

    @pytest.mark.parametrize(
        ("status", "wake_at", "expected"),
        [
            (Status.RUNNING, None, WAKE_BY),  # unset: set
            (Status.RUNNING, WAKE_BY + timedelta(seconds=1), WAKE_BY),  # later: pulled
            (Status.RUNNING, WAKE_BY - timedelta(seconds=1), WAKE_BY - timedelta(seconds=1)),
            (Status.RUNNING, WAKE_BY, WAKE_BY),  # equal: kept
            (Status.PENDING, T0 + timedelta(hours=1), WAKE_BY),
            (Status.STUCK, None, None),  # parked: recovery does not look at it
            (Status.STUCK, T0 + timedelta(hours=1), T0 + timedelta(hours=1)),
        ],
    )
    def test_start_step_pulls_wake_at_of_live_instances_earlier_only(
        self,
        store: Store,
        status: Status,
        wake_at: datetime | None,
        expected: datetime | None,
    ) -> None:
        pending_step(store, "wf-start-wake", status=status, wake_at=wake_at)

        start = store.start_step("wf-start-wake", 1, 0, STEP, AT, WAKE_BY)

        assert start.marked is True
        assert_is_the_journal(store, "wf-start-wake", start)
        assert start.journal is not None
        instance = start.journal[0]
        assert instance.wake_at == expected
        assert (instance.status, instance.version) == (status, 2)

    @pytest.mark.parametrize(
        ("case", "run", "seq", "name"),
        [
            ("an earlier run", 1, 0, STEP),
            ("a later run", 3, 0, STEP),
            ("another name", 2, 0, "bank.other"),
            ("a timer", 2, 1, "bank.start_transfer_1"),
            ("a child", 2, 2, "bank.start_transfer_2"),
            ("a signal wait", 2, 3, "bank.start_transfer_3"),
            ("a local run", 2, 4, "bank.start_transfer_4"),
            ("a completed step", 2, 5, "bank.start_transfer_5"),
            ("a failed step", 2, 6, "bank.start_transfer_6"),
            ("a missing seq", 2, 7, "bank.start_transfer_7"),
        ],
    )
    def test_start_step_refuses_anything_but_a_pending_step_of_the_run(
        self, store: Store, case: str, run: int, seq: int, name: str
    ) -> None:
        pending_step(
            store,
            "wf-start-no",
            run=2,
            wake_at=T0 + timedelta(hours=1),
            events=[
                make_event(0),
                make_event(1, kind=Kind.TIMER),
                make_event(2, kind=Kind.CHILD),
                make_event(3, kind=Kind.SIGNAL),
                make_event(4, kind=Kind.RUN),
                completed(make_event(5)),
                failed(make_event(6)),
            ],
        )
        before = store.load("wf-start-no")

        start = store.start_step("wf-start-no", run, seq, name, AT, WAKE_BY)

        assert start.marked is False, case
        assert store.load("wf-start-no") == before, f"{case}: nothing written"
        assert start.journal == before, f"{case}: the journal as it is"

    @pytest.mark.parametrize("status", [Status.COMPLETED, Status.FAILED, Status.CANCELLED])
    def test_start_step_of_a_finished_instance_is_refused(
        self, store: Store, status: Status
    ) -> None:
        pending_step(store, "wf-start-done", status=status, wake_at=T0 + timedelta(hours=1))
        before = store.load("wf-start-done")

        start = store.start_step("wf-start-done", 1, 0, STEP, AT, WAKE_BY)

        assert start.marked is False
        assert store.load("wf-start-done") == before, "nothing written, not even the version"
        assert start.journal == before

    def test_start_step_of_a_missing_instance(self, store: Store) -> None:
        assert store.start_step("nope", 1, 0, STEP, AT, WAKE_BY) == StepStart(None, False)
        assert store.load("nope") is None

    def test_start_step_of_an_old_run_after_a_restart_is_refused(self, store: Store) -> None:
        """A straggler of run 1, delivered after ``continue_as_new``, finds run 2's step
        at its seq, with its name: it is not run 2's, and it is not marked."""
        pending_step(store, "wf-start-old")
        assert store.commit(
            Commit(
                "wf-start-old",
                1,
                Status.RUNNING,
                T0,
                restart_input="[[2], {}]",
                new_events=[make_event(0)],
            )
        )
        before = store.load("wf-start-old")

        start = store.start_step("wf-start-old", 1, 0, STEP, AT, WAKE_BY)

        assert start.marked is False
        assert store.load("wf-start-old") == before
        assert store.start_step("wf-start-old", 2, 0, STEP, AT, WAKE_BY).marked is True

    def test_commit_read_before_a_start_loses_its_compare_and_set(self, store: Store) -> None:
        pending_step(store, "wf-start-cas", wake_at=T0 + timedelta(hours=1))
        read = store.load("wf-start-cas")  # an orchestrator pass reads the journal...
        assert read is not None
        assert store.start_step("wf-start-cas", 1, 0, STEP, AT, WAKE_BY).marked
        marked = store.load("wf-start-cas")

        applied = store.commit(  # ...and would push wake_at back and resend the step
            Commit(
                "wf-start-cas",
                read[0].version,
                Status.RUNNING,
                T0 + timedelta(seconds=5),
                wake_at=T0 + timedelta(hours=1),
                resent=[0],
            )
        )

        assert applied is False, "the start mark bumped the version"
        assert store.load("wf-start-cas") == marked, "nothing written"

    @pytest.mark.parametrize("round_", range(12))
    def test_start_racing_a_commit_keeps_the_compare_and_set(
        self, store: Store, round_: int
    ) -> None:
        """A start mark and a commit read before it, released together: either the mark
        comes first and the commit fails, or the commit comes first and the mark applies
        to what it wrote (it resent the step, journaled its outcome, or added a step)."""
        instance_id = f"wf-start-race-{round_}"
        pending_step(store, instance_id, wake_at=T0 + timedelta(hours=1))
        kind = ("resend", "outcome", "new step")[round_ % 3]
        commit = Commit(
            instance_id,
            1,  # read before the mark
            Status.RUNNING,
            T0 + timedelta(seconds=5),
            wake_at=T0 + timedelta(hours=2),
            resent=[0] if kind == "resend" else (),
            outcomes=[completed(make_event(0))] if kind == "outcome" else (),
            new_events=[make_event(1)] if kind == "new step" else (),
        )

        # Released together, the commit tends to win; a head start for the mark in some
        # rounds has both orders (and near ties) happen.
        head_start = (0.0, 0.002, 0.005, 0.01)[round_ // 3]

        def race(i: int) -> StepStart | bool:
            if i == 0:
                return store.start_step(instance_id, 1, 0, STEP, AT, WAKE_BY)
            if head_start:
                time.sleep(head_start)
            return store.commit(commit)

        start, applied = run_together(2, race)

        assert isinstance(start, StepStart)
        loaded = store.load(instance_id)
        assert loaded is not None
        assert start.journal == loaded, "the journal after the mark, whoever won"
        instance, events = loaded
        if applied is False:
            assert start.marked is True, "the commit failed for no mark"
            assert instance.version == 2
            assert instance.wake_at == WAKE_BY
            assert events == [
                make_event(0, state=State.STARTED, started_at=AT, heartbeat_at=AT, attempts=1)
            ], "only the mark was written"
        elif kind == "outcome":
            assert start.marked is False, "a journaled step is never marked"
            assert instance.version == 2
            assert instance.wake_at == T0 + timedelta(hours=2)
            assert events == [completed(make_event(0))]
        else:
            assert start.marked is True
            assert instance.version == 3, "the commit, then the mark"
            assert instance.wake_at == WAKE_BY, "the mark pulled the commit's wake_at"
            assert events[0].state is State.STARTED
            assert events[0].attempts == 1
            assert len(events) == (2 if kind == "new step" else 1)

    # ------------------------------------------------------------------ reschedule_step

    def test_reschedule_step_waits_for_the_retry(self, store: Store) -> None:
        pending_step(store, "wf-resched", wake_at=T0 + timedelta(hours=1))
        assert store.start_step("wf-resched", 1, 0, STEP, AT, T0 + timedelta(hours=1)).marked
        due = AT + timedelta(minutes=10)

        applied = store.reschedule_step(
            "wf-resched", 1, 0, due.astimezone(ELSEWHERE), T0 + timedelta(minutes=20)
        )

        assert applied is True
        loaded = store.load("wf-resched")
        assert loaded is not None
        instance, (step,) = loaded
        assert step == make_event(
            0, state=State.SCHEDULED, started_at=None, heartbeat_at=due, attempts=1
        ), "scheduled until the retry is due; the attempt kept"
        assert_event_types([step])
        assert instance.version == 3, "the start, then the reschedule"
        assert instance.wake_at == T0 + timedelta(minutes=20), "pulled earlier"
        # The retry's message arrives and starts the step again.
        assert store.start_step("wf-resched", 1, 0, STEP, due, due + timedelta(minutes=1)).marked
        again = store.load("wf-resched")
        assert again is not None
        assert again[1][0].attempts == 2

    def test_a_late_beat_does_not_revive_a_step_waiting_for_its_retry(self, store: Store) -> None:
        pending_step(store, "wf-late", wake_at=T0 + timedelta(hours=1))
        assert store.start_step("wf-late", 1, 0, STEP, AT, T0 + timedelta(hours=1)).marked
        due = AT + timedelta(minutes=10)
        assert store.reschedule_step("wf-late", 1, 0, due, T0 + timedelta(minutes=20))

        # The run that asked for the retry beats once more, before the retry is due.
        beat = AT + timedelta(seconds=1)
        assert store.heartbeat("wf-late", 1, 0, beat, beat + timedelta(seconds=10)) is False
        loaded = store.load("wf-late")
        assert loaded is not None
        (step,) = loaded[1]
        assert (step.state, step.heartbeat_at, step.started_at) == (State.SCHEDULED, due, None)
        # The retry's own run beats as usual.
        assert store.start_step("wf-late", 1, 0, STEP, due, due + timedelta(minutes=1)).marked
        later = due + timedelta(seconds=2)
        assert store.heartbeat("wf-late", 1, 0, later, later + timedelta(seconds=10)) is True

    def test_reschedule_step_pulls_wake_at_earlier_only(self, store: Store) -> None:
        pending_step(store, "wf-resched-late", wake_at=T0 + timedelta(minutes=5))

        assert store.reschedule_step(
            "wf-resched-late", 1, 0, T0 + timedelta(minutes=8), T0 + timedelta(minutes=9)
        )

        instance = store.get("wf-resched-late")
        assert instance is not None
        assert instance.wake_at == T0 + timedelta(minutes=5), "later: kept"
        assert instance.version == 2

    @pytest.mark.parametrize(
        ("case", "run", "seq"),
        [
            ("a completed step", 1, 1),
            ("a failed step", 1, 2),
            ("another run", 2, 0),
            ("a missing seq", 1, 3),
        ],
    )
    def test_reschedule_step_refuses_a_step_no_longer_pending(
        self, store: Store, case: str, run: int, seq: int
    ) -> None:
        pending_step(
            store,
            "wf-resched-no",
            wake_at=T0 + timedelta(hours=1),
            events=[make_event(0), completed(make_event(1)), failed(make_event(2))],
        )
        before = store.load("wf-resched-no")

        applied = store.reschedule_step(
            "wf-resched-no", run, seq, T0 + timedelta(minutes=1), T0 + timedelta(minutes=2)
        )

        assert applied is False, case
        assert store.load("wf-resched-no") == before, f"{case}: nothing written"

    def test_reschedule_step_of_a_missing_instance(self, store: Store) -> None:
        assert store.reschedule_step("nope", 1, 0, T0, T0) is False
        assert store.load("nope") is None

    # ------------------------------------------------------------------ heartbeat runs

    def test_heartbeat_of_another_run_writes_nothing(self, store: Store) -> None:
        pending_step(store, "wf-hb-run", run=2, wake_at=T0 + timedelta(hours=1))
        before = store.load("wf-hb-run")

        for run in (1, 3):
            assert store.heartbeat("wf-hb-run", run, 0, AT, WAKE_BY) is False, f"run {run}"

        assert store.load("wf-hb-run") == before, "no beat, no attempt, no wake_at"
        assert store.heartbeat("wf-hb-run", 2, 0, AT, WAKE_BY) is True

    # ------------------------------------------------------------------ resends

    def test_resent_counts_a_resend_only_for_a_started_step(self, store: Store) -> None:
        pending_step(store, "wf-resends", events=[make_event(0), make_event(1)])
        assert store.start_step("wf-resends", 1, 0, STEP, AT, WAKE_BY).marked
        resent_at = T0 + timedelta(minutes=5)

        assert store.commit(Commit("wf-resends", 2, Status.RUNNING, resent_at, resent=[0, 1]))

        loaded = store.load("wf-resends")
        assert loaded is not None
        lost, queued = loaded[1]
        assert (lost.state, lost.resends, lost.attempts) == (State.SCHEDULED, 1, 1), (
            "started, then sent again: its worker was lost"
        )
        assert (queued.state, queued.resends) == (State.SCHEDULED, 0), (
            "sent again while it was still scheduled: not a loss"
        )
        assert queued.heartbeat_at == resent_at

        # Resent again before it started: no loss; started and lost again: one more.
        assert store.commit(Commit("wf-resends", 3, Status.RUNNING, resent_at, resent=[0]))
        assert store.start_step("wf-resends", 1, 0, STEP, AT, WAKE_BY).marked
        assert store.commit(Commit("wf-resends", 5, Status.RUNNING, resent_at, resent=[0]))
        loaded = store.load("wf-resends")
        assert loaded is not None
        assert [e.resends for e in loaded[1]] == [2, 0]
        assert loaded[1][0].attempts == 2

    def test_resends_of_a_step_started_by_its_heartbeat(self, store: Store) -> None:
        pending_step(store, "wf-resends-hb")
        assert store.heartbeat("wf-resends-hb", 1, 0, AT, WAKE_BY)

        assert store.commit(Commit("wf-resends-hb", 1, Status.RUNNING, T0, resent=[0]))

        loaded = store.load("wf-resends-hb")
        assert loaded is not None
        assert loaded[1][0].resends == 1

    def test_stale_resend_counts_nothing(self, store: Store) -> None:
        pending_step(store, "wf-resends-stale")
        assert store.start_step("wf-resends-stale", 1, 0, STEP, AT, WAKE_BY).marked
        before = store.load("wf-resends-stale")

        assert store.commit(Commit("wf-resends-stale", 1, Status.RUNNING, T0, resent=[0])) is False

        assert store.load("wf-resends-stale") == before
