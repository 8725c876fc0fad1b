"""The runs part of the store contract: what issue 9 added to an instance's record.

The run number (1 for a new instance, one more per restart commit, kept by every other
commit), the note (written by every commit: set, kept only if repeated, cleared), the
rewind of a failed instance (``Commit.rewind_from``: the tail of the journal deleted, the
signals it consumed back in the inbox and counted, everything before it kept), a parent's
children (``list(parent_id=...)``), and the new fields' round trip through ``create``,
``get``, ``load``, ``list`` and ``get_many``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import timedelta

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


def _ids(instances: Sequence[Instance]) -> list[str]:
    return [i.id for i in instances]


class RunContract:
    """Run numbers, notes, rewinds, children, and the round trip of the new fields."""

    # ------------------------------------------------------------------ round trip

    def test_new_fields_round_trip(self, store: Store) -> None:
        instance = make_instance(
            "wf-new-fields",
            status=Status.RUNNING,
            parent_id="wf-parent",
            run=7,
            note="waiting for a worker that knows workflow money_transfer",
            parent_close="cancel",
        )
        stored, created = store.create(instance)
        assert (stored, created) == (instance, True)
        lost = make_event(0, resends=2, attempts=3)

        assert store.commit(
            Commit(
                "wf-new-fields",
                0,
                Status.RUNNING,
                T0,
                new_events=[lost, make_event(1)],
                note=instance.note,
            )
        )

        expected = dataclasses.replace(instance, version=1)
        got = store.get("wf-new-fields")
        assert got == expected
        assert got is not None
        assert_instance_types(got)
        assert store.load("wf-new-fields") == (expected, [lost, make_event(1)])
        assert store.list() == [expected]
        assert store.get_many(["wf-new-fields"]) == [expected]
        assert store.request_cancel("wf-new-fields", T0) == expected
        assert store.send_signal("wf-new-fields", "s", None, T0, T0) == dataclasses.replace(
            expected, version=2, cancel_requested=True, wake_at=T0
        )

    def test_new_fields_default(self, store: Store) -> None:
        store.create(make_instance("wf-defaults"))
        assert store.commit(
            Commit("wf-defaults", 0, Status.RUNNING, T0, new_events=[make_event(0)])
        )

        loaded = store.load("wf-defaults")

        assert loaded is not None
        instance, (step,) = loaded
        assert (instance.run, instance.note, instance.parent_close) == (1, None, None)
        assert step.resends == 0

    # ------------------------------------------------------------------ run

    def test_restart_commits_count_the_run(self, store: Store) -> None:
        store.create(make_instance("wf-runs"))
        assert store.commit(Commit("wf-runs", 0, Status.RUNNING, T0, new_events=[make_event(0)]))
        assert store.get("wf-runs").run == 1, "a plain commit keeps the run"  # type: ignore[union-attr]

        for version, run in ((1, 2), (2, 3)):
            assert store.commit(
                Commit(
                    "wf-runs",
                    version,
                    Status.RUNNING,
                    T0,
                    restart_input=f"[[{run}], {{}}]",
                    new_events=[make_event(0)],
                )
            )
            instance = store.get("wf-runs")
            assert instance is not None
            assert instance.run == run

        assert store.commit(Commit("wf-runs", 3, Status.COMPLETED, T0, output='"done"'))
        assert store.get("wf-runs").run == 3  # type: ignore[union-attr]

    def test_stale_restart_commit_counts_no_run(self, store: Store) -> None:
        store.create(make_instance("wf-runs-stale", version=4))

        assert not store.commit(
            Commit("wf-runs-stale", 3, Status.RUNNING, T0, restart_input="[[], {}]")
        )

        assert store.get("wf-runs-stale") == make_instance("wf-runs-stale", version=4)

    # ------------------------------------------------------------------ note

    def test_every_commit_writes_the_note(self, store: Store) -> None:
        store.create(make_instance("wf-note"))
        waiting = "waiting for a worker that knows workflow money_transfer"
        notes = [waiting, waiting, None, "other", None]

        for version, note in enumerate(notes):
            assert store.commit(
                Commit(
                    "wf-note",
                    version,
                    Status.RUNNING,
                    T0,
                    note=note,
                    new_events=[make_event(version)],
                )
            )
            assert store.get("wf-note").note == note, f"commit {version}"  # type: ignore[union-attr]

        # A restart commit writes it too; so does the commit of an outcome.
        assert store.commit(
            Commit("wf-note", 5, Status.RUNNING, T0, restart_input="[[], {}]", note=waiting)
        )
        assert store.get("wf-note").note == waiting  # type: ignore[union-attr]
        assert store.commit(Commit("wf-note", 6, Status.RUNNING, T0, new_events=[make_event(0)]))
        assert store.get("wf-note").note is None  # type: ignore[union-attr]

    def test_stale_commit_keeps_the_note(self, store: Store) -> None:
        store.create(make_instance("wf-note-stale", version=2, note="kept"))

        assert not store.commit(Commit("wf-note-stale", 1, Status.RUNNING, T0, note=None))

        assert store.get("wf-note-stale").note == "kept"  # type: ignore[union-attr]

    # ------------------------------------------------------------------ rewind

    def _failed_run(self, store: Store, instance_id: str) -> tuple[Signal, Signal, Signal]:
        """A failed instance at version 5 with a journal of six events: a step (0), a wait
        that consumed ``first`` (1), a step (2), a wait that consumed ``second`` (3), a
        failed step (4, the failure point) and a step after it (5, compensation); and
        ``waiting`` in its inbox. The signals ``first``, ``second`` and ``waiting``."""
        store.create(make_instance(instance_id))
        assert store.commit(Commit(instance_id, 0, Status.RUNNING, T0, new_events=[make_event(0)]))
        first = send(store, instance_id, "go", '"1"')
        second = send(store, instance_id, "go", '"2"')
        assert store.commit(
            Commit(
                instance_id,
                3,
                Status.RUNNING,
                T0,
                outcomes=[completed(make_event(0))],
                new_events=[
                    make_event(1, kind=Kind.SIGNAL, name="go", state=State.COMPLETED),
                    completed(make_event(2)),
                    make_event(3, kind=Kind.SIGNAL, name="go", state=State.COMPLETED),
                    failed(make_event(4)),
                    make_event(5, name="bank.rollback"),
                ],
                consumed=[(first.id, 1), (second.id, 3)],
            )
        )
        waiting = send(store, instance_id, "go", '"3"')
        assert store.commit(
            Commit(
                instance_id,
                5,
                Status.FAILED,
                T0 + timedelta(minutes=1),
                failure=Failure("TransferFailed", "insufficient funds"),
                outcomes=[completed(make_event(5, name="bank.rollback"))],
            )
        )
        instance = store.get(instance_id)
        assert instance is not None
        assert (instance.version, instance.inbox) == (6, 1)
        return first, second, waiting

    def test_rewind_deletes_the_tail_and_returns_its_signals(self, store: Store) -> None:
        first, second, waiting = self._failed_run(store, "wf-rewind")
        before = store.load("wf-rewind")
        assert before is not None

        applied = store.commit(
            Commit(
                "wf-rewind",
                6,
                Status.RUNNING,
                T0 + timedelta(hours=1),
                wake_at=T0 + timedelta(hours=1),
                rewind_from=3,
            )
        )

        assert applied is True
        loaded = store.load("wf-rewind")
        assert loaded is not None
        instance, events = loaded
        assert events == before[1][:3], "the failure point and all after it deleted"
        assert_event_types(events)
        assert instance == dataclasses.replace(
            before[0],
            status=Status.RUNNING,
            version=7,
            failure=None,
            updated_at=T0 + timedelta(hours=1),
            wake_at=T0 + timedelta(hours=1),
            inbox=2,
        ), "the signal the tail consumed is counted in the inbox again"
        assert store.signals("wf-rewind") == [second, waiting], "in arrival order"
        assert first not in store.signals("wf-rewind"), "consumed before the rewind point"

    def test_rewind_then_consume_again_in_one_commit(self, store: Store) -> None:
        """The tail goes first; the rest of the commit applies to what is left, so a
        returned signal can be consumed anew by the commit's own new events."""
        _, second, waiting = self._failed_run(store, "wf-rewind-again")
        again = make_event(3, kind=Kind.SIGNAL, name="go", state=State.COMPLETED, output='"2"')

        assert store.commit(
            Commit(
                "wf-rewind-again",
                6,
                Status.RUNNING,
                T0,
                rewind_from=3,
                new_events=[again, make_event(4)],
                consumed=[(second.id, 3)],
            )
        )

        loaded = store.load("wf-rewind-again")
        assert loaded is not None
        assert loaded[1][3:] == [again, make_event(4)]
        assert loaded[0].inbox == 1
        assert store.signals("wf-rewind-again") == [waiting]

    def test_rewind_of_the_whole_journal(self, store: Store) -> None:
        first, second, waiting = self._failed_run(store, "wf-rewind-all")

        assert store.commit(Commit("wf-rewind-all", 6, Status.RUNNING, T0, rewind_from=0))

        loaded = store.load("wf-rewind-all")
        assert loaded is not None
        assert loaded[1] == []
        assert loaded[0].inbox == 3
        assert store.signals("wf-rewind-all") == [first, second, waiting]

    def test_rewind_past_the_end_deletes_nothing(self, store: Store) -> None:
        self._failed_run(store, "wf-rewind-none")
        before = store.load("wf-rewind-none")
        assert before is not None

        assert store.commit(Commit("wf-rewind-none", 6, Status.RUNNING, T0, rewind_from=6))

        loaded = store.load("wf-rewind-none")
        assert loaded is not None
        assert loaded[1] == before[1]
        assert loaded[0].inbox == 1

    def test_stale_rewind_writes_nothing(self, store: Store) -> None:
        _, _, waiting = self._failed_run(store, "wf-rewind-stale")
        before = store.load("wf-rewind-stale")

        assert not store.commit(Commit("wf-rewind-stale", 5, Status.RUNNING, T0, rewind_from=3))

        assert store.load("wf-rewind-stale") == before
        assert store.signals("wf-rewind-stale") == [waiting]

    def test_refused_rewind_writes_nothing(self, store: Store) -> None:
        """A rewind commit whose outcome is refused (the event is final) is undone whole."""
        _, _, waiting = self._failed_run(store, "wf-rewind-refused")
        before = store.load("wf-rewind-refused")

        assert not store.commit(
            Commit(
                "wf-rewind-refused",
                6,
                Status.RUNNING,
                T0,
                rewind_from=3,
                outcomes=[completed(make_event(2), '"again"')],
            )
        )

        assert store.load("wf-rewind-refused") == before
        assert store.signals("wf-rewind-refused") == [waiting]

    def test_rewind_and_restart_are_refused_together(self, store: Store) -> None:
        self._failed_run(store, "wf-rewind-restart")
        before = store.load("wf-rewind-restart")

        with pytest.raises(ValueError, match="restart"):
            store.commit(
                Commit(
                    "wf-rewind-restart",
                    6,
                    Status.RUNNING,
                    T0,
                    restart_input="[[], {}]",
                    rewind_from=3,
                )
            )

        assert store.load("wf-rewind-restart") == before

    # ------------------------------------------------------------------ children

    def test_list_filters_by_parent(self, store: Store) -> None:
        specs = [
            ("child-0", "parent-a", Status.COMPLETED),
            ("child-1", "parent-b", Status.RUNNING),
            ("child-2", "parent-a", Status.RUNNING),
            ("parent-a", None, Status.RUNNING),
            ("child-3", "parent-a", Status.FAILED),
        ]
        for i, (instance_id, parent_id, status) in enumerate(specs):
            store.create(
                make_instance(
                    instance_id,
                    parent_id=parent_id,
                    status=status,
                    created_at=T0 + timedelta(minutes=i),
                )
            )

        assert _ids(store.list(parent_id="parent-a")) == ["child-3", "child-2", "child-0"]
        assert _ids(store.list(parent_id="parent-b")) == ["child-1"]
        assert _ids(store.list(parent_id="child-1")) == []
        assert _ids(store.list(parent_id="parent-a", status=Status.RUNNING)) == ["child-2"]
        assert _ids(store.list(parent_id="parent-a", limit=1)) == ["child-3"]
        assert _ids(store.list(parent_id="parent-a", workflow="other")) == []
        assert len(store.list()) == 5, "no parent given: every instance"
        assert store.list(parent_id="parent-b") == [store.get("child-1")]
