"""The seed's MoneyTransferSaga: move money between two accounts, or roll back.

Both legs of the transfer are booked as pending; if the bank refuses one with
``TransferFailed``, the legs already booked are rolled back by their own durable steps
and the failure propagates (the instance ends ``failed`` with type ``TransferFailed``).
A crash anywhere resumes at the step that was running, never re-booking a finished leg.
"""

from __future__ import annotations

from decimal import Decimal

from celery_durable import StepFailed, WorkflowContext, current_step
from examples import bank
from examples.app import durable


def _key() -> str:
    step = current_step()
    # Outside a workflow (called as a plain task) there is no journal to dedupe on.
    return step.idempotency_key if step else bank.new_key()


@durable.step(autoretry_for=(ConnectionError,), retry_backoff=True, max_retries=5)
def start_transfer(account: str, amount: Decimal) -> str:
    """Book a pending leg; the bank dedupes it on the step's idempotency key."""
    transfer_id = bank.start_transfer(_key(), account, amount)
    print(f"    step start_transfer({account}, {amount:+}) -> {transfer_id}", flush=True)
    return transfer_id


@durable.step
def complete_transfer(account: str, transfer_id: str) -> None:
    """Make a pending leg final."""
    bank.complete_transfer(account, transfer_id)
    print(f"    step complete_transfer({account}, {transfer_id})", flush=True)


@durable.step
def rollback_transfer(account: str, transfer_id: str) -> None:
    """Undo a pending leg."""
    bank.rollback_transfer(account, transfer_id)
    print(f"    step rollback_transfer({account}, {transfer_id})", flush=True)


@durable.workflow
async def money_transfer(
    ctx: WorkflowContext, src: str, dst: str, amount: Decimal
) -> dict[str, str]:
    """Transfer ``amount`` from ``src`` to ``dst``; roll back on ``TransferFailed``."""
    src_tran = dst_tran = None
    try:
        src_tran = await ctx.step(start_transfer, src, -amount)
        dst_tran = await ctx.step(start_transfer, dst, +amount)
        await ctx.step(complete_transfer, src, src_tran)
        await ctx.step(complete_transfer, dst, dst_tran)
        return {"from": src_tran, "to": dst_tran}
    except StepFailed as e:
        if e.type != "TransferFailed":
            raise
        if src_tran:
            await ctx.step(rollback_transfer, src, src_tran)
        if dst_tran:
            await ctx.step(rollback_transfer, dst, dst_tran)
        raise


@durable.workflow
async def money_transfer_saga(
    ctx: WorkflowContext, src: str, dst: str, amount: Decimal
) -> dict[str, str]:
    """The same transfer with ``ctx.saga()``: each booked leg registers its rollback, and
    any failure runs the registered rollbacks in reverse order, then propagates."""
    async with ctx.saga() as saga:
        src_tran = await ctx.step(start_transfer, src, -amount)
        saga.compensate(rollback_transfer, src, src_tran)
        dst_tran = await ctx.step(start_transfer, dst, +amount)
        saga.compensate(rollback_transfer, dst, dst_tran)
        await ctx.step(complete_transfer, src, src_tran)
        await ctx.step(complete_transfer, dst, dst_tran)
        return {"from": src_tran, "to": dst_tran}
    raise AssertionError("unreachable: a saga block re-raises")
