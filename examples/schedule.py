"""The seed's Schedule program: a welcome mail, then congratulations after 30 days and
after a year.

The two long waits are durable timers: nothing sits in the broker or in a worker's
memory while they run — the instance's wake time is a row in the store, and beat's tick
fires it. Restart every worker in between; the mail still goes out once, on time.

Run it for real with ``celery -A examples.app worker`` and ``celery -A examples.app beat``
(or ``worker -B``); ``make demo`` runs it in seconds with ``celery_durable.testing.Clock``.
"""

from __future__ import annotations

from datetime import timedelta

from celery_durable import WorkflowContext
from examples import mailbox
from examples.app import durable


@durable.step(autoretry_for=(ConnectionError,), retry_backoff=True, max_retries=10)
def send_mail(to: str, subject: str) -> None:
    """Send one mail (here: append it to the example's mailbox file)."""
    mailbox.send(to, subject)
    print(f"    step send_mail({to}, {subject!r})", flush=True)


@durable.workflow
async def schedule(ctx: WorkflowContext, email: str) -> str:
    """Welcome ``email``, then congratulate after 30 days and after a year."""
    await ctx.step(send_mail, email, "Welcome!")
    await ctx.sleep(timedelta(days=30))
    await ctx.step(send_mail, email, "Congratulations: 30 days with us")
    await ctx.sleep(timedelta(days=335))
    await ctx.step(send_mail, email, "Congratulations: a year with us")
    return f"{email}: done at {ctx.now():%Y-%m-%d}"
