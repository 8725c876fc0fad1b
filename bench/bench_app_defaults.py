"""The bare chain's second peer: the same ``hop`` task on an app with Celery's defaults.

No setting of ``bench_app`` is repeated here: prefetch multiplier 4, early ack
(``task_acks_late`` False). It has its own queue, so that its worker and ``bench_app``'s
never take each other's messages; the broker and result backend are the same.
"""

from __future__ import annotations

import os

from celery import Celery

QUEUE = "bench-defaults"

app = Celery(
    "bench_defaults",
    broker=os.environ["BENCH_BROKER"],
    backend=os.environ["BENCH_BACKEND"],
)
app.conf.update(
    task_default_queue=QUEUE,
    broker_connection_retry_on_startup=True,
    result_expires=600,
)


@app.task(name="bench_defaults.hop")  # type: ignore[untyped-decorator]
def hop(x: int) -> int:
    """One link of the bare chain."""
    return x + 1
