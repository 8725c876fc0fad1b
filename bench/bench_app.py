"""The benchmark's Celery app: bare tasks for the chain baseline, and durable steps.

Both run on the same worker with the same settings (prefetch 1, ``acks_late``), so the
comparison is between Celery's own chain and celery_durable's workflow, nothing else.
"""

from __future__ import annotations

import json
import os

from celery import Celery

from celery_durable import Durable, WorkflowContext

app = Celery(
    "bench",
    broker=os.environ["BENCH_BROKER"],
    backend=os.environ["BENCH_BACKEND"],
)
app.conf.update(
    durable_store=os.environ["BENCH_STORE"],
    worker_prefetch_multiplier=1,
    task_acks_late=True,
    broker_connection_retry_on_startup=True,
    result_expires=600,
)
# durable_* settings to measure a variant, e.g. BENCH_DURABLE='{"durable_eager_steps": 0}'
# (the script and its worker both read it: see bench/README.md, "What each change bought").
app.conf.update(json.loads(os.environ.get("BENCH_DURABLE") or "{}"))
durable = Durable(app)


@app.task  # type: ignore[untyped-decorator]
def hop(x: int) -> int:
    """One link of the bare chain."""
    return x + 1


@durable.step
def add_one(x: int) -> int:
    """One step of the durable workflow."""
    return x + 1


@durable.workflow
async def steps(ctx: WorkflowContext, n: int) -> int:
    """``n`` steps in a row, each fed the previous result (like the chain)."""
    x = 0
    for _ in range(n):
        x = await ctx.step(add_one, x)
    return x


@durable.step
def undo(x: int) -> int:
    """The compensation of an ``add_one`` that returned ``x``."""
    return x - 1


class Refused(Exception):
    """The saga's last step fails with this."""


@durable.step
def refuse(x: int) -> int:
    """The saga's last step: always fails."""
    raise Refused(f"step fails on purpose at x={x}")


@durable.workflow
async def saga_fails_last(ctx: WorkflowContext, n: int) -> int:
    """A saga of ``n`` steps whose last fails: the ``n - 1`` compensations registered
    before it run in reverse order, then the instance ends ``failed``."""
    x = 0
    async with ctx.saga() as saga:
        for _ in range(n - 1):
            x = await ctx.step(add_one, x)
            saga.compensate(undo, x)
        await ctx.step(refuse, x)
    return x
