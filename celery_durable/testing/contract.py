"""The contract every journal store keeps, as a pytest suite.

Subclass :class:`StoreContract` in a test module and give it a ``store`` fixture that
yields a fresh, empty store (and closes it afterwards); pytest then runs every
``test_*`` method below against that store::

    import pytest
    from celery_durable.stores.sqlalchemy import SQLAlchemyStore
    from celery_durable.testing.contract import StoreContract


    class TestSQLite(StoreContract):
        @pytest.fixture
        def store(self, tmp_path):
            store = SQLAlchemyStore(f"sqlite:///{tmp_path / 'journal.sqlite3'}")
            yield store
            store.close()

The store must be usable from several threads at once (the concurrency tests use
threads). This module imports pytest; nothing else in celery_durable imports it.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import TypeVar

import pytest

from celery_durable.engine.journal import Event, Failure, Instance, Kind, State, Status
from celery_durable.stores.base import Commit, Store

__all__ = ["StoreContract"]

T0 = datetime(2024, 5, 17, 9, 30, 15, 123456, tzinfo=timezone.utc)
"""A fixed time with microseconds; the tests add offsets to it."""

ELSEWHERE = timezone(timedelta(hours=5, minutes=30))
"""A zone other than UTC: stores must return the same instant, in UTC."""

_T = TypeVar("_T")


def make_instance(instance_id: str = "wf-1", **fields: object) -> Instance:
    """An instance with plausible defaults; ``fields`` override them."""
    values: dict[str, object] = {
        "id": instance_id,
        "workflow": "money_transfer",
        "status": Status.PENDING,
        "input": '[["user1", "user2", "1000"], {}]',
        "serializer": "json",
        "created_at": T0,
        "updated_at": T0,
    }
    values.update(fields)
    return Instance(**values)  # type: ignore[arg-type]


def make_event(seq: int, **fields: object) -> Event:
    """A scheduled step event with plausible defaults; ``fields`` override them."""
    values: dict[str, object] = {
        "seq": seq,
        "kind": Kind.STEP,
        "name": f"bank.start_transfer_{seq}",
        "input": f'[["user{seq}", -{seq}], {{}}]',
        "state": State.SCHEDULED,
        "scheduled_at": T0 + timedelta(seconds=seq),
    }
    values.update(fields)
    return Event(**values)  # type: ignore[arg-type]


def completed(event: Event, output: str = '"tran-1"', at: datetime = T0) -> Event:
    """``event`` with a COMPLETED outcome."""
    return dataclasses.replace(
        event, state=State.COMPLETED, output=output, completed_at=at + timedelta(minutes=1)
    )


def failed(event: Event, failure: Failure | None = None, at: datetime = T0) -> Event:
    """``event`` with a FAILED outcome."""
    return dataclasses.replace(
        event,
        state=State.FAILED,
        failure=failure or Failure("TransferFailed", "insufficient funds", "Traceback ..."),
        completed_at=at + timedelta(minutes=1),
    )


def run_together(count: int, fn: Callable[[int], _T]) -> list[_T]:
    """Run ``fn(0) .. fn(count - 1)`` in threads released at the same instant."""
    barrier = threading.Barrier(count)

    def call(i: int) -> _T:
        barrier.wait(timeout=30)
        return fn(i)

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(call, range(count)))


def assert_utc(*values: datetime | None) -> None:
    """Each value is ``None`` or an aware datetime in UTC."""
    for value in values:
        if value is not None:
            assert value.utcoffset() == timedelta(0), f"{value!r} is not in UTC"


def assert_instance_types(instance: Instance) -> None:
    """Enums come back as enums, timestamps as aware UTC datetimes."""
    assert type(instance.status) is Status
    assert_utc(instance.created_at, instance.updated_at, instance.wake_at)


def assert_event_types(events: Sequence[Event]) -> None:
    """Enums come back as enums, timestamps as aware UTC datetimes."""
    for e in events:
        assert type(e.kind) is Kind
        assert type(e.state) is State
        assert_utc(e.scheduled_at, e.started_at, e.completed_at, e.heartbeat_at)


class StoreContract:
    """The store contract. Subclasses provide a ``store`` fixture (a fresh, empty store)."""

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
        assert store.load("wf-round-trip") == (instance, [])

    def test_round_trip_of_empty_optional_fields(self, store: Store) -> None:
        instance = make_instance("wf-minimal", input="")

        store.create(instance)

        assert store.get("wf-minimal") == instance

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
        assert store.heartbeat("wf-started", 0, T0 + timedelta(seconds=5), T0 + timedelta(days=1))

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

    # ------------------------------------------------------------------ attempts

    def test_first_beat_of_each_run_counts_an_attempt(self, store: Store) -> None:
        store.create(make_instance("wf-att"))
        assert store.commit(Commit("wf-att", 0, Status.RUNNING, T0, new_events=[make_event(0)]))
        later = T0 + timedelta(days=1)

        assert store.heartbeat(
            "wf-att", 0, (T0 + timedelta(seconds=1)).astimezone(ELSEWHERE), later
        )
        assert store.heartbeat("wf-att", 0, T0 + timedelta(seconds=2), later)
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
        assert store.heartbeat("wf-att", 0, T0 + timedelta(minutes=2), later)
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
                "wf-hb-wake", 0, T0 + timedelta(seconds=at), T0 + timedelta(seconds=wake_by)
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
            "wf-hb-started", 0, T0 + timedelta(seconds=2), T0 + timedelta(minutes=1)
        )

        assert store.heartbeat(
            "wf-hb-started", 0, T0 + timedelta(seconds=7), T0 + timedelta(minutes=1)
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

        assert store.heartbeat("wf-hb-live", 0, T0, T0 + timedelta(seconds=30))

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

        assert store.heartbeat("wf-hb-done", 0, T0, T0 + timedelta(seconds=30)) is True

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

        alive = store.heartbeat("wf-hb-final", 0, T0, T0 + timedelta(seconds=30))

        assert alive is False
        assert store.load("wf-hb-final") == before, "nothing is written"

    def test_heartbeat_on_missing_event_is_false(self, store: Store) -> None:
        self._running_step(store, "wf-hb-none", wake_at=T0 + timedelta(hours=1))
        before = store.load("wf-hb-none")

        assert store.heartbeat("wf-hb-none", 1, T0, T0 + timedelta(seconds=30)) is False
        assert store.heartbeat("nope", 0, T0, T0 + timedelta(seconds=30)) is False

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
        assert store.heartbeat(instance_id, 0, T0 + timedelta(seconds=1), T0 + timedelta(days=1))
        assert store.heartbeat(instance_id, 0, T0 + timedelta(seconds=2), T0 + timedelta(days=1))
        assert store.heartbeat(instance_id, 1, T0 + timedelta(seconds=1), T0 + timedelta(days=1))
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
            before[1][0], state=State.SCHEDULED, started_at=None, heartbeat_at=resent_at
        ), "sent again: scheduled, not started; its attempts are kept"
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
