"""v1 of :mod:`examples.fulfilment`, the code the first orders started on.

It is not a module a worker imports: ``make demo`` registers this function under the
workflow's name to play the first deploy, then registers v2's to play the second, as
restarting the workers on new code does.
"""

from __future__ import annotations

from datetime import timedelta

from celery_durable import WorkflowContext
from examples.fulfilment import charge_card, reserve_stock, ship


async def fulfil(ctx: WorkflowContext, order_id: str) -> str:
    """v1: reserve, charge, wait a day, ship."""
    await ctx.step(reserve_stock, order_id)
    await ctx.step(charge_card, order_id)
    await ctx.sleep(timedelta(days=1))
    await ctx.step(ship, order_id)
    return f"{order_id} shipped"
