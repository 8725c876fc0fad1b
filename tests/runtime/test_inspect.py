"""What ``durable.list()`` and ``handle.status()`` tell, with a real worker on real Redis."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from celery_durable import Durable, Failure, Status, WorkflowContext, WorkflowInfo
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
