"""The per-process cache of suspended workflows (runtime/live.py), as a unit: which
journals an entry may continue, what it keeps, and what it closes."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from typing import Any

from celery_durable.engine import WorkflowContext
from celery_durable.engine.journal import Event, Instance, State, Status
from celery_durable.engine.live import replay_live
from celery_durable.runtime.live import LiveEntry, LiveWorkflows, journal_after
from celery_durable.stores.base import Commit
from celery_durable.testing.contract.builders import make_instance

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
closed: list[str] = []


class Codec:
    name = "json"

    def dumps(self, value: Any) -> str:
        import json

        return json.dumps(value)

    def loads(self, data: str) -> Any:
        import json

        return json.loads(data)


async def wf(ctx: WorkflowContext, n: int) -> int:
    try:
        total = 0
        for i in range(n):
            total += await ctx.step("add", i)
        return total
    finally:
        closed.append(ctx.workflow_id)  # (quietly: ctx.is_replaying while it is closed)


def entry(instance_id: str, steps: int = 3) -> LiveEntry:
    """An entry suspended on its first step, with the journal its first commit left."""
    instance = make_instance(instance_id, status=Status.RUNNING, input=f"[[{steps}], {{}}]")
    decision, run = replay_live(wf, instance, [], codec=Codec(), now=T0)
    assert run is not None
    commit = Commit(
        instance_id, instance.version, Status.RUNNING, T0, new_events=decision.new_events
    )
    after = journal_after(instance, [], commit)
    assert after is not None
    return LiveEntry(run, wf, *after)


def test_an_entry_continues_its_own_journal_with_pending_events_settled() -> None:
    kept = entry("wf-1")
    instance, events = kept.instance, list(kept.events)
    assert kept.fits(wf, instance, events)
    settled = [dataclasses.replace(events[0], state=State.COMPLETED, output="0")]
    moved = dataclasses.replace(instance, version=instance.version + 2)  # a mark, a beat
    assert kept.fits(wf, moved, settled)


def test_an_entry_refuses_other_journals() -> None:
    kept = entry("wf-2")
    instance, events = kept.instance, list(kept.events)
    assert not kept.fits(lambda: None, instance, events)  # redeployed code
    assert not kept.fits(wf, dataclasses.replace(instance, run=2), events)  # a new run
    assert not kept.fits(wf, instance, [*events, events[0]])  # a longer journal
    renamed = [dataclasses.replace(events[0], name="other")]
    assert not kept.fits(wf, instance, renamed)


def test_a_final_event_that_changed_means_a_rewound_journal() -> None:
    kept = entry("wf-3")
    done = dataclasses.replace(kept.events[0], state=State.COMPLETED, output="0")
    kept.events[0] = done
    again = [dataclasses.replace(done, output="7")]
    assert not kept.fits(wf, kept.instance, again)


def test_the_cache_keeps_the_newest_within_its_size_and_closes_the_rest() -> None:
    closed.clear()
    cache = LiveWorkflows(size=2)
    for name in ("a", "b", "c"):
        cache.put(entry(name))
    assert len(cache) == 2
    assert cache.take("a") is None
    assert closed == ["a"]  # its finally block ran, once, when it was dropped
    taken = cache.take("b")
    assert taken is not None
    assert cache.take("b") is None
    taken.run.close()
    cache.clear()
    assert sorted(closed) == ["a", "b", "c"]


def test_long_journals_are_kept_fewer_at_a_time() -> None:
    closed.clear()
    cache = LiveWorkflows(size=100, max_events=2)
    cache.put(entry("x"))
    cache.put(entry("y"))
    cache.put(entry("z"))
    assert len(cache) == 2  # one event each
    assert closed == ["x"]
    cache.clear()


def test_journal_after_applies_a_commit_as_the_store_does() -> None:
    instance = make_instance("wf-4", status=Status.RUNNING, inbox=2)
    step = Event(0, "step", "add", "[[0], {}]", State.STARTED, scheduled_at=T0, attempts=2)
    done = dataclasses.replace(step, state=State.COMPLETED, output="0", attempts=1)
    new = Event(1, "step", "add", "[[1], {}]", State.SCHEDULED, scheduled_at=T0)
    commit = Commit(
        "wf-4",
        instance.version,
        Status.RUNNING,
        T0,
        outcomes=[done],
        new_events=[new],
        consumed=[(5, 0)],
        wake_at=T0,
    )
    after = journal_after(instance, [step], commit)
    assert after is not None
    stored, events = after
    assert stored.version == instance.version + 1
    assert stored.inbox == 1
    assert stored.wake_at == T0
    assert events == [dataclasses.replace(done, attempts=2), new]
    assert journal_after(instance, [step], dataclasses.replace(commit, resent=[0])) is None
    ended = dataclasses.replace(commit, status=Status.COMPLETED)
    assert journal_after(instance, [step], ended) is None


def test_a_forked_process_starts_empty(monkeypatch: Any) -> None:
    cache = LiveWorkflows(size=10)
    cache.put(entry("f"))
    monkeypatch.setattr("os.getpid", lambda: -1)
    assert cache.take("f") is None
    assert isinstance(make_instance("unused"), Instance)
