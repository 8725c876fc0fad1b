"""An order fulfilment workflow, deployed twice while orders are in flight.

v1 (``examples/fulfilment_v1.py``) reserved the stock, charged the card, waited a day
and shipped. v2, this module, adds a fraud check before the charge. Orders started on v1
may be anywhere in their day of waiting when v2 goes out; ``ctx.patched("fraud-check")``
lets both run on v2's code: an order whose journal was written before the patch replays
the old branch (no fraud check, it was charged already), every order that reaches the
check on v2 takes the new one.

Before rolling out, ``celery -A examples.app durable replay-check`` replays every open
order against v2 (exit 1 on any mismatch); ``celery -A examples.app durable patches``
later says when no open order replays the old branch any more, so the ``if`` can become
``ctx.deprecate_patch("fraud-check")`` followed by the new code alone.
"""

from __future__ import annotations

from datetime import timedelta

from celery_durable import WorkflowContext
from examples.app import durable


@durable.step
def reserve_stock(order_id: str) -> str:
    """Reserve the order's items."""
    print(f"    step reserve_stock({order_id})", flush=True)
    return f"stock for {order_id}"


@durable.step
def check_fraud(order_id: str) -> bool:
    """Score the order (here: every order passes)."""
    print(f"    step check_fraud({order_id})", flush=True)
    return True


@durable.step
def charge_card(order_id: str) -> str:
    """Charge the customer."""
    print(f"    step charge_card({order_id})", flush=True)
    return f"charge for {order_id}"


@durable.step
def ship(order_id: str) -> str:
    """Hand the parcel to the carrier."""
    print(f"    step ship({order_id})", flush=True)
    return f"parcel for {order_id}"


@durable.workflow
async def fulfil(ctx: WorkflowContext, order_id: str) -> str:
    """v2: reserve, check for fraud (new), charge, wait a day, ship."""
    await ctx.step(reserve_stock, order_id)
    checked = "without a fraud check"
    if ctx.patched("fraud-check"):
        await ctx.step(check_fraud, order_id)
        checked = "fraud-checked"
    await ctx.step(charge_card, order_id)
    await ctx.sleep(timedelta(days=1))
    await ctx.step(ship, order_id)
    return f"{order_id} shipped, {checked}"
