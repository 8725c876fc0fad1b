"""Placing an order: reserve it exactly once, then confirm it with the existing task."""

from shop.celery import durable
from sqlalchemy import Connection, text

from celery_durable import WorkflowContext
from orders.tasks import send_confirmation


@durable.step(transactional=True)
def reserve(conn: Connection, order_id: int) -> str:
    """Reserve the order in the same transaction that journals this step: exactly once."""
    done = conn.execute(
        text("UPDATE orders_order SET status = 'reserved' WHERE id = :id AND status = 'new'"),
        {"id": order_id},
    )
    if done.rowcount != 1:
        raise LookupError(f"order {order_id} is not new")
    return "reserved"


@durable.workflow
async def place_order(ctx: WorkflowContext, order_id: int) -> str:
    """Reserve the order, then confirm it."""
    await ctx.step(reserve, order_id)
    return str(await ctx.step(send_confirmation, order_id))
