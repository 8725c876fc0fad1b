"""Builders and checks the store contract tests share.

Plain functions and constants, no pytest: ``make_instance`` and ``make_event`` build
journal records with plausible defaults (keyword arguments override them), ``completed``
and ``failed`` give an event an outcome, ``send`` sends a signal and returns it as stored,
``run_together`` releases threads at the same instant (for the concurrency tests), and the
``assert_*`` checks say that a store gave back enums as enums and timestamps as aware UTC
datetimes. Store-specific tests import them too, through
:mod:`celery_durable.testing.contract`.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import TypeVar

from celery_durable.engine.journal import Event, Failure, Instance, Kind, Signal, State, Status
from celery_durable.stores.base import Store

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


def send(
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
