"""The Celery app of ``bench/sleeping.py``: one workflow that sleeps, then returns.

Both the benchmark process (which starts the workflows and runs the tick) and the worker
import this module. Each reads the time from a :class:`celery_durable.testing.Clock`
that starts ``BENCH_CLOCK_OFFSET`` seconds ahead of the wall clock (0 by default): the
benchmark moves its own clock forward past every timer, then starts a worker whose clock
is ahead by the same amount, so 100,000 hour-long timers come due at one moment without
waiting an hour and without editing the journal.

``durable_eta_max`` is 10 s: a timer of an hour is never a message with an ETA, it lives
in the store only and the tick fires it.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

from celery import Celery

from celery_durable import Durable, WorkflowContext
from celery_durable.testing import Clock

app = Celery("bench_sleeping", broker=os.environ["BENCH_BROKER"])
app.conf.update(
    durable_store=os.environ["BENCH_STORE"],
    durable_eta_max=10,
    worker_prefetch_multiplier=1,
    task_acks_late=True,
    broker_connection_retry_on_startup=True,
)
clock = Clock(
    datetime.now(timezone.utc) + timedelta(seconds=float(os.environ.get("BENCH_CLOCK_OFFSET", 0)))
)
durable = Durable(app, clock=clock)


@durable.workflow
async def sleeper(ctx: WorkflowContext, seconds: float) -> str:
    """Sleep ``seconds`` (a durable timer: a row in the store, nothing in a worker)."""
    await ctx.sleep(seconds)
    return "woke"
