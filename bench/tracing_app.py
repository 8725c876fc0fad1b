"""The tracing benchmark's app: ``BENCH_TRACING=1`` turns celery_durable's tracing on, with
the OpenTelemetry SDK and a batch processor whose exporter drops the spans (the cost
measured is making them, not shipping them); ``0`` turns it off. ``BENCH_QUEUE`` keeps
the two workers' messages apart."""

from __future__ import annotations

import os
from collections.abc import Sequence

from celery import Celery

from celery_durable import Durable, WorkflowContext


def tracer_provider() -> None:
    """An SDK tracer provider whose spans go nowhere (after being made and batched)."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class Dropped(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Dropped()))
    trace.set_tracer_provider(provider)


def make_app(tracing: bool, queue: str) -> tuple[Celery, Durable]:
    """The app of one side of the comparison (the same but for ``durable_tracing``)."""
    app = Celery(f"bench_{queue}", broker=os.environ["BENCH_BROKER"], set_as_current=False)
    app.conf.update(
        durable_store=os.environ["BENCH_STORE"],
        task_default_queue=queue,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        durable_tracing=tracing,
    )
    return app, Durable(app)


TRACING = os.environ.get("BENCH_TRACING") == "1"
if TRACING:
    tracer_provider()
app, durable = make_app(TRACING, os.environ.get("BENCH_QUEUE", "bench-tracing"))


@durable.step(name="bench.tracing.add_one")
def add_one(x: int) -> int:
    """One step."""
    return x + 1


@durable.workflow(name="bench.tracing.steps")
async def steps(ctx: WorkflowContext, n: int) -> int:
    """``n`` steps in a row, each fed the previous result."""
    x = 0
    for _ in range(n):
        x = await ctx.step(add_one, x)
    return x
