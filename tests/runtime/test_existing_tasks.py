"""Existing tasks as steps: plain ``@shared_task`` functions from another module, awaited
with ``ctx.step`` on a real worker and Redis, journaled through Celery's task signals.

The result comes back, a failure raises ``StepFailed`` with the task's exception type
and a saga's compensation (another plain task) runs, Celery's ``autoretry_for`` retries
are journaled as retries, ``current_step()`` gives the task its idempotency key, a copy
delivered after the outcome was journaled does not journal it twice, and the tasks work
as before outside workflows.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import pytest
from celery import Celery

from celery_durable import Durable, StepFailed, WorkflowContext
from tests.runtime import legacy_tasks
from tests.runtime.legacy_tasks import charge_card, flaky_lookup, refund_card
from tests.runtime.waiting import wait_for

Worker = Callable[..., AbstractContextManager[Any]]


@pytest.fixture(autouse=True)
def _clean() -> None:
    legacy_tasks.CALLS.clear()
    legacy_tasks.FLAKY["left"] = 0


@pytest.fixture
def shop(durable: Durable) -> Durable:
    @durable.workflow(name="legacy.pay")
    async def pay(ctx: WorkflowContext, order: str, amount: int) -> str:
        try:
            async with ctx.saga() as saga:
                saga.compensate(refund_card, order)
                charged = await ctx.step(charge_card, order, amount)
                found = await ctx.step(flaky_lookup, order)
                return f"{charged}; {found}"
        except StepFailed as failed:
            return f"rolled back after {failed.type}: {failed.message}"

    return durable


def test_a_plain_task_runs_as_a_step(shop: Durable, worker: Worker) -> None:
    with worker():
        handle = shop.workflows["legacy.pay"].delay("o-1", 10)
        assert handle.result(timeout=30) == "charged o-1 10; found o-1"
    assert handle.steps() == ["charge_card", "flaky_lookup"]
    history = handle.history()
    assert [(e.name, e.state.value, e.attempts) for e in history] == [
        ("legacy.charge_card", "completed", 1),
        ("legacy.flaky_lookup", "completed", 1),
    ]
    assert history[0].result == "charged o-1 10"
    assert history[0].started_at is not None
    assert ("charge_card", "o-1", f"{handle.id}:0") in legacy_tasks.CALLS


def test_a_failing_plain_task_fails_the_step_and_compensation_runs(
    shop: Durable, worker: Worker
) -> None:
    with worker():
        handle = shop.workflows["legacy.pay"].delay("o-2", -5)
        assert handle.result(timeout=30) == "rolled back after ValueError: cannot charge -5"
    assert handle.steps() == ["charge_card", "refund_card"]
    failed = handle.history()[0]
    assert failed.error is not None
    assert failed.error.type == "ValueError"
    assert ("refund_card", "o-2", f"{handle.id}:1") in legacy_tasks.CALLS


def test_celery_retries_of_a_plain_task_are_journaled_as_one_step(
    shop: Durable, worker: Worker
) -> None:
    legacy_tasks.FLAKY["left"] = 2
    with worker():
        handle = shop.workflows["legacy.pay"].delay("o-3", 1)
        assert handle.result(timeout=30) == "charged o-3 1; found o-3"
    lookups = [c for c in legacy_tasks.CALLS if c[0] == "flaky_lookup"]
    assert [key for _, _, key in lookups] == [f"{handle.id}:1"] * 3  # one id, three runs
    assert handle.history()[1].attempts == 3


def test_a_copy_delivered_after_the_outcome_is_not_journaled_again(
    shop: Durable, worker: Worker, app: Celery
) -> None:
    with worker():
        handle = shop.workflows["legacy.pay"].delay("o-4", 3)
        assert handle.result(timeout=30) == "charged o-4 3; found o-4"
        before = shop.store.load(handle.id)
        app.tasks["legacy.charge_card"].apply_async(("o-4", 999), task_id=f"{handle.id}:0")
        # The copy runs (a signal cannot stop it), with the same idempotency key.
        wait_for(lambda: ("charge_card", "o-4", f"{handle.id}:0") in legacy_tasks.CALLS[2:])
    assert shop.store.load(handle.id) == before
    assert handle.result(timeout=1) == "charged o-4 3; found o-4"


def test_plain_tasks_work_as_before_outside_workflows(shop: Durable) -> None:
    assert charge_card.apply(("o-5", 2)).get() == "charged o-5 2"
    assert legacy_tasks.CALLS == [("charge_card", "o-5", None)]
    assert charge_card("o-6", 1) == "charged o-6 1"


def test_something_that_is_not_a_task_is_refused_with_the_fix(durable: Durable) -> None:
    with pytest.raises(TypeError, match=r"for a local function use ctx\.run"):
        durable.resolve_step(print)
