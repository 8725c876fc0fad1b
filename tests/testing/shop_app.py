"""A small app of the tests' own for the testing kit: a checkout saga with a flaky card
processor, an approval that waits for a signal, and a monthly reminder."""

from __future__ import annotations

import threading
from datetime import timedelta

from celery import Celery

from celery_durable import Durable, WorkflowContext

# A broker and a store no test has: the testing kit must not need them.
app = Celery("shop", broker="redis://127.0.0.1:1/0", set_as_current=False)
app.conf.update(durable_store="sqlite:////nonexistent/shop.sqlite3")
durable = Durable(app)

#: What the steps did, in order (the real bodies; mocks replace them).
LEDGER: list[str] = []

#: ``reserve`` waits until this is set (a test clears it to hold a step running).
GATE = threading.Event()
GATE.set()


class CardDeclined(Exception):
    """The card processor said no."""


@durable.step
def reserve(item: str) -> str:
    GATE.wait(10)
    LEDGER.append(f"reserve {item}")
    return f"reservation-{item}"


@durable.step
def release(reservation: str) -> None:
    LEDGER.append(f"release {reservation}")


@durable.step(autoretry_for=(ConnectionError,), retry_backoff=60, max_retries=3)
def charge(card: str, amount: int) -> str:
    LEDGER.append(f"charge {card} {amount}")
    return f"payment-{card}-{amount}"


@durable.step
def remind(user: str, month: int) -> str:
    LEDGER.append(f"remind {user} {month}")
    return f"{user}:{month}"


@durable.workflow
async def checkout(ctx: WorkflowContext, item: str, card: str, amount: int) -> str:
    """Reserve the item, then charge the card; a failed charge releases the item."""
    async with ctx.saga() as saga:
        reservation = await ctx.step(reserve, item)
        saga.compensate(release, reservation)
        return await ctx.step(charge, card, amount)
    raise AssertionError("unreachable: a saga block re-raises")


@durable.workflow
async def approval(ctx: WorkflowContext, request: str) -> str:
    """Wait up to two days for a manager's answer."""
    answer = await ctx.wait_signal("answer", timeout=timedelta(days=2))
    return f"{request}: {answer}"


@durable.workflow
async def reminders(ctx: WorkflowContext, user: str, months: int) -> list[str]:
    """Remind ``user`` once a month (every 30 days)."""
    sent = []
    for month in range(1, months + 1):
        await ctx.sleep(timedelta(days=30))
        sent.append(await ctx.step(remind, user, month))
    return sent
