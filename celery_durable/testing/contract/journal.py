"""The journal part of the store contract: instances and their events.

Creating an instance (idempotent, one winner among concurrent creates), reading it back
(``get``, ``load``, ``list``) field for field and in UTC, and ``commit``: the
compare-and-set on the instance version (a stale or racing commit writes nothing), new
events, and outcomes (an outcome for a final or missing event refuses the whole commit).
Also: a store stays usable after ``close``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import timedelta

import pytest

from celery_durable.engine.journal import Failure, Instance, Kind, State, Status
from celery_durable.stores.base import Commit, Store
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


class JournalContract:
    """Create, get, load, list, and commit with its compare-and-set, events and outcomes."""

    # ------------------------------------------------------------------ create / get / load

    def test_create_get_load_round_trip(self, store: Store) -> None:
        instance = make_instance(
            "wf-round-trip",
            status=Status.STUCK,
            input='[["a", 1], {"k": "v"}]',
            serializer="json",
            created_at=T0.astimezone(ELSEWHERE),
            updated_at=T0 + timedelta(days=400, microseconds=7),
            version=3,
            output='{"result": "ok"}',
            failure=Failure("NonDeterminismError", "step 2 changed", "Traceback (most ...)"),
            wake_at=(T0 + timedelta(days=30)).astimezone(ELSEWHERE),
            custom_status='"waiting for e-mail"',
            parent_id="wf-parent",
            inbox=4,
            cancel_requested=True,
        )

        stored, created = store.create(instance)

        assert created is True
        assert stored == instance
        got = store.get("wf-round-trip")
        assert got == instance
        assert got is not None
        assert_instance_types(got)
        assert got.failure == Failure(
            "NonDeterminismError", "step 2 changed", "Traceback (most ...)"
        )
        assert got.cancel_requested is True
        assert store.load("wf-round-trip") == (instance, [])
        assert store.list() == [instance]
        assert store.get_many(["wf-round-trip"]) == [instance]

    def test_cancelled_status_round_trip(self, store: Store) -> None:
        cancelled = make_instance(
            "wf-cancelled",
            status=Status.CANCELLED,
            version=7,
            failure=Failure("WorkflowCancelled", "cancelled by the caller"),
            wake_at=T0 - timedelta(hours=1),
            cancel_requested=True,
        )
        store.create(cancelled)

        got = store.get("wf-cancelled")
        assert got == cancelled
        assert got is not None
        assert got.status is Status.CANCELLED
        assert store.load("wf-cancelled") == (cancelled, [])
        assert store.list(status=Status.CANCELLED) == [cancelled]
        assert store.claim_due(T0, T0 + timedelta(minutes=1), 10) == [], (
            "cancelled is final: never claimed, even with a due wake_at"
        )
        assert store.get("wf-cancelled") == cancelled

    def test_round_trip_of_empty_optional_fields(self, store: Store) -> None:
        instance = make_instance("wf-minimal", input="")

        store.create(instance)

        assert store.get("wf-minimal") == instance
        assert instance.cancel_requested is False
        loaded = store.load("wf-minimal")
        assert loaded is not None
        assert loaded[0].cancel_requested is False

    def test_unknown_instance_is_none(self, store: Store) -> None:
        assert store.get("nope") is None
        assert store.load("nope") is None

    def test_load_is_consistent_during_commits(self, store: Store) -> None:
        store.create(make_instance("wf-snapshot"))
        commits = 150
        done = threading.Event()

        def write() -> None:
            try:
                for version in range(commits):
                    # One event per commit: a consistent read has `version` events.
                    new = [make_event(version)]
                    assert store.commit(
                        Commit("wf-snapshot", version, Status.RUNNING, T0, new_events=new)
                    )
            finally:
                done.set()

        writer = threading.Thread(target=write)
        writer.start()
        loads = 0
        try:
            while not done.is_set() or loads == 0:
                loaded = store.load("wf-snapshot")
                assert loaded is not None
                instance, events = loaded
                assert len(events) == instance.version, "events and version from different moments"
                loads += 1
        finally:
            writer.join()
        loaded = store.load("wf-snapshot")
        assert loaded is not None
        assert loaded[0].version == commits

    def test_create_with_the_first_pass_events(self, store: Store) -> None:
        instance = make_instance("wf-first", status=Status.RUNNING, wake_at=T0)
        first = [
            make_event(0, kind=Kind.RUN, state=State.COMPLETED, output='"id-1"', completed_at=T0),
            make_event(1, input='[["a"], {}]'),
        ]

        stored, created = store.create(instance, first)

        assert created is True
        assert stored == instance
        assert store.load("wf-first") == (instance, first)
        # A duplicate id inserts neither the instance nor its events.
        again, created = store.create(
            make_instance("wf-first", input='[["other"], {}]'), [make_event(0, name="other")]
        )
        assert created is False
        assert again == instance
        assert store.load("wf-first") == (instance, first)

    def test_create_is_idempotent(self, store: Store) -> None:
        first = make_instance("wf-dup", input='[["first"], {}]')
        store.create(first)

        existing, created = store.create(
            make_instance("wf-dup", input='[["second"], {}]', workflow="other")
        )

        assert created is False
        assert existing == first
        assert store.get("wf-dup") == first

    def test_concurrent_creates_make_one_instance(self, store: Store) -> None:
        results = run_together(
            6, lambda i: store.create(make_instance("wf-race", input=f'[["{i}"], {{}}]'))
        )

        assert sorted(created for _, created in results) == [False] * 5 + [True]
        stored = store.get("wf-race")
        assert stored is not None
        assert all(instance == stored for instance, _ in results)

    # ------------------------------------------------------------------ commit

    def test_commit_applies_and_bumps_version(self, store: Store) -> None:
        store.create(make_instance("wf-c"))
        failure = Failure("ValueError", "bad", None)

        applied = store.commit(
            Commit(
                "wf-c",
                expected_version=0,
                status=Status.FAILED,
                updated_at=(T0 + timedelta(hours=1)).astimezone(ELSEWHERE),
                output='"out"',
                failure=failure,
                new_events=[make_event(0)],
                wake_at=T0 + timedelta(days=365),
                custom_status='"step 1"',
            )
        )

        assert applied is True
        loaded = store.load("wf-c")
        assert loaded is not None
        instance, events = loaded
        assert instance == make_instance(
            "wf-c",
            status=Status.FAILED,
            version=1,
            updated_at=T0 + timedelta(hours=1),
            output='"out"',
            failure=failure,
            wake_at=T0 + timedelta(days=365),
            custom_status='"step 1"',
        )
        assert_instance_types(instance)
        assert events == [make_event(0)]

    def test_commit_writes_none_to_clear_fields(self, store: Store) -> None:
        store.create(
            make_instance(
                "wf-clear",
                failure=Failure("E", "m"),
                wake_at=T0,
                custom_status='"x"',
                output='"o"',
            )
        )

        assert store.commit(Commit("wf-clear", 0, Status.RUNNING, T0 + timedelta(seconds=1)))

        assert store.get("wf-clear") == make_instance(
            "wf-clear", status=Status.RUNNING, version=1, updated_at=T0 + timedelta(seconds=1)
        )

    def test_successive_commits(self, store: Store) -> None:
        store.create(make_instance("wf-seq"))

        for version in range(5):
            assert store.commit(
                Commit("wf-seq", version, Status.RUNNING, T0, new_events=[make_event(version)])
            )

        loaded = store.load("wf-seq")
        assert loaded is not None
        assert loaded[0].version == 5
        assert [e.seq for e in loaded[1]] == [0, 1, 2, 3, 4]

    def test_stale_commit_writes_nothing(self, store: Store) -> None:
        store.create(make_instance("wf-stale"))
        assert store.commit(
            Commit("wf-stale", 0, Status.RUNNING, T0, new_events=[make_event(0), make_event(1)])
        )
        before = store.load("wf-stale")

        applied = store.commit(
            Commit(
                "wf-stale",
                expected_version=0,
                status=Status.COMPLETED,
                updated_at=T0 + timedelta(days=1),
                output='"late"',
                wake_at=T0,
                custom_status='"late"',
                new_events=[make_event(2)],
                outcomes=[completed(make_event(0))],
            )
        )

        assert applied is False
        assert store.load("wf-stale") == before

    def test_commit_ahead_of_version_fails(self, store: Store) -> None:
        store.create(make_instance("wf-ahead"))

        assert store.commit(Commit("wf-ahead", 1, Status.RUNNING, T0)) is False
        assert store.get("wf-ahead") == make_instance("wf-ahead")

    def test_commit_to_unknown_instance_fails(self, store: Store) -> None:
        assert store.commit(Commit("nope", 0, Status.RUNNING, T0, new_events=[make_event(0)])) is (
            False
        )
        assert store.load("nope") is None

    @pytest.mark.parametrize("round_", range(5))
    def test_concurrent_commits_one_wins(self, store: Store, round_: int) -> None:
        instance_id = f"wf-contended-{round_}"
        store.create(make_instance(instance_id))
        assert store.commit(Commit(instance_id, 0, Status.RUNNING, T0))

        def attempt(i: int) -> bool:
            return store.commit(
                Commit(
                    instance_id,
                    expected_version=1,
                    status=Status.RUNNING,
                    updated_at=T0,
                    custom_status=f'"{i}"',
                    new_events=[make_event(0, name=f"writer-{i}")],
                )
            )

        results = run_together(4, attempt)

        assert results.count(True) == 1
        winner = results.index(True)
        loaded = store.load(instance_id)
        assert loaded is not None
        instance, events = loaded
        assert instance.version == 2
        assert instance.custom_status == f'"{winner}"'
        assert [e.name for e in events] == [f"writer-{winner}"]

    # ------------------------------------------------------------------ outcomes

    def test_outcomes_are_journaled(self, store: Store) -> None:
        store.create(make_instance("wf-out"))
        assert store.commit(
            Commit("wf-out", 0, Status.RUNNING, T0, new_events=[make_event(0), make_event(1)])
        )
        step0, step1 = completed(make_event(0), '"tran-7"'), failed(make_event(1))

        assert store.commit(
            Commit(
                "wf-out", 1, Status.RUNNING, T0, outcomes=[step0, step1], new_events=[make_event(2)]
            )
        )

        loaded = store.load("wf-out")
        assert loaded is not None
        assert loaded[1] == [step0, step1, make_event(2)]
        assert_event_types(loaded[1])

    def test_outcome_of_a_started_step(self, store: Store) -> None:
        store.create(make_instance("wf-started"))
        assert store.commit(Commit("wf-started", 0, Status.RUNNING, T0, new_events=[make_event(0)]))
        assert store.heartbeat(
            "wf-started", 1, 0, T0 + timedelta(seconds=5), T0 + timedelta(days=1)
        )

        assert store.commit(
            Commit("wf-started", 1, Status.RUNNING, T0, outcomes=[completed(make_event(0))])
        )

        loaded = store.load("wf-started")
        assert loaded is not None
        (step,) = loaded[1]
        assert step.state is State.COMPLETED
        assert step.output == '"tran-1"'
        assert step.attempts == 1
        assert step.started_at == T0 + timedelta(seconds=5)

    def test_outcome_for_final_event_fails_whole_commit(self, store: Store) -> None:
        store.create(make_instance("wf-fww"))
        assert store.commit(
            Commit("wf-fww", 0, Status.RUNNING, T0, new_events=[make_event(0), make_event(1)])
        )
        assert store.commit(
            Commit("wf-fww", 1, Status.RUNNING, T0, outcomes=[completed(make_event(0), '"first"')])
        )
        before = store.load("wf-fww")

        applied = store.commit(
            Commit(
                "wf-fww",
                expected_version=2,
                status=Status.COMPLETED,
                updated_at=T0 + timedelta(days=1),
                output='"second"',
                # The pending event first, so a store that writes as it goes must undo it.
                outcomes=[completed(make_event(1)), completed(make_event(0), '"second"')],
                new_events=[make_event(2)],
            )
        )

        assert applied is False
        assert store.load("wf-fww") == before

    def test_outcome_for_missing_event_fails_whole_commit(self, store: Store) -> None:
        store.create(make_instance("wf-missing"))
        assert store.commit(Commit("wf-missing", 0, Status.RUNNING, T0, new_events=[make_event(0)]))
        before = store.load("wf-missing")

        applied = store.commit(
            Commit(
                "wf-missing",
                1,
                Status.RUNNING,
                T0,
                outcomes=[completed(make_event(0)), completed(make_event(7))],
            )
        )

        assert applied is False
        assert store.load("wf-missing") == before

    # ------------------------------------------------------------------ events

    def test_new_events_round_trip_in_seq_order(self, store: Store) -> None:
        store.create(make_instance("wf-events"))
        events = [
            make_event(
                2,
                kind=Kind.RUN,
                name="make_id",
                input=None,
                state=State.COMPLETED,
                output='"id-1"',
                completed_at=T0.astimezone(ELSEWHERE),
            ),
            make_event(0),
            failed(make_event(1, started_at=T0, attempts=3)),
            make_event(10, state=State.STARTED, started_at=T0.astimezone(ELSEWHERE), attempts=1),
            make_event(11, heartbeat_at=(T0 + timedelta(seconds=11)).astimezone(ELSEWHERE)),
        ]

        assert store.commit(Commit("wf-events", 0, Status.RUNNING, T0, new_events=events))

        loaded = store.load("wf-events")
        assert loaded is not None
        assert loaded[1] == sorted(events, key=lambda e: e.seq)
        assert_event_types(loaded[1])

    def test_events_belong_to_their_instance(self, store: Store) -> None:
        store.create(make_instance("wf-a"))
        store.create(make_instance("wf-b"))
        assert store.commit(Commit("wf-a", 0, Status.RUNNING, T0, new_events=[make_event(0)]))
        assert store.commit(
            Commit("wf-b", 0, Status.RUNNING, T0, new_events=[make_event(0, name="b")])
        )

        assert store.commit(
            Commit("wf-a", 1, Status.RUNNING, T0, outcomes=[completed(make_event(0))])
        )

        loaded = store.load("wf-b")
        assert loaded is not None
        assert loaded[1] == [make_event(0, name="b")]

    # ------------------------------------------------------------------ list

    def test_list_newest_first_filtered_and_limited(self, store: Store) -> None:
        specs = [
            ("wf-0", "transfer", Status.COMPLETED),
            ("wf-1", "register", Status.RUNNING),
            ("wf-2", "transfer", Status.RUNNING),
            ("wf-3", "transfer", Status.FAILED),
            ("wf-4", "register", Status.RUNNING),
        ]
        for i, (instance_id, workflow, status) in enumerate(specs):
            store.create(
                make_instance(
                    instance_id,
                    workflow=workflow,
                    status=status,
                    created_at=T0 + timedelta(minutes=i),
                )
            )

        def ids(instances: Sequence[Instance]) -> list[str]:
            return [i.id for i in instances]

        assert ids(store.list()) == ["wf-4", "wf-3", "wf-2", "wf-1", "wf-0"]
        assert ids(store.list(status=Status.RUNNING)) == ["wf-4", "wf-2", "wf-1"]
        assert ids(store.list(workflow="transfer")) == ["wf-3", "wf-2", "wf-0"]
        assert ids(store.list(status=Status.RUNNING, workflow="transfer")) == ["wf-2"]
        assert ids(store.list(limit=2)) == ["wf-4", "wf-3"]
        assert ids(store.list(status=Status.STUCK)) == []
        listed = store.list(workflow="register")
        assert listed[0] == store.get("wf-4")
        assert_instance_types(listed[0])

    def test_list_of_empty_store(self, store: Store) -> None:
        assert store.list() == []

    # ------------------------------------------------------------------ close

    def test_usable_after_close(self, store: Store) -> None:
        store.create(make_instance("wf-close"))

        store.close()

        assert store.get("wf-close") == make_instance("wf-close")
        assert store.commit(Commit("wf-close", 0, Status.RUNNING, T0))
