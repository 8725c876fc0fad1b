"""A load reads the instance row once: its input is not repeated on every event row.

Joining the instance onto its events sent (and decoded) a 500 KB input once per event:
98 MiB allocated to load 200 events. Every SQL path reads it once now.
"""

from __future__ import annotations

import tracemalloc

from celery_durable.engine.journal import Kind, State, Status
from celery_durable.stores.base import Commit
from celery_durable.stores.sqlalchemy import SQLAlchemyStore
from celery_durable.testing.contract.builders import T0, make_event, make_instance


def test_a_big_input_is_read_once_per_load(store: SQLAlchemyStore) -> None:
    big = '[["' + "x" * 500_000 + '"], {}]'
    store.create(make_instance("wf-big", status=Status.RUNNING, input=big))
    journal = [
        make_event(seq, kind=Kind.RUN, state=State.COMPLETED, output="1", completed_at=T0)
        for seq in range(200)
    ]
    assert store.commit(Commit("wf-big", 0, Status.RUNNING, T0, new_events=journal))

    tracemalloc.start()
    try:
        loaded = store.load("wf-big")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert loaded is not None
    assert loaded[0].input == big
    assert len(loaded[1]) == 200
    assert peak < 10 * 2**20, f"{peak / 2**20:.1f} MiB allocated to load one instance"


def test_the_start_mark_reads_it_once_too(pg_store: SQLAlchemyStore) -> None:
    big = '[["' + "x" * 500_000 + '"], {}]'
    store = pg_store
    store.create(make_instance("wf-mark", status=Status.RUNNING, input=big))
    journal = [
        make_event(seq, kind=Kind.RUN, state=State.COMPLETED, output="1", completed_at=T0)
        for seq in range(199)
    ]
    step = make_event(199, name="pay")
    assert store.commit(Commit("wf-mark", 0, Status.RUNNING, T0, new_events=[*journal, step]))

    tracemalloc.start()
    try:
        start = store.start_step("wf-mark", 1, 199, "pay", T0, T0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert start.marked
    assert start.journal is not None
    assert start.journal[0].input == big
    assert start.journal[1][199].state is State.STARTED
    assert peak < 10 * 2**20, f"{peak / 2**20:.1f} MiB allocated to mark one step"
