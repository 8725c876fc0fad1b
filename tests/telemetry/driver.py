"""The caller of the tracing test, in a process of its own (its tracer provider and
Celery's instrumentation stay out of the pytest process): starts ``order`` under a span of
its own, signals it once it waits, waits for its end, prints what the test needs."""

from __future__ import annotations

import json
import time

from opentelemetry import trace

from celery_durable import WorkflowFailed
from celery_durable.engine.journal import Kind
from telemetry.apps import order


def main() -> None:
    tracer = trace.get_tracer("telemetry.driver")
    with tracer.start_as_current_span("caller") as span:
        handle = order.delay("book")
        caller = span.get_span_context()
    deadline = time.monotonic() + 60
    while not any(e.kind is Kind.SIGNAL for e in handle.history()):
        assert time.monotonic() < deadline, "the workflow never waited for its signal"
        time.sleep(0.05)
    handle.signal("approve", True)
    try:
        handle.result(timeout=60)
        ended = "completed"
    except WorkflowFailed as exc:
        ended = exc.type
    provider = trace.get_tracer_provider()
    provider.shutdown()  # type: ignore[attr-defined]
    print(
        json.dumps(
            {
                "workflow_id": handle.id,
                "trace": f"{caller.trace_id:032x}",
                "caller": f"{caller.span_id:016x}",
                "ended": ended,
            }
        )
    )


if __name__ == "__main__":
    main()
