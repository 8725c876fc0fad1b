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

from celery_durable.engine.journal import Event, Failure, Instance, Kind, Signal, State, Status
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

    # ------------------------------------------------------------------ signals

    def _send(
        self,
        store: Store,
        instance_id: str,
        name: str = "approved",
        payload: str | None = '"yes"',
        at: datetime = T0,
        wake_by: datetime = T0 + timedelta(minutes=1),
    ) -> Signal:
        """Send a signal to a live instance; the signal stored (the newest of the inbox)."""
        assert store.send_signal(instance_id, name, payload, at, wake_by) is not None
        return store.signals(instance_id)[-1]

    def test_send_signal_to_a_running_instance(self, store: Store) -> None:
        store.create(
            make_instance(
                "wf-sig", status=Status.RUNNING, version=3, wake_at=T0 + timedelta(hours=1)
            )
        )
        before = store.get("wf-sig")
        sent_at = (T0 + timedelta(seconds=5, microseconds=1)).astimezone(ELSEWHERE)

        returned = store.send_signal(
            "wf-sig", "approved", '{"by": "bob"}', sent_at, T0 + timedelta(minutes=1)
        )

        assert returned == before, "the instance as it was before the signal"
        assert returned is not None
        assert_instance_types(returned)
        assert store.get("wf-sig") == make_instance(
            "wf-sig", status=Status.RUNNING, version=4, wake_at=T0 + timedelta(minutes=1), inbox=1
        ), "inbox counted, wake_at pulled, version bumped (an earlier read must not commit)"
        (signal,) = store.signals("wf-sig")
        assert signal == Signal(
            signal.id, "approved", '{"by": "bob"}', T0 + timedelta(seconds=5, microseconds=1)
        )
        assert type(signal.id) is int
        assert_utc(signal.sent_at)
        loaded = store.load("wf-sig")
        assert loaded is not None
        assert loaded[0].inbox == 1
        assert loaded[1] == [], "a signal is not an event"

    def test_send_signal_pulls_wake_at_earlier_never_later(self, store: Store) -> None:
        store.create(make_instance("wf-sig-wake", status=Status.RUNNING))
        sends = [
            # (wake_by, expected wake_at afterwards)
            (60, 60),  # unset: set
            (120, 60),  # later: kept
            (30, 30),  # earlier: pulled
            (30, 30),  # equal: kept
        ]

        for i, (wake_by, expected) in enumerate(sends, start=1):
            returned = store.send_signal(
                "wf-sig-wake", "s", None, T0, T0 + timedelta(seconds=wake_by)
            )
            assert returned is not None
            assert returned.inbox == i - 1
            instance = store.get("wf-sig-wake")
            assert instance is not None
            assert instance.wake_at == T0 + timedelta(seconds=expected), f"send {i}"
            assert instance.inbox == i
            assert instance.version == i

    def test_send_signal_to_a_pending_instance(self, store: Store) -> None:
        store.create(make_instance("wf-sig-pending"))

        returned = store.send_signal("wf-sig-pending", "s", None, T0, T0 + timedelta(seconds=30))

        assert returned == make_instance("wf-sig-pending")
        assert store.get("wf-sig-pending") == make_instance(
            "wf-sig-pending", version=1, wake_at=T0 + timedelta(seconds=30), inbox=1
        )
        assert [s.name for s in store.signals("wf-sig-pending")] == ["s"]

    @pytest.mark.parametrize("wake_at", [None, T0 + timedelta(hours=1)])
    def test_stuck_instance_keeps_the_signal_and_its_wake_at(
        self, store: Store, wake_at: datetime | None
    ) -> None:
        stuck = make_instance(
            "wf-sig-stuck", status=Status.STUCK, failure=Failure("E", "m"), wake_at=wake_at
        )
        store.create(stuck)

        returned = store.send_signal("wf-sig-stuck", "s", '"p"', T0, T0 + timedelta(seconds=30))

        assert returned == stuck
        assert store.get("wf-sig-stuck") == dataclasses.replace(
            stuck, version=stuck.version + 1, inbox=1
        ), "wake_at kept, version bumped"
        assert [(s.name, s.payload) for s in store.signals("wf-sig-stuck")] == [("s", '"p"')]

    @pytest.mark.parametrize("status", [Status.PENDING, Status.RUNNING, Status.STUCK])
    def test_commit_read_before_a_signal_loses_its_compare_and_set(
        self, store: Store, status: Status
    ) -> None:
        store.create(
            make_instance("wf-sig-cas", status=status, version=2, wake_at=T0 + timedelta(hours=1))
        )
        read = store.get("wf-sig-cas")  # an orchestrator pass reads the instance...
        assert read is not None
        signal = self._send(store, "wf-sig-cas", "s", wake_by=T0 + timedelta(minutes=1))
        before = store.load("wf-sig-cas")
        assert before is not None

        applied = store.commit(  # ...and commits what it decided without the signal
            Commit(
                "wf-sig-cas",
                read.version,
                Status.RUNNING,
                T0 + timedelta(seconds=1),
                custom_status='"blind"',
                wake_at=T0 + timedelta(days=1),
                new_events=[make_event(0)],
            )
        )

        assert applied is False, "the send bumped the version"
        assert store.load("wf-sig-cas") == before, "nothing written: the pulled wake_at kept"
        assert store.signals("wf-sig-cas") == [signal]
        # The pass reads again and sees the signal.
        again = store.get("wf-sig-cas")
        assert again is not None
        assert again.inbox == 1
        assert store.commit(
            Commit(
                "wf-sig-cas",
                again.version,
                Status.RUNNING,
                T0 + timedelta(seconds=1),
                new_events=[make_event(0, kind=Kind.SIGNAL, name="s", state=State.COMPLETED)],
                consumed=[(signal.id, 0)],
            )
        )
        assert store.signals("wf-sig-cas") == []

    @pytest.mark.parametrize("status", [Status.COMPLETED, Status.FAILED, Status.CANCELLED])
    def test_finished_instance_gets_no_signal(self, store: Store, status: Status) -> None:
        finished = make_instance(
            "wf-sig-done", status=status, version=4, output='"o"', wake_at=T0 + timedelta(hours=1)
        )
        store.create(finished)

        returned = store.send_signal("wf-sig-done", "s", '"p"', T0, T0 + timedelta(seconds=30))

        assert returned == finished, "returned with its status, for the caller to report"
        assert returned is not None
        assert returned.status is status
        assert store.get("wf-sig-done") == finished, "nothing written, not even the version"
        assert store.signals("wf-sig-done") == []

    def test_signal_to_a_missing_instance_is_none(self, store: Store) -> None:
        assert store.send_signal("nope", "s", '"p"', T0, T0 + timedelta(seconds=30)) is None
        assert store.get("nope") is None, "no instance (and so no version) made"
        assert store.signals("nope") == []

    def test_signals_in_arrival_order_unconsumed_only(self, store: Store) -> None:
        store.create(make_instance("wf-inbox", status=Status.RUNNING))
        store.create(make_instance("wf-other", status=Status.RUNNING))
        sent = [
            # Sent-at times out of order: arrival (the id) orders the inbox, not the clock.
            self._send(store, "wf-inbox", "b", '"1"', at=T0 + timedelta(seconds=3)),
            self._send(store, "wf-inbox", "a", None, at=T0 + timedelta(seconds=1)),
            self._send(store, "wf-inbox", "b", '"2"', at=T0 + timedelta(seconds=2)),
            self._send(store, "wf-inbox", "c", "", at=T0),
        ]
        self._send(store, "wf-other", "a", '"other"')

        assert [s.id for s in sent] == sorted(s.id for s in sent)
        assert len({s.id for s in sent}) == 4
        assert store.signals("wf-inbox") == sent
        assert [(s.name, s.payload) for s in sent] == [
            ("b", '"1"'),
            ("a", None),
            ("b", '"2"'),
            ("c", ""),
        ]
        instance = store.get("wf-inbox")
        assert instance is not None

        assert store.commit(
            Commit(
                "wf-inbox",
                instance.version,
                Status.RUNNING,
                T0,
                new_events=[make_event(0, kind=Kind.SIGNAL, name="b", state=State.COMPLETED)],
                consumed=[(sent[0].id, 0)],
            )
        )

        assert store.signals("wf-inbox") == sent[1:]
        assert [s.payload for s in store.signals("wf-other")] == ['"other"']

    def test_commit_consumes_signals(self, store: Store) -> None:
        store.create(make_instance("wf-consume", status=Status.RUNNING))
        first, second, third = (self._send(store, "wf-consume", f"s{i}") for i in range(3))
        waits = [
            make_event(0, kind=Kind.SIGNAL, name="s0", state=State.COMPLETED, output='"yes"'),
            make_event(1, kind=Kind.SIGNAL, name="s2", state=State.COMPLETED, output='"yes"'),
        ]

        applied = store.commit(
            Commit(
                "wf-consume",
                3,  # bumped by each send
                Status.RUNNING,
                T0 + timedelta(seconds=1),
                new_events=waits,
                consumed=[(third.id, 1), (first.id, 0)],
            )
        )

        assert applied is True
        loaded = store.load("wf-consume")
        assert loaded is not None
        instance, events = loaded
        assert instance.version == 4
        assert instance.inbox == 1
        assert instance.updated_at == T0 + timedelta(seconds=1)
        assert events == waits
        assert store.signals("wf-consume") == [second]
        assert store.commit(Commit("wf-consume", 4, Status.RUNNING, T0, consumed=[(second.id, 2)]))
        assert store.signals("wf-consume") == []
        got = store.get("wf-consume")
        assert got is not None
        assert (got.inbox, got.version) == (0, 5)

    @pytest.mark.parametrize("which", ["consumed", "consumed and fresh", "other instance"])
    def test_commit_consuming_an_unconsumable_signal_writes_nothing(
        self, store: Store, which: str
    ) -> None:
        store.create(make_instance("wf-once", status=Status.RUNNING))
        store.create(make_instance("wf-once-other", status=Status.RUNNING))
        taken = self._send(store, "wf-once", "s")
        fresh = self._send(store, "wf-once", "s")
        foreign = self._send(store, "wf-once-other", "s")
        assert store.commit(Commit("wf-once", 2, Status.RUNNING, T0, consumed=[(taken.id, 0)]))
        before = store.load("wf-once")
        assert before is not None
        assert before[0].inbox == 1
        consumed = {
            "consumed": [(taken.id, 1)],
            # The fresh one first, so a store that writes as it goes must undo it.
            "consumed and fresh": [(fresh.id, 1), (taken.id, 2)],
            "other instance": [(foreign.id, 1)],
        }[which]

        applied = store.commit(
            Commit(
                "wf-once",
                before[0].version,  # current: only the consumed signals are wrong
                Status.COMPLETED,
                T0 + timedelta(days=1),
                output='"late"',
                custom_status='"late"',
                wake_at=T0,
                new_events=[make_event(1, kind=Kind.SIGNAL, name="s", state=State.COMPLETED)],
                consumed=consumed,
            )
        )

        assert applied is False
        assert store.load("wf-once") == before, "not even the instance fields or events"
        assert store.signals("wf-once") == [fresh]
        assert store.signals("wf-once-other") == [foreign]
        got = store.get("wf-once-other")
        assert got is not None
        assert got.inbox == 1

    def test_commit_consuming_a_signal_twice_writes_nothing(self, store: Store) -> None:
        store.create(make_instance("wf-twice", status=Status.RUNNING))
        signal = self._send(store, "wf-twice", "s")
        before = store.load("wf-twice")

        applied = store.commit(
            Commit("wf-twice", 1, Status.RUNNING, T0, consumed=[(signal.id, 0), (signal.id, 1)])
        )

        assert applied is False
        assert store.load("wf-twice") == before
        assert store.signals("wf-twice") == [signal]

    def test_stale_commit_leaves_its_signals_unconsumed(self, store: Store) -> None:
        store.create(make_instance("wf-sig-stale", status=Status.RUNNING))
        signal = self._send(store, "wf-sig-stale", "s")
        read = store.get("wf-sig-stale")  # after the signal: only the commit makes it stale
        assert read is not None
        assert store.commit(Commit("wf-sig-stale", read.version, Status.RUNNING, T0))
        before = store.load("wf-sig-stale")

        applied = store.commit(
            Commit("wf-sig-stale", read.version, Status.RUNNING, T0, consumed=[(signal.id, 0)])
        )

        assert applied is False
        assert store.load("wf-sig-stale") == before
        assert store.signals("wf-sig-stale") == [signal]

    def test_refused_outcome_leaves_signals_unconsumed(self, store: Store) -> None:
        store.create(make_instance("wf-sig-fww"))
        assert store.commit(Commit("wf-sig-fww", 0, Status.RUNNING, T0, new_events=[make_event(0)]))
        assert store.commit(
            Commit("wf-sig-fww", 1, Status.RUNNING, T0, outcomes=[completed(make_event(0))])
        )
        signal = self._send(store, "wf-sig-fww", "s")
        before = store.load("wf-sig-fww")

        applied = store.commit(
            Commit(
                "wf-sig-fww",
                3,  # the send's bump: current, so only the outcome refuses it
                Status.RUNNING,
                T0,
                outcomes=[completed(make_event(0), '"again"')],  # already final: refused
                consumed=[(signal.id, 1)],
            )
        )

        assert applied is False
        assert store.load("wf-sig-fww") == before
        assert store.signals("wf-sig-fww") == [signal]

    @pytest.mark.parametrize("round_", range(5))
    def test_concurrent_commits_consume_a_signal_once(self, store: Store, round_: int) -> None:
        instance_id = f"wf-sig-race-{round_}"
        store.create(make_instance(instance_id, status=Status.RUNNING))
        signal = self._send(store, instance_id, "s")
        other = self._send(store, instance_id, "t")

        def attempt(i: int) -> bool:
            return store.commit(
                Commit(
                    instance_id,
                    2,  # both read after the two sends
                    Status.RUNNING,
                    T0,
                    custom_status=f'"{i}"',
                    new_events=[
                        make_event(
                            0, kind=Kind.SIGNAL, name="s", state=State.COMPLETED, input=f"{i}"
                        )
                    ],
                    consumed=[(signal.id, 0)],
                )
            )

        results = run_together(2, attempt)

        assert results.count(True) == 1
        winner = results.index(True)
        loaded = store.load(instance_id)
        assert loaded is not None
        instance, events = loaded
        assert (instance.version, instance.inbox) == (3, 1)
        assert instance.custom_status == f'"{winner}"'
        assert [e.input for e in events] == [f"{winner}"]
        assert store.signals(instance_id) == [other]

    def test_concurrent_signals_are_all_kept_in_order(self, store: Store) -> None:
        store.create(
            make_instance("wf-sig-many", status=Status.RUNNING, wake_at=T0 + timedelta(hours=1))
        )
        count = 50

        returned = run_together(
            count,
            lambda i: store.send_signal(
                "wf-sig-many", f"s{i}", f'"{i}"', T0, T0 + timedelta(seconds=100 - i)
            ),
        )

        assert sorted(r.inbox for r in returned if r is not None) == list(range(count)), (
            "each send saw the ones before it"
        )
        inbox = store.signals("wf-sig-many")
        ids = [s.id for s in inbox]
        assert ids == sorted(set(ids)), "ids strictly increasing"
        assert sorted(s.name for s in inbox) == sorted(f"s{i}" for i in range(count))
        arrival = {r.inbox: f"s{i}" for i, r in enumerate(returned) if r is not None}
        assert [s.name for s in inbox] == [arrival[n] for n in range(count)], (
            "the inbox is in arrival order (each send saw those before it)"
        )
        instance = store.get("wf-sig-many")
        assert instance is not None
        assert instance.inbox == count
        assert instance.version == count, "each send bumped it once"
        assert instance.wake_at == T0 + timedelta(seconds=100 - (count - 1)), "the earliest"

    def test_signals_sent_while_an_orchestrator_consumes(self, store: Store) -> None:
        store.create(make_instance("wf-sig-flow", status=Status.RUNNING))
        count = 40
        done = threading.Event()
        consumed: list[int] = []

        def orchestrate() -> None:
            # Reads the instance, then its inbox (newer, maybe), and consumes what it saw;
            # a signal sent between the two reads bumps the version, so the commit loses
            # its compare-and-set and the loop reads both again.
            while not done.is_set() or store.signals("wf-sig-flow"):
                instance = store.get("wf-sig-flow")
                assert instance is not None
                inbox = store.signals("wf-sig-flow")
                if not inbox:
                    continue
                seq = len(consumed)
                taken = [(s.id, seq + i) for i, s in enumerate(inbox)]
                if store.commit(
                    Commit("wf-sig-flow", instance.version, Status.RUNNING, T0, consumed=taken)
                ):
                    consumed.extend(signal_id for signal_id, _ in taken)

        consumer = threading.Thread(target=orchestrate)
        consumer.start()
        try:
            run_together(
                4,
                lambda i: [
                    store.send_signal("wf-sig-flow", f"s{i}-{n}", None, T0, T0)
                    for n in range(count // 4)
                ],
            )
        finally:
            done.set()
            consumer.join(timeout=60)
        assert not consumer.is_alive()

        instance = store.get("wf-sig-flow")
        assert instance is not None
        assert instance.inbox == 0
        assert store.signals("wf-sig-flow") == []
        assert len(consumed) == count
        assert len(set(consumed)) == count, "a signal was consumed twice"
        assert consumed == sorted(consumed), "consumed in arrival order"

    # ------------------------------------------------------------------ request_cancel

    @pytest.mark.parametrize("status", [Status.PENDING, Status.RUNNING])
    def test_request_cancel_flags_a_live_instance(self, store: Store, status: Status) -> None:
        live = make_instance(
            "wf-cancel", status=status, version=3, wake_at=T0 + timedelta(hours=1), inbox=2
        )
        store.create(live)

        returned = store.request_cancel("wf-cancel", T0 + timedelta(minutes=1))

        assert returned == live, "the instance as it was before"
        assert returned is not None
        assert_instance_types(returned)
        assert returned.cancel_requested is False
        expected = dataclasses.replace(
            live, version=4, wake_at=T0 + timedelta(minutes=1), cancel_requested=True
        )
        assert store.get("wf-cancel") == expected, "flagged, version bumped, wake_at pulled"
        assert store.load("wf-cancel") == (expected, [])
        assert store.list() == [expected]
        assert store.get_many(["wf-cancel"]) == [expected]

    def test_request_cancel_pulls_wake_at_earlier_never_later(self, store: Store) -> None:
        store.create(make_instance("wf-cancel-wake", status=Status.RUNNING))
        requests = [
            # (wake_by, expected wake_at afterwards)
            (60, 60),  # unset: set
            (120, 60),  # later: kept
            (30, 30),  # earlier: pulled
            (30, 30),  # equal: kept
        ]

        for i, (wake_by, expected) in enumerate(requests, start=1):
            returned = store.request_cancel("wf-cancel-wake", T0 + timedelta(seconds=wake_by))
            assert returned is not None
            assert returned.cancel_requested is (i > 1)
            instance = store.get("wf-cancel-wake")
            assert instance is not None
            assert instance.wake_at == T0 + timedelta(seconds=expected), f"request {i}"
            assert instance.cancel_requested is True
            assert instance.version == i, "every request bumps the version"

    @pytest.mark.parametrize("wake_at", [None, T0 + timedelta(hours=1)])
    def test_request_cancel_of_a_stuck_instance_keeps_its_wake_at(
        self, store: Store, wake_at: datetime | None
    ) -> None:
        stuck = make_instance(
            "wf-cancel-stuck", status=Status.STUCK, failure=Failure("E", "m"), wake_at=wake_at
        )
        store.create(stuck)

        returned = store.request_cancel("wf-cancel-stuck", T0 + timedelta(seconds=30))

        assert returned == stuck
        assert store.get("wf-cancel-stuck") == dataclasses.replace(
            stuck, version=stuck.version + 1, cancel_requested=True
        ), "flagged, version bumped, wake_at kept"

    @pytest.mark.parametrize("status", [Status.COMPLETED, Status.FAILED, Status.CANCELLED])
    def test_request_cancel_of_a_finished_instance_writes_nothing(
        self, store: Store, status: Status
    ) -> None:
        finished = make_instance(
            "wf-cancel-done",
            status=status,
            version=4,
            output='"o"',
            wake_at=T0 + timedelta(hours=1),
        )
        store.create(finished)

        returned = store.request_cancel("wf-cancel-done", T0 + timedelta(seconds=30))

        assert returned == finished, "returned with its status, for the caller to report"
        assert returned is not None
        assert returned.status is status
        assert store.get("wf-cancel-done") == finished, "nothing written, not even the version"

    def test_request_cancel_of_a_missing_instance_is_none(self, store: Store) -> None:
        assert store.request_cancel("nope", T0 + timedelta(seconds=30)) is None
        assert store.get("nope") is None, "no instance made"

    @pytest.mark.parametrize("status", [Status.PENDING, Status.RUNNING, Status.STUCK])
    def test_commit_read_before_a_cancel_request_loses_its_compare_and_set(
        self, store: Store, status: Status
    ) -> None:
        store.create(
            make_instance(
                "wf-cancel-cas", status=status, version=2, wake_at=T0 + timedelta(hours=1)
            )
        )
        read = store.get("wf-cancel-cas")  # an orchestrator pass reads the instance...
        assert read is not None
        assert store.request_cancel("wf-cancel-cas", T0 + timedelta(minutes=1)) == read
        before = store.load("wf-cancel-cas")
        assert before is not None

        applied = store.commit(  # ...and commits what it decided without the request
            Commit(
                "wf-cancel-cas",
                read.version,
                Status.COMPLETED,
                T0 + timedelta(seconds=1),
                output='"blind"',
                new_events=[make_event(0)],
            )
        )

        assert applied is False, "the request bumped the version"
        assert store.load("wf-cancel-cas") == before, "nothing written"
        again = store.get("wf-cancel-cas")
        assert again is not None
        assert again.cancel_requested is True
        assert store.commit(
            Commit("wf-cancel-cas", again.version, Status.CANCELLED, T0 + timedelta(seconds=2))
        )
        cancelled = store.get("wf-cancel-cas")
        assert cancelled is not None
        assert cancelled.status is Status.CANCELLED
        assert cancelled.cancel_requested is True, "a plain commit leaves the flag"

    # ------------------------------------------------------------------ get_many

    def test_get_many_returns_the_existing_instances(self, store: Store) -> None:
        made = [
            make_instance(f"wf-many-{i}", status=status, version=i, parent_id="wf-parent")
            for i, status in enumerate([Status.RUNNING, Status.COMPLETED, Status.CANCELLED])
        ]
        for instance in made:
            store.create(instance)
        store.create(make_instance("wf-not-asked"))

        got = store.get_many(["wf-many-2", "nope", "wf-many-0", "wf-many-1", "also-nope"])

        assert sorted(got, key=lambda i: i.id) == made
        for instance in got:
            assert_instance_types(instance)
        assert store.get_many(["nope"]) == []
        assert store.get_many(["wf-many-1", "wf-many-1"]) == [made[1]], "each instance once"

    def test_get_many_of_no_ids(self, store: Store) -> None:
        store.create(make_instance("wf-many"))

        assert store.get_many([]) == []
        assert store.get_many(()) == []

    # ------------------------------------------------------------------ continue_as_new

    def _old_run(self, store: Store, instance_id: str) -> tuple[Instance, Signal, Signal]:
        """A running instance three commits in, with a journal of four events (two final),
        one consumed signal and one in its inbox, and a cancel request; the instance, the
        consumed signal and the unconsumed one."""
        store.create(make_instance(instance_id))
        assert store.commit(
            Commit(
                instance_id,
                0,
                Status.RUNNING,
                T0,
                new_events=[make_event(0), make_event(1, kind=Kind.CHILD), make_event(2)],
            )
        )
        consumed = self._send(store, instance_id, "go", '"1"')
        assert store.commit(
            Commit(
                instance_id,
                2,
                Status.RUNNING,
                T0 + timedelta(seconds=1),
                outcomes=[completed(make_event(0)), failed(make_event(1, kind=Kind.CHILD))],
                new_events=[
                    make_event(3, kind=Kind.SIGNAL, name="go", state=State.COMPLETED, output='"1"')
                ],
                consumed=[(consumed.id, 3)],
            )
        )
        waiting = self._send(store, instance_id, "later", '"2"')
        assert store.request_cancel(instance_id, T0 + timedelta(hours=1)) is not None
        instance = store.get(instance_id)
        assert instance is not None
        assert instance.version == 5
        assert instance.cancel_requested is True
        assert instance.inbox == 1
        return instance, consumed, waiting

    def test_restart_commit_starts_a_new_run(self, store: Store) -> None:
        """Restart: the journal replaced, the input replaced, the cancel request cleared;
        the inbox kept, and the signals the old run consumed deleted."""
        old, _, waiting = self._old_run(store, "wf-restart")
        first = [
            make_event(0, kind=Kind.RUN, name="local", state=State.COMPLETED, output='"x"'),
            make_event(1, kind=Kind.TIMER, name="sleep", input='"2024-05-18T00:00:00Z"'),
            make_event(2, kind=Kind.CANCEL, name="cancel", state=State.COMPLETED),
        ]

        applied = store.commit(
            Commit(
                "wf-restart",
                old.version,
                Status.RUNNING,
                T0 + timedelta(minutes=5),
                restart_input='[["round 2"], {}]',
                new_events=first,
                wake_at=T0 + timedelta(days=1),
                custom_status='"round 2"',
            )
        )

        assert applied is True
        loaded = store.load("wf-restart")
        assert loaded is not None
        instance, events = loaded
        assert instance == dataclasses.replace(
            old,
            version=old.version + 1,
            input='[["round 2"], {}]',
            updated_at=T0 + timedelta(minutes=5),
            wake_at=T0 + timedelta(days=1),
            custom_status='"round 2"',
            cancel_requested=False,
        ), "inbox kept"
        assert events == first, "the old run's events gone, the new run's from seq 0"
        assert_event_types(events)
        assert store.signals("wf-restart") == [waiting], "the unconsumed signal kept"
        # The new run consumes the kept signal and goes on as usual.
        assert store.commit(
            Commit(
                "wf-restart",
                instance.version,
                Status.RUNNING,
                T0 + timedelta(minutes=6),
                new_events=[make_event(3, kind=Kind.SIGNAL, name="later", state=State.COMPLETED)],
                consumed=[(waiting.id, 3)],
                outcomes=[completed(first[1])],
            )
        )
        loaded = store.load("wf-restart")
        assert loaded is not None
        assert [e.seq for e in loaded[1]] == [0, 1, 2, 3]
        assert loaded[0].inbox == 0

    def test_restart_commit_without_new_events(self, store: Store) -> None:
        old, _, _ = self._old_run(store, "wf-restart-empty")

        assert store.commit(
            Commit(
                "wf-restart-empty",
                old.version,
                Status.PENDING,
                T0,
                restart_input="[[], {}]",
            )
        )

        loaded = store.load("wf-restart-empty")
        assert loaded is not None
        assert loaded[1] == []
        assert loaded[0].input == "[[], {}]"
        assert loaded[0].status is Status.PENDING
        assert loaded[0].cancel_requested is False

    def test_restart_commit_consuming_a_signal(self, store: Store) -> None:
        """Signals the ending run consumes in its last pass are consumed (never seen by
        the new run) and deleted with the old run's."""
        old, _, waiting = self._old_run(store, "wf-restart-consume")
        newer = self._send(store, "wf-restart-consume", "newer")

        assert store.commit(
            Commit(
                "wf-restart-consume",
                old.version + 1,
                Status.RUNNING,
                T0,
                restart_input="[[], {}]",
                new_events=[make_event(0)],
                consumed=[(waiting.id, 4)],
            )
        )

        instance = store.get("wf-restart-consume")
        assert instance is not None
        assert instance.inbox == 1
        assert store.signals("wf-restart-consume") == [newer]

    def test_stale_restart_commit_writes_nothing(self, store: Store) -> None:
        old, _, waiting = self._old_run(store, "wf-restart-stale")
        before = store.load("wf-restart-stale")

        applied = store.commit(
            Commit(
                "wf-restart-stale",
                old.version - 1,
                Status.RUNNING,
                T0 + timedelta(days=1),
                restart_input='[["stale"], {}]',
                new_events=[make_event(0, name="other")],
                wake_at=T0,
            )
        )

        assert applied is False
        assert store.load("wf-restart-stale") == before, "events, input and flag kept"
        assert store.signals("wf-restart-stale") == [waiting]

    def test_restart_commit_consuming_an_unconsumable_signal_writes_nothing(
        self, store: Store
    ) -> None:
        old, consumed, waiting = self._old_run(store, "wf-restart-refused")
        before = store.load("wf-restart-refused")

        applied = store.commit(
            Commit(
                "wf-restart-refused",
                old.version,
                Status.RUNNING,
                T0,
                restart_input="[[], {}]",
                new_events=[make_event(0)],
                consumed=[(consumed.id, 4)],  # consumed already
            )
        )

        assert applied is False
        assert store.load("wf-restart-refused") == before
        assert store.signals("wf-restart-refused") == [waiting]

    @pytest.mark.parametrize("extra", ["outcomes", "resent"])
    def test_restart_commit_refuses_outcomes_and_resent(self, store: Store, extra: str) -> None:
        old, _, _ = self._old_run(store, "wf-restart-bad")
        before = store.load("wf-restart-bad")
        fields: dict[str, object] = (
            {"outcomes": [completed(make_event(2))]} if extra == "outcomes" else {"resent": [2]}
        )

        with pytest.raises(ValueError, match="restart"):
            store.commit(
                Commit(
                    "wf-restart-bad",
                    old.version,
                    Status.RUNNING,
                    T0,
                    restart_input="[[], {}]",
                    **fields,  # type: ignore[arg-type]
                )
            )

        assert store.load("wf-restart-bad") == before

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
