"""``celery -A telemetry.apps worker``: the telemetry tests' app, set by ``TEL_*`` variables.

``TEL_BROKER`` / ``TEL_STORE`` / ``TEL_QUEUE``: where it runs; ``TEL_SPANS``: the file
every process appends its spans to (tracing on, with ``opentelemetry-instrumentation-
celery`` too when ``TEL_CELERY_OTEL=1``); ``TEL_MARKS``: a directory the slow step
marks its starts in.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from celery import Celery

from celery_durable import Durable, current_step

app = Celery("telemetry_apps", broker=os.environ["TEL_BROKER"], set_as_current=False)
app.conf.update(
    task_default_queue=os.environ["TEL_QUEUE"],
    durable_store=os.environ["TEL_STORE"],
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    durable_heartbeat_interval=0.5,
    durable_tick_interval=1.0,
    durable_step_timeout=10.0,
    durable_tracing=bool(os.environ.get("TEL_SPANS")),
)
durable = Durable(app)

if os.environ.get("TEL_SPANS"):
    from telemetry.spans import setup_tracing

    setup_tracing(os.environ["TEL_SPANS"], os.environ.get("TEL_CELERY_OTEL") == "1")


class Refused(Exception):
    """The mail service refused."""


@durable.step
def reserve(item: str) -> str:
    return f"reserved {item}"


@durable.step(autoretry_for=(ConnectionError,), default_retry_delay=0.2, max_retries=3)
def charge(amount: int) -> int:
    step = current_step()
    assert step is not None
    if step.attempt == 1:
        raise ConnectionError("the card service hung up")
    return amount


@durable.step
def unreserve(item: str) -> str:
    return f"released {item}"


@durable.step
def notify(item: str) -> None:
    raise Refused(f"no mail for {item}")


@durable.step
def pack(item: str) -> str:
    return f"packed {item}"


@durable.workflow
async def ship(ctx, item: str) -> str:  # type: ignore[no-untyped-def]
    return await ctx.step(pack, item)


@durable.workflow
async def order(ctx, item: str) -> str:  # type: ignore[no-untyped-def]
    """Steps, a retry, a timer, a signal, a child, then a failure that compensates."""
    async with ctx.saga() as saga:
        await ctx.step(reserve, item)
        saga.compensate(unreserve, item)
        await ctx.step(charge, 5)
        await ctx.sleep(0.3)
        await ctx.wait_signal("approve", timeout=120)
        await ctx.child(ship, item)
        await ctx.step(notify, item)
    return "unreachable"


@durable.step
def quick(n: int) -> int:
    return n + 1


@durable.step
def slow(n: int) -> int:
    """Marks its start, then takes long enough to be killed in the middle."""
    step = current_step()
    assert step is not None
    marks = Path(os.environ["TEL_MARKS"])
    (marks / f"{step.idempotency_key}.{step.attempt}").touch()
    time.sleep(2.0 if step.attempt == 1 else 0.0)
    return n


@durable.workflow
async def plain(ctx, n: int) -> int:  # type: ignore[no-untyped-def]
    return await ctx.step(quick, await ctx.step(quick, n))


@durable.workflow
async def killed(ctx, n: int) -> int:  # type: ignore[no-untyped-def]
    return await ctx.step(quick, await ctx.step(slow, n))
