"""What ``durable.list()`` and ``handle.status()`` tell, with a real worker on real Redis."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from celery_durable import (
    Durable,
    Failure,
    PendingSignal,
    Status,
    WorkflowContext,
    WorkflowInfo,
)
from celery_durable.client import start
from runtime.waiting import wait_for, waiting_on


def test_list_returns_decoded_records(durable: Durable, worker: Any) -> None:
    def charge(account: str, amount: Decimal) -> str:
        return f"tx-{account}-{amount}"

    @durable.workflow
    async def pay(ctx: WorkflowContext, account: str, amount: Decimal, *, note: str) -> str:
        ctx.set_status({"stage": "charging", "amount": amount})
        tx: str = await ctx.run(charge, account, amount)
        ctx.set_status({"stage": "approval"})
        await ctx.wait_signal("approved")
        return tx

    with worker():
        done = pay.apply_async(("alice", Decimal("10.50")), {"note": "first"}, workflow_id="p1")
        done.signal("approved")
        assert done.result(timeout=30) == "tx-alice-10.50"
        waiting = pay.apply_async(("bob", Decimal("3")), {"note": "second"}, workflow_id="p2")
        wait_for(lambda: waiting_on(waiting, "signal"))

    infos = durable.list()
    assert [type(i) for i in infos] == [WorkflowInfo, WorkflowInfo]
    latest, first = infos
    assert (first.id, first.workflow, first.status) == ("p1", pay.name, Status.COMPLETED)
    assert (first.args, first.kwargs) == (("alice", Decimal("10.50")), {"note": "first"})
    assert first.result == "tx-alice-10.50"
    assert first.custom == {"stage": "approval"}
    assert (first.error, first.parent_id, first.run, first.note) == (None, None, 1, None)
    assert first.created_at <= first.updated_at

    assert (latest.id, latest.status) == ("p2", Status.RUNNING)
    assert latest.args == ("bob", Decimal("3"))
    assert latest.result is None
    assert latest.custom == {"stage": "approval"}

    (only,) = durable.list(status="running")
    assert only.id == "p2"
    assert durable.list(workflow="nope") == []
    assert durable.terminate("p2", "enough")
    (stopped,) = durable.list(status=Status.CANCELLED)
    assert stopped.error == Failure("WorkflowTerminated", "enough")
    assert stopped.result is None


def test_status_shows_signals_nobody_waits_for(durable: Durable, worker: Any) -> None:
    @durable.workflow
    async def approval(ctx: WorkflowContext) -> Any:
        return await ctx.wait_signal("approved")

    with worker():
        handle = approval.delay()
        wait_for(lambda: waiting_on(handle, "signal"))
        assert handle.status().pending_signals == ()
        before = durable.now()
        handle.signal("aproved", {"by": "alice", "amount": Decimal("2.50")})  # misspelt
        status = handle.status()
        assert status == Status.RUNNING
        (pending,) = status.pending_signals
        assert isinstance(pending, PendingSignal)
        assert (pending.name, pending.payload) == (
            "aproved",
            {"by": "alice", "amount": Decimal("2.50")},
        )
        assert before <= pending.sent_at <= durable.now()
        assert (status.run, status.note) == (1, None)

        handle.signal("approved", "yes")
        assert handle.result(timeout=30) == "yes"
    # The taken one is gone; the misspelt one stays visible after the workflow ended.
    assert [p.name for p in handle.status().pending_signals] == ["aproved"]


def test_status_notes_why_a_live_instance_is_not_moving(durable: Durable, worker: Any) -> None:
    with worker():
        handle = start(durable, "nowhere.deployed", (), {}, workflow_id="lost")
        wait_for(lambda: handle.status().note is not None)
    status = handle.status()
    assert status == Status.PENDING
    assert status.note is not None
    assert "waiting for a worker that knows workflow nowhere.deployed" in status.note
    (info,) = durable.list()
    assert info.note == status.note
