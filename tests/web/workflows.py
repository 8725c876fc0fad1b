"""The workflows the console tests look at, declared on each test's own app."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from celery_durable import Durable, Workflow, WorkflowContext


class TransferFailed(Exception):
    """The toy bank refused a booking."""


@dataclass
class Workflows:
    """The declared workflows, and the switch that fixes the buggy one."""

    transfer: Workflow[Any, Any]
    approval: Workflow[Any, Any]
    sleeper: Workflow[Any, Any]
    buggy: Workflow[Any, Any]
    parent: Workflow[Any, Any]
    quick: Workflow[Any, Any]
    broken: dict[str, bool]


def register(durable: Durable) -> Workflows:
    """Declare the test workflows on ``durable``'s app."""
    broken = {"yes": True}

    @durable.step
    def withdraw(account: str, amount: int) -> str:
        return f"took {amount} from {account}"

    @durable.step(autoretry_for=(TransferFailed,), max_retries=1, default_retry_delay=0.05)
    def deposit(account: str, amount: int) -> str:
        if account == "nobody":
            raise TransferFailed(f"cannot book +{amount} on {account!r}")
        return f"gave {amount} to {account}"

    @durable.step
    def refund(account: str, amount: int) -> str:
        return f"gave {amount} back to {account}"

    @durable.workflow
    async def transfer(ctx: WorkflowContext, src: str, dst: str, amount: int) -> list[str]:
        ctx.set_status({"stage": "booking"})
        async with ctx.saga() as saga:
            taken = await ctx.step(withdraw, src, amount)
            saga.compensate(refund, src, amount)
            given = await ctx.step(deposit, dst, amount)
        ctx.set_status({"stage": "done"})
        return [taken, given]

    @durable.workflow
    async def approval(ctx: WorkflowContext, item: str) -> Any:
        ctx.set_status({"waiting for": "approve"})
        decision = await ctx.wait_signal("approve")
        return {"item": item, "decision": decision}

    @durable.workflow
    async def sleeper(ctx: WorkflowContext) -> str:
        await ctx.sleep(3600)
        return "woke"

    @durable.workflow
    async def buggy(ctx: WorkflowContext, n: int) -> int:
        value = await ctx.step(withdraw, "alice", n)
        if broken["yes"]:
            raise RuntimeError("a bug: fixed by the next deploy")
        return len(value)

    @durable.workflow
    async def parent(ctx: WorkflowContext) -> Any:
        return await ctx.child(approval, "from parent")

    @durable.workflow
    async def quick(ctx: WorkflowContext, x: int) -> int:
        return x * 2

    return Workflows(transfer, approval, sleeper, buggy, parent, quick, broken)
