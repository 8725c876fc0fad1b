"""Placing an order: reserve it exactly once, then confirm it with the existing task."""

from shop.celery import durable

from celery_durable import WorkflowContext
from orders.models import Order
from orders.tasks import send_confirmation


@durable.step(transactional="django")
def reserve(order_id: int) -> str:
    """Reserve the order with the ORM, in the ``transaction.atomic()`` that journals this
    step: exactly once (a crash before the commit undoes the write with the rest)."""
    if Order.objects.filter(pk=order_id, status="new").update(status="reserved") != 1:
        raise LookupError(f"order {order_id} is not new")
    return "reserved"


@durable.workflow
async def place_order(ctx: WorkflowContext, order_id: int) -> str:
    """Reserve the order, then confirm it."""
    await ctx.step(reserve, order_id)
    return str(await ctx.step(send_confirmation, order_id))
