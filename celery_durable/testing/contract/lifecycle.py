"""The lifecycle part of the store contract: cancelling, bulk reads, and restarts.

``request_cancel`` (flags a live or stuck instance and bumps its version; a finished one
is returned untouched), ``pull_wake_at`` (a message that could not be sent),
``get_many``, and the restart commit of ``continue_as_new`` (``Commit.restart_input``:
the journal and input replaced, the cancel request cleared, the unconsumed signals kept).
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta

import pytest

from celery_durable.engine.journal import Failure, Instance, Kind, Signal, State, Status
from celery_durable.stores.base import Commit, Store
from celery_durable.testing.contract.builders import (
    T0,
    assert_event_types,
    assert_instance_types,
    completed,
    failed,
    make_event,
    make_instance,
    send,
)


class LifecycleContract:
    """Cancel requests, ``get_many``, and restart commits (``continue_as_new``)."""

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

    # ------------------------------------------------------------------- pull_wake_at

    @pytest.mark.parametrize("status", [Status.PENDING, Status.RUNNING])
    def test_pull_wake_at_pulls_a_live_instance_earlier_never_later(
        self, store: Store, status: Status
    ) -> None:
        store.create(make_instance("wf-pull", status=status, version=2))
        pulls = [
            # (wake_by, expected wake_at afterwards)
            (60, 60),  # unset: set
            (120, 60),  # later: kept
            (30, 30),  # earlier: pulled
        ]

        for i, (wake_by, expected) in enumerate(pulls, start=1):
            assert store.pull_wake_at("wf-pull", T0 + timedelta(seconds=wake_by)) is True
            instance = store.get("wf-pull")
            assert instance is not None
            assert instance.wake_at == T0 + timedelta(seconds=expected), f"pull {i}"
            assert instance.version == 2 + i, "every pull bumps the version"
            assert instance.status is status

    @pytest.mark.parametrize(
        "status", [Status.STUCK, Status.COMPLETED, Status.FAILED, Status.CANCELLED]
    )
    def test_pull_wake_at_leaves_a_stuck_or_finished_instance_alone(
        self, store: Store, status: Status
    ) -> None:
        failure = None if status is Status.COMPLETED else Failure("E", "m")
        instance = make_instance("wf-pull-still", status=status, version=4, failure=failure)
        store.create(instance)

        assert store.pull_wake_at("wf-pull-still", T0) is False
        assert store.get("wf-pull-still") == instance, "nothing written"
        assert store.pull_wake_at("wf-missing", T0) is False

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
        consumed = send(store, instance_id, "go", '"1"')
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
        waiting = send(store, instance_id, "later", '"2"')
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
            run=old.run + 1,
        ), "inbox kept, run counted"
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
        newer = send(store, "wf-restart-consume", "newer")

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
