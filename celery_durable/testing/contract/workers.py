"""The worker registry part of the store contract: beats of the step messages a worker
holds, and the release of the never-started ones when its beats stop."""

from __future__ import annotations

from datetime import timedelta

from celery_durable.engine.journal import State, Status
from celery_durable.stores.base import Commit, Store
from celery_durable.testing.contract.builders import T0, make_event, make_instance

LATER = T0 + timedelta(minutes=5)


def _running(store: Store, instance_id: str, events: int = 2) -> None:
    instance, _ = store.create(make_instance(instance_id, wake_at=T0 + timedelta(hours=1)))
    assert store.commit(
        Commit(
            instance_id,
            instance.version,
            Status.RUNNING,
            T0,
            new_events=[make_event(seq, heartbeat_at=T0) for seq in range(events)],
            wake_at=T0 + timedelta(hours=1),
        )
    )


class WorkerContract:
    """beat_worker, forget_worker, held_steps, release_dead_workers."""

    def test_a_dead_workers_unstarted_steps_are_released(self, store: Store) -> None:
        _running(store, "wf-held")
        store.beat_worker("w1", T0 + timedelta(seconds=1), [("wf-held", 1, 0), ("wf-held", 1, 1)])
        assert store.start_step(
            "wf-held", 1, 1, "bank.start_transfer_1", T0 + timedelta(seconds=2), LATER
        ).marked  # seq 1 started: its own heartbeats speak for it

        overdue = LATER - timedelta(minutes=5)
        assert store.release_dead_workers(T0 + timedelta(seconds=1), overdue, LATER) == 0
        released = store.release_dead_workers(T0 + timedelta(seconds=30), overdue, LATER)

        assert released == 1
        loaded = store.load("wf-held")
        assert loaded is not None
        instance, events = loaded
        assert (events[0].state, events[0].heartbeat_at) == (State.SCHEDULED, overdue)
        assert events[1].state is State.STARTED
        assert instance.wake_at is not None
        assert instance.wake_at <= LATER
        # The row is gone: a second tick releases nothing.
        assert store.release_dead_workers(T0 + timedelta(seconds=30), overdue, LATER) == 0

    def test_a_live_or_forgotten_worker_releases_nothing(self, store: Store) -> None:
        _running(store, "wf-live", events=1)
        store.beat_worker("w-live", T0, [("wf-live", 1, 0)])
        store.beat_worker("w-live", T0 + timedelta(seconds=40), [("wf-live", 1, 0)])
        store.beat_worker("w-gone", T0, [("wf-live", 1, 0)])
        store.forget_worker("w-gone")

        assert store.release_dead_workers(T0 + timedelta(seconds=30), T0, LATER) == 0
        loaded = store.load("wf-live")
        assert loaded is not None
        assert loaded[1][0].heartbeat_at == T0

    def test_a_step_sent_again_since_or_of_another_run_is_not_released(self, store: Store) -> None:
        _running(store, "wf-moved")
        store.beat_worker("w1", T0, [("wf-moved", 1, 0), ("wf-moved", 2, 1)])
        instance = store.get("wf-moved")
        assert instance is not None
        # Seq 0 was sent again after the worker's last beat.
        assert store.commit(
            Commit(
                "wf-moved",
                instance.version,
                Status.RUNNING,
                T0 + timedelta(seconds=10),
                resent=[0],
                wake_at=T0 + timedelta(hours=1),
            )
        )
        assert store.release_dead_workers(T0 + timedelta(seconds=30), T0, LATER) == 0

    def test_held_steps_names_every_row_and_whether_one_is_dead(self, store: Store) -> None:
        assert store.held_steps(T0) == (set(), False)
        store.beat_worker("w-old", T0, [("wf-a", 1, 0)])
        store.beat_worker("w-new", LATER, [("wf-b", 2, 3), ("wf-c", 1, 0)])

        held, dead = store.held_steps(T0 + timedelta(seconds=1))
        assert held == {("wf-a", 1, 0), ("wf-b", 2, 3), ("wf-c", 1, 0)}
        assert dead is True
        assert store.held_steps(T0)[1] is False  # beat at the limit: alive
        store.forget_worker("w-old")
        assert store.held_steps(LATER) == ({("wf-b", 2, 3), ("wf-c", 1, 0)}, False)

    def test_steps_a_dead_worker_scheduled_and_may_not_have_sent_are_released(
        self, store: Store
    ) -> None:
        sent_after = T0 + timedelta(seconds=5)
        long_before = T0 - timedelta(hours=1)
        store.create(
            make_instance("wf-o", status=Status.RUNNING, wake_at=T0 + timedelta(hours=1)),
            [
                make_event(0, state=State.COMPLETED, completed_at=T0),
                make_event(1, heartbeat_at=sent_after, scheduled_at=sent_after),
                make_event(2, heartbeat_at=long_before, scheduled_at=long_before),
                make_event(3, heartbeat_at=sent_after, scheduled_at=sent_after),
            ],
        )
        store.create(
            make_instance("wf-p", status=Status.RUNNING),
            [make_event(0, heartbeat_at=sent_after, scheduled_at=sent_after)],
        )
        store.beat_worker("dead", T0, [("wf-o", 1, 0), ("wf-p", -1, -1)])
        store.beat_worker("live", LATER, [("wf-o", 1, 3)])  # it holds seq 3's message
        overdue = T0 - timedelta(minutes=5)

        released = store.release_orphaned_steps(T0 + timedelta(seconds=1), overdue, LATER, 2.0)

        assert released == 2  # wf-o seq 1 (sent after the beat), wf-p seq 0 (its pass)
        loaded = store.load("wf-o")
        assert loaded is not None
        instance, events = loaded
        assert [e.heartbeat_at for e in events[1:]] == [overdue, long_before, sent_after]
        assert instance.wake_at == LATER
        other = store.load("wf-p")
        assert other is not None
        assert other[1][0].heartbeat_at == overdue
        assert store.held_steps(T0 + timedelta(seconds=1))[1] is True  # rows stay
        assert store.release_orphaned_steps(T0, overdue, LATER, 2.0) == 0  # nobody dead
