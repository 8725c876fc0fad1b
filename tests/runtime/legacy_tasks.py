"""Tasks as an existing project has them: plain ``@shared_task`` functions that were never
written for celery_durable (no base class, default options, Celery's own retry options)."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from celery_durable import current_step

#: What the tasks saw, for the tests: (task, argument, idempotency key or None).
CALLS: list[tuple[str, Any, str | None]] = []
#: How many more times ``flaky_lookup`` fails before it answers.
FLAKY: dict[str, int] = {"left": 0}


def _seen(task: str, argument: Any) -> None:
    step = current_step()
    CALLS.append((task, argument, step.idempotency_key if step else None))


@shared_task(name="legacy.charge_card")
def charge_card(order: str, amount: int) -> str:
    _seen("charge_card", order)
    if amount < 0:
        raise ValueError(f"cannot charge {amount}")
    return f"charged {order} {amount}"


@shared_task(name="legacy.refund_card")
def refund_card(order: str) -> str:
    _seen("refund_card", order)
    return f"refunded {order}"


@shared_task(
    name="legacy.flaky_lookup",
    autoretry_for=(ConnectionError,),
    max_retries=3,
    default_retry_delay=0.2,
)
def flaky_lookup(order: str) -> str:
    _seen("flaky_lookup", order)
    if FLAKY["left"] > 0:
        FLAKY["left"] -= 1
        raise ConnectionError("the lookup service is down")
    return f"found {order}"
