"""The signal part of the store contract: the inbox of an instance.

``send_signal`` (kept in arrival order, counted in ``inbox``, bumps the version so a commit
read before it loses its compare-and-set, pulls ``wake_at`` earlier; a finished or missing
instance gets nothing), ``signals`` (the unconsumed ones), and ``Commit.consumed`` (each
signal consumed once, and only by a commit that applies as a whole), under concurrency too.
"""

from __future__ import annotations

import dataclasses
import threading
from datetime import datetime, timedelta

import pytest

from celery_durable.engine.journal import Failure, Kind, Signal, State, Status
from celery_durable.stores.base import Commit, Store
from celery_durable.testing.contract.builders import (
    ELSEWHERE,
    T0,
    assert_instance_types,
    assert_utc,
    completed,
    make_event,
    make_instance,
    run_together,
    send,
)


class SignalContract:
    """Sending, reading and consuming signals."""

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
        signal = send(store, "wf-sig-cas", "s", wake_by=T0 + timedelta(minutes=1))
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
            send(store, "wf-inbox", "b", '"1"', at=T0 + timedelta(seconds=3)),
            send(store, "wf-inbox", "a", None, at=T0 + timedelta(seconds=1)),
            send(store, "wf-inbox", "b", '"2"', at=T0 + timedelta(seconds=2)),
            send(store, "wf-inbox", "c", "", at=T0),
        ]
        send(store, "wf-other", "a", '"other"')

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
        first, second, third = (send(store, "wf-consume", f"s{i}") for i in range(3))
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
        taken = send(store, "wf-once", "s")
        fresh = send(store, "wf-once", "s")
        foreign = send(store, "wf-once-other", "s")
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
        signal = send(store, "wf-twice", "s")
        before = store.load("wf-twice")

        applied = store.commit(
            Commit("wf-twice", 1, Status.RUNNING, T0, consumed=[(signal.id, 0), (signal.id, 1)])
        )

        assert applied is False
        assert store.load("wf-twice") == before
        assert store.signals("wf-twice") == [signal]

    def test_stale_commit_leaves_its_signals_unconsumed(self, store: Store) -> None:
        store.create(make_instance("wf-sig-stale", status=Status.RUNNING))
        signal = send(store, "wf-sig-stale", "s")
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
        signal = send(store, "wf-sig-fww", "s")
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
        signal = send(store, instance_id, "s")
        other = send(store, instance_id, "t")

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
