"""The recovery part of the store contract: what lets a lost step or instance be found.

``heartbeat`` (marks a pending step started, counts an attempt on a run's first beat,
pulls the instance's ``wake_at`` earlier, never later, without bumping the version),
``Commit.resent`` (a step sent again is scheduled anew, only if the commit applies), and
``claim_due`` (leases due live instances oldest first, each to one claimer only).
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta

import pytest

from celery_durable.engine.journal import State, Status
from celery_durable.stores.base import Commit, Store
from celery_durable.testing.contract.builders import (
    ELSEWHERE,
    T0,
    assert_event_types,
    completed,
    failed,
    make_event,
    make_instance,
    run_together,
)


class RecoveryContract:
    """Heartbeats and attempts, resent steps, and claiming due instances."""

    # ------------------------------------------------------------------ attempts

    def test_first_beat_of_each_run_counts_an_attempt(self, store: Store) -> None:
        store.create(make_instance("wf-att"))
        assert store.commit(Commit("wf-att", 0, Status.RUNNING, T0, new_events=[make_event(0)]))
        later = T0 + timedelta(days=1)

        assert store.heartbeat(
            "wf-att", 1, 0, (T0 + timedelta(seconds=1)).astimezone(ELSEWHERE), later
        )
        assert store.heartbeat("wf-att", 1, 0, T0 + timedelta(seconds=2), later)
        loaded = store.load("wf-att")
        assert loaded is not None
        instance, (step,) = loaded
        assert instance.version == 1, "a heartbeat must not bump the version"
        assert step.state is State.STARTED
        assert step.attempts == 1, "later beats of the same run count nothing"
        assert step.started_at == T0 + timedelta(seconds=1)
        assert_event_types([step])

        # The worker died; recovery sends the step again; the new run beats.
        assert store.commit(
            Commit("wf-att", 1, Status.RUNNING, T0 + timedelta(minutes=1), resent=[0])
        )
        resent = store.load("wf-att")
        assert resent is not None
        assert resent[1][0].state is State.SCHEDULED
        assert resent[1][0].started_at is None
        assert store.heartbeat("wf-att", 1, 0, T0 + timedelta(minutes=2), later)
        again = store.load("wf-att")
        assert again is not None
        assert again[1][0].attempts == 2
        assert again[1][0].started_at == T0 + timedelta(minutes=2)

    # ------------------------------------------------------------------ heartbeat

    def test_heartbeat_at_round_trip(self, store: Store) -> None:
        store.create(make_instance("wf-hb-rt"))
        beat = T0 + timedelta(seconds=3, microseconds=1)
        step = make_event(
            0, state=State.STARTED, attempts=1, heartbeat_at=beat.astimezone(ELSEWHERE)
        )
        assert store.commit(
            Commit("wf-hb-rt", 0, Status.RUNNING, T0, new_events=[step, make_event(1)])
        )

        loaded = store.load("wf-hb-rt")
        assert loaded is not None
        assert [e.heartbeat_at for e in loaded[1]] == [beat, None]
        assert_event_types(loaded[1])

        assert store.commit(Commit("wf-hb-rt", 1, Status.RUNNING, T0, outcomes=[completed(step)]))
        loaded = store.load("wf-hb-rt")
        assert loaded is not None
        assert loaded[1][0] == completed(step), "an outcome keeps the last sign of life"
        assert loaded[1][0].heartbeat_at == beat

    def _running_step(
        self,
        store: Store,
        instance_id: str,
        status: Status = Status.RUNNING,
        wake_at: datetime | None = None,
    ) -> None:
        """An instance with one pending step (seq 0), at version 1."""
        store.create(make_instance(instance_id))
        assert store.commit(
            Commit(instance_id, 0, status, T0, new_events=[make_event(0)], wake_at=wake_at)
        )

    def test_heartbeat_marks_a_pending_step(self, store: Store) -> None:
        self._running_step(store, "wf-hb", wake_at=T0 + timedelta(minutes=10))

        alive = store.heartbeat(
            "wf-hb",
            1,
            0,
            (T0 + timedelta(seconds=1)).astimezone(ELSEWHERE),
            T0 + timedelta(minutes=1),
        )

        assert alive is True
        loaded = store.load("wf-hb")
        assert loaded is not None
        instance, (step,) = loaded
        assert step == make_event(
            0,
            state=State.STARTED,
            attempts=1,
            started_at=T0 + timedelta(seconds=1),
            heartbeat_at=T0 + timedelta(seconds=1),
        ), "the first beat marks the step started and counts an attempt"
        assert_event_types([step])
        assert instance.wake_at == T0 + timedelta(minutes=1), "wake_at pulled earlier"
        assert instance.version == 1, "heartbeat must not bump the version"
        assert instance.updated_at == T0

    def test_heartbeat_pulls_wake_at_earlier_never_later(self, store: Store) -> None:
        self._running_step(store, "wf-hb-wake", wake_at=None)
        beats = [
            # (at, wake_by, expected wake_at afterwards)
            (1, 60, 60),  # unset: set
            (5, 120, 60),  # later: kept
            (9, 30, 30),  # earlier: pulled
            (12, 30, 30),  # equal: kept
        ]

        for at, wake_by, expected in beats:
            assert store.heartbeat(
                "wf-hb-wake", 1, 0, T0 + timedelta(seconds=at), T0 + timedelta(seconds=wake_by)
            )
            loaded = store.load("wf-hb-wake")
            assert loaded is not None
            instance, (step,) = loaded
            assert instance.wake_at == T0 + timedelta(seconds=expected), f"beat at {at}s"
            assert step.heartbeat_at == T0 + timedelta(seconds=at), "heartbeat_at moves"
            assert step.started_at == T0 + timedelta(seconds=1), "started_at is set once"
            assert instance.version == 1

    def test_heartbeat_keeps_started_at_of_a_started_step(self, store: Store) -> None:
        self._running_step(store, "wf-hb-started")
        assert store.heartbeat(
            "wf-hb-started", 1, 0, T0 + timedelta(seconds=2), T0 + timedelta(minutes=1)
        )

        assert store.heartbeat(
            "wf-hb-started", 1, 0, T0 + timedelta(seconds=7), T0 + timedelta(minutes=1)
        )

        loaded = store.load("wf-hb-started")
        assert loaded is not None
        (step,) = loaded[1]
        assert step.state is State.STARTED
        assert step.attempts == 1
        assert step.started_at == T0 + timedelta(seconds=2)
        assert step.heartbeat_at == T0 + timedelta(seconds=7)

    @pytest.mark.parametrize("status", [Status.PENDING, Status.RUNNING])
    def test_heartbeat_pulls_wake_at_of_live_instances(self, store: Store, status: Status) -> None:
        self._running_step(store, "wf-hb-live", status=status, wake_at=T0 + timedelta(hours=1))

        assert store.heartbeat("wf-hb-live", 1, 0, T0, T0 + timedelta(seconds=30))

        assert store.get("wf-hb-live") == make_instance(
            "wf-hb-live", status=status, version=1, wake_at=T0 + timedelta(seconds=30)
        )

    @pytest.mark.parametrize(
        ("status", "wake_at"),
        [
            (Status.COMPLETED, None),
            (Status.FAILED, None),
            (Status.STUCK, None),
            (Status.STUCK, T0 + timedelta(hours=1)),
        ],
    )
    def test_heartbeat_leaves_wake_at_of_other_instances(
        self, store: Store, status: Status, wake_at: datetime | None
    ) -> None:
        # A step still pending under a finished (or parked) instance: its worker beats on.
        self._running_step(store, "wf-hb-done", status=status, wake_at=wake_at)
        before = store.get("wf-hb-done")

        assert store.heartbeat("wf-hb-done", 1, 0, T0, T0 + timedelta(seconds=30)) is True

        assert store.get("wf-hb-done") == before
        loaded = store.load("wf-hb-done")
        assert loaded is not None
        assert loaded[1][0].heartbeat_at == T0

    @pytest.mark.parametrize("outcome", [State.COMPLETED, State.FAILED])
    def test_heartbeat_on_final_step_is_false(self, store: Store, outcome: State) -> None:
        self._running_step(store, "wf-hb-final", wake_at=T0 + timedelta(hours=1))
        done = completed(make_event(0)) if outcome is State.COMPLETED else failed(make_event(0))
        assert store.commit(
            Commit(
                "wf-hb-final",
                1,
                Status.RUNNING,
                T0,
                outcomes=[done],
                wake_at=T0 + timedelta(hours=1),
            )
        )
        before = store.load("wf-hb-final")

        alive = store.heartbeat("wf-hb-final", 1, 0, T0, T0 + timedelta(seconds=30))

        assert alive is False
        assert store.load("wf-hb-final") == before, "nothing is written"

    def test_heartbeat_on_missing_event_is_false(self, store: Store) -> None:
        self._running_step(store, "wf-hb-none", wake_at=T0 + timedelta(hours=1))
        before = store.load("wf-hb-none")

        assert store.heartbeat("wf-hb-none", 1, 1, T0, T0 + timedelta(seconds=30)) is False
        assert store.heartbeat("nope", 1, 0, T0, T0 + timedelta(seconds=30)) is False

        assert store.load("wf-hb-none") == before
        assert store.load("nope") is None

    # ------------------------------------------------------------------ resent steps

    def _sent_steps(self, store: Store, instance_id: str) -> None:
        """Steps 0 (started, beating), 1 (completed), 2 (scheduled); version 2."""
        store.create(make_instance(instance_id))
        assert store.commit(
            Commit(
                instance_id,
                0,
                Status.RUNNING,
                T0,
                new_events=[make_event(0), make_event(1), make_event(2)],
            )
        )
        assert store.heartbeat(instance_id, 1, 0, T0 + timedelta(seconds=1), T0 + timedelta(days=1))
        assert store.heartbeat(instance_id, 1, 0, T0 + timedelta(seconds=2), T0 + timedelta(days=1))
        assert store.heartbeat(instance_id, 1, 1, T0 + timedelta(seconds=1), T0 + timedelta(days=1))
        assert store.commit(
            Commit(
                instance_id,
                1,
                Status.RUNNING,
                T0,
                outcomes=[completed(make_event(1, started_at=T0 + timedelta(seconds=1)))],
            )
        )

    def test_commit_renews_resent_steps(self, store: Store) -> None:
        self._sent_steps(store, "wf-resent")
        before = store.load("wf-resent")
        assert before is not None
        resent_at = T0 + timedelta(hours=1)

        assert store.commit(
            Commit(
                "wf-resent",
                2,
                Status.RUNNING,
                resent_at.astimezone(ELSEWHERE),
                resent=[0, 1, 7],  # 1 is final, 7 does not exist: both left alone
            )
        )

        loaded = store.load("wf-resent")
        assert loaded is not None
        assert loaded[0].version == 3
        step0, step1, step2 = loaded[1]
        assert step0 == dataclasses.replace(
            before[1][0],
            state=State.SCHEDULED,
            started_at=None,
            heartbeat_at=resent_at,
            resends=1,
        ), "sent again: scheduled, not started; its attempts are kept, its loss counted"
        assert step0.attempts == 1
        assert step1 == before[1][1]
        assert step2 == before[1][2]
        assert_event_types(loaded[1])

    def test_resent_step_of_a_stale_commit_is_left_alone(self, store: Store) -> None:
        self._sent_steps(store, "wf-resent-stale")
        before = store.load("wf-resent-stale")

        applied = store.commit(
            Commit("wf-resent-stale", 1, Status.RUNNING, T0 + timedelta(hours=1), resent=[0, 2])
        )

        assert applied is False
        assert store.load("wf-resent-stale") == before

    def test_resent_step_of_a_refused_commit_is_left_alone(self, store: Store) -> None:
        self._sent_steps(store, "wf-resent-refused")
        before = store.load("wf-resent-refused")

        applied = store.commit(
            Commit(
                "wf-resent-refused",
                2,
                Status.RUNNING,
                T0 + timedelta(hours=1),
                outcomes=[completed(make_event(1), '"again"')],  # already final: refused
                resent=[0, 2],
            )
        )

        assert applied is False
        assert store.load("wf-resent-refused") == before

    def test_outcome_and_resend_of_one_step_journal_the_outcome(self, store: Store) -> None:
        self._sent_steps(store, "wf-resent-done")
        outcome = completed(make_event(0, started_at=T0 + timedelta(seconds=1), attempts=1))

        assert store.commit(
            Commit(
                "wf-resent-done",
                2,
                Status.RUNNING,
                T0 + timedelta(hours=1),
                outcomes=[outcome],
                resent=[0, 2],
            )
        )

        loaded = store.load("wf-resent-done")
        assert loaded is not None
        step0, _, step2 = loaded[1]
        assert step0 == dataclasses.replace(outcome, heartbeat_at=T0 + timedelta(seconds=2))
        assert step2 == make_event(2, heartbeat_at=T0 + timedelta(hours=1))

    # ------------------------------------------------------------------ claim_due

    def test_claim_due_takes_due_live_instances_oldest_first(self, store: Store) -> None:
        specs: list[tuple[str, Status, datetime | None]] = [
            ("due-3", Status.RUNNING, T0 - timedelta(minutes=3)),
            ("due-1", Status.PENDING, T0 - timedelta(minutes=1)),
            ("due-now", Status.RUNNING, T0),
            ("due-2", Status.RUNNING, (T0 - timedelta(minutes=2)).astimezone(ELSEWHERE)),
            ("later", Status.RUNNING, T0 + timedelta(minutes=2)),
            ("no-wake", Status.RUNNING, None),
            ("completed", Status.COMPLETED, T0 - timedelta(hours=1)),
            ("failed", Status.FAILED, T0 - timedelta(hours=1)),
            ("stuck", Status.STUCK, T0 - timedelta(hours=1)),
            ("cancelled", Status.CANCELLED, T0 - timedelta(hours=1)),
        ]
        for instance_id, status, wake_at in specs:
            store.create(make_instance(instance_id, status=status, wake_at=wake_at))
        lease = T0 + timedelta(minutes=5)

        claimed = store.claim_due(T0, lease.astimezone(ELSEWHERE), 10)

        assert claimed == ["due-3", "due-2", "due-1", "due-now"]
        for instance_id, status, wake_at in specs:
            expected = lease if instance_id in claimed else wake_at
            assert store.get(instance_id) == make_instance(
                instance_id, status=status, wake_at=expected
            ), "only the claimed wake_at moves; the version stays"
        assert store.claim_due(T0, lease, 10) == [], "claimed instances are leased"
        assert store.claim_due(T0 + timedelta(minutes=1), lease, 10) == []
        assert store.claim_due(T0 + timedelta(minutes=2), lease, 10) == ["later"]

        again = store.claim_due(lease, lease + timedelta(minutes=5), 10)

        assert sorted(again) == sorted([*claimed, "later"]), "a lease that runs out comes due"

    def test_claim_due_respects_limit(self, store: Store) -> None:
        for i in range(5):
            store.create(
                make_instance(
                    f"wf-due-{i}", status=Status.RUNNING, wake_at=T0 - timedelta(seconds=5 - i)
                )
            )
        lease = T0 + timedelta(minutes=1)

        assert store.claim_due(T0, lease, 0) == []
        assert store.claim_due(T0, lease, 2) == ["wf-due-0", "wf-due-1"]
        assert store.claim_due(T0, lease, 2) == ["wf-due-2", "wf-due-3"]
        assert store.claim_due(T0, lease, 2) == ["wf-due-4"]
        assert store.claim_due(T0, lease, 2) == []

    def test_claim_due_of_empty_store(self, store: Store) -> None:
        assert store.claim_due(T0, T0 + timedelta(minutes=1), 10) == []

    @pytest.mark.parametrize("round_", range(3))
    def test_concurrent_claims_take_each_instance_once(self, store: Store, round_: int) -> None:
        ids = [f"wf-tick-{round_}-{i:03d}" for i in range(200)]
        for i, instance_id in enumerate(ids):
            wake_at = T0 - timedelta(seconds=i % 7, microseconds=i)
            store.create(make_instance(instance_id, status=Status.RUNNING, wake_at=wake_at))
        lease = T0 + timedelta(minutes=1)

        def tick(_: int) -> list[str]:
            taken: list[str] = []
            while batch := store.claim_due(T0, lease, 10):
                assert len(batch) <= 10
                taken.extend(batch)
            return taken

        first, second = run_together(2, tick)

        assert len(first) + len(second) == len(ids), "an instance was claimed twice"
        assert sorted(first + second) == ids
        assert all(store.get(i).wake_at == lease for i in ids)  # type: ignore[union-attr]
