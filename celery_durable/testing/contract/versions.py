"""The deploys and listing part of the store contract (schema versions 3 and 4).

An instance's ``code_version``, ``patches`` and ``waiting_at`` round trip through
``create``, ``get``, ``load``, ``list`` and ``get_many``; a commit writes ``waiting_at``
every time and ``patches`` / ``code_version`` only when given. ``list`` filters by code
version, id prefix (literally: ``%`` and ``_`` are plain characters), creation time and
several statuses, and pages with a ``(created_at, id)`` cursor that neither repeats nor
skips an instance when many share a creation time; ``count_by_status`` counts with the
same filters; ``pending_events`` gives the pending events of many instances in one read.
An instance's ``trace_context`` round trips and commits leave it as created.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from celery_durable.engine.journal import Instance, Kind, State, Status
from celery_durable.stores.base import Commit, Store
from celery_durable.testing.contract.builders import (
    T0,
    assert_event_types,
    completed,
    make_event,
    make_instance,
)


def _ids(instances: Sequence[Instance]) -> list[str]:
    return [i.id for i in instances]


class VersionContract:
    """Code versions, patch ids, where a workflow waits, and the console's listing reads."""

    def test_code_version_patches_and_waiting_at_round_trip(self, store: Store) -> None:
        made = make_instance(
            "wf-v",
            code_version="v1-abc123",
            patches=("fraud-check", "new-mail"),
            waiting_at="shop/orders.py:42 in fulfil",
        )
        store.create(made)

        loaded = store.load("wf-v")
        assert loaded is not None
        for got in (store.get("wf-v"), loaded[0], *store.list(), *store.get_many(["wf-v"])):
            assert got is not None
            assert got.code_version == "v1-abc123"
            assert got.patches == ("fraud-check", "new-mail")
            assert got.waiting_at == "shop/orders.py:42 in fulfil"

    def test_trace_context_round_trips_and_commits_keep_it(self, store: Store) -> None:
        trace = '{"trace":"0af7651916cd43dd8448eb211c80319c","span":"b7ad6b7169203331"}'
        store.create(make_instance("wf-traced", trace_context=trace))
        store.create(make_instance("wf-untraced"))
        loaded = store.load("wf-traced")
        assert loaded is not None
        commit = Commit(
            instance_id="wf-traced",
            expected_version=loaded[0].version,
            status=Status.RUNNING,
            updated_at=T0,
            wake_at=None,
        )
        assert store.commit(commit)
        again = store.load("wf-traced")
        assert again is not None
        for got in (store.get("wf-traced"), again[0], *store.get_many(["wf-traced"])):
            assert got is not None
            assert got.trace_context == trace
        untraced = store.get("wf-untraced")
        assert untraced is not None
        assert untraced.trace_context is None

    def test_defaults_are_no_version_no_patches(self, store: Store) -> None:
        store.create(make_instance("wf-plain"))
        got = store.get("wf-plain")
        assert got is not None
        assert (got.code_version, got.patches, got.waiting_at) == (None, (), None)

    def test_commit_writes_waiting_at_and_keeps_patches_and_version_unless_given(
        self, store: Store
    ) -> None:
        store.create(make_instance("wf-c", code_version="v1", patches=("a",)))
        marker = make_event(
            0, kind=Kind.PATCH, name="b", input=None, state=State.COMPLETED, completed_at=T0
        )
        assert store.commit(
            Commit(
                "wf-c",
                0,
                Status.RUNNING,
                T0,
                new_events=[marker, make_event(1)],
                waiting_at="app.py:7 in wf",
                patches=("a", "b"),
            )
        )
        got = store.get("wf-c")
        assert got is not None
        assert (got.code_version, got.patches, got.waiting_at) == (
            "v1",
            ("a", "b"),
            "app.py:7 in wf",
        )
        loaded = store.load("wf-c")
        assert loaded is not None
        first = loaded[1][0]
        assert (first.kind, first.name, first.input) == (Kind.PATCH, "b", None)
        assert_event_types(loaded[1])

        assert store.commit(Commit("wf-c", 1, Status.RUNNING, T0, code_version="v2"))
        got = store.get("wf-c")
        assert got is not None
        assert (got.code_version, got.patches, got.waiting_at) == ("v2", ("a", "b"), None)

        assert store.commit(Commit("wf-c", 2, Status.RUNNING, T0, patches=()))
        got = store.get("wf-c")
        assert got is not None
        assert got.patches == ()

    def test_restart_commit_sets_the_new_runs_code_version(self, store: Store) -> None:
        store.create(make_instance("wf-r", code_version="v1", status=Status.RUNNING))
        assert store.commit(
            Commit("wf-r", 0, Status.RUNNING, T0, restart_input="[[], {}]", code_version="v2")
        )
        got = store.get("wf-r")
        assert got is not None
        assert (got.run, got.code_version) == (2, "v2")

    def test_list_filters_by_code_version_and_statuses(self, store: Store) -> None:
        for i, (version, status) in enumerate(
            [("v1", Status.RUNNING), ("v2", Status.RUNNING), ("v1", Status.STUCK)]
        ):
            store.create(
                make_instance(
                    f"wf-{i}",
                    code_version=version,
                    status=status,
                    created_at=T0 + timedelta(seconds=i),
                )
            )
        assert _ids(store.list(code_version="v1")) == ["wf-2", "wf-0"]
        assert _ids(store.list(code_version="v3")) == []
        assert _ids(store.list(statuses=[Status.RUNNING, Status.STUCK])) == ["wf-2", "wf-1", "wf-0"]
        assert _ids(store.list(statuses=[Status.STUCK])) == ["wf-2"]
        assert _ids(store.list(statuses=[])) == []
        assert _ids(store.list(code_version="v1", status=Status.RUNNING)) == ["wf-0"]

    def test_list_by_id_prefix_takes_the_prefix_literally(self, store: Store) -> None:
        for instance_id in ["order-1", "order-2", "order_x", "orders", "ord%1", "other"]:
            store.create(make_instance(instance_id))
        assert sorted(_ids(store.list(id_prefix="order-"))) == ["order-1", "order-2"]
        assert _ids(store.list(id_prefix="order_")) == ["order_x"]
        assert _ids(store.list(id_prefix="ord%")) == ["ord%1"]
        assert len(store.list(id_prefix="")) == 6

    def test_list_by_creation_time(self, store: Store) -> None:
        for i in range(5):
            store.create(make_instance(f"wf-{i}", created_at=T0 + timedelta(hours=i)))
        since, until = T0 + timedelta(hours=1), T0 + timedelta(hours=3)
        assert _ids(store.list(since=since, until=until)) == ["wf-2", "wf-1"]
        assert _ids(store.list(since=T0 + timedelta(hours=4))) == ["wf-4"]
        assert _ids(store.list(until=T0 + timedelta(minutes=1))) == ["wf-0"]

    def test_pages_with_a_cursor_neither_repeat_nor_skip(self, store: Store) -> None:
        # Eleven instances, several created in the same instant.
        made = [
            make_instance(f"wf-{i:02d}", created_at=T0 + timedelta(seconds=i // 3))
            for i in range(11)
        ]
        for instance in made:
            store.create(instance)
        seen: list[str] = []
        before = None
        while True:
            page = store.list(limit=4, before=before)
            if not page:
                break
            seen.extend(_ids(page))
            before = (page[-1].created_at, page[-1].id)
        newest_first = sorted(made, key=lambda i: (i.created_at, i.id), reverse=True)
        assert seen == _ids(newest_first)

    def test_count_by_status(self, store: Store) -> None:
        statuses = [Status.RUNNING, Status.RUNNING, Status.STUCK, Status.COMPLETED]
        for i, status in enumerate(statuses):
            store.create(make_instance(f"wf-{i}", status=status, workflow=f"w{i % 2}"))
        assert store.count_by_status() == {
            Status.RUNNING: 2,
            Status.STUCK: 1,
            Status.COMPLETED: 1,
        }
        assert store.count_by_status(workflow="w0") == {Status.RUNNING: 1, Status.STUCK: 1}
        assert store.count_by_status(id_prefix="nobody") == {}
        assert all(type(status) is Status for status in store.count_by_status())

    def test_pending_events_of_many_instances(self, store: Store) -> None:
        store.create(make_instance("wf-a"), [completed(make_event(0)), make_event(1)])
        store.create(make_instance("wf-b"), [make_event(0, state=State.STARTED, started_at=T0)])
        store.create(make_instance("wf-c"), [completed(make_event(0))])

        pending = store.pending_events(["wf-a", "wf-b", "wf-c", "missing"])

        assert {key: [e.seq for e in events] for key, events in pending.items()} == {
            "wf-a": [1],
            "wf-b": [0],
        }
        assert pending["wf-b"][0].state is State.STARTED
        assert_event_types(pending["wf-a"])
        assert store.pending_events([]) == {}
