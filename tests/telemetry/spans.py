"""Spans written by every process of a test to one JSON-lines file, and read back.

Each process (the caller, the worker's prefork pool processes) exports through the SDK's
``InMemorySpanExporter``, which this subclass also appends to a file (one line per span,
one ``write`` each, so processes do not interleave).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


class FileSpans(InMemorySpanExporter):
    """The SDK's in-memory exporter, also appending each span to ``path``."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = super().export(spans)
        lines = "".join(json.dumps(_row(span)) + "\n" for span in spans)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, lines.encode())
        finally:
            os.close(fd)
        return result


def _row(span: ReadableSpan) -> dict[str, Any]:
    context = span.get_span_context()
    assert context is not None
    return {
        "name": span.name,
        "trace": f"{context.trace_id:032x}",
        "span": f"{context.span_id:016x}",
        "parent": f"{span.parent.span_id:016x}" if span.parent else None,
        "attributes": dict(span.attributes or {}),
        "links": [f"{link.context.span_id:016x}" for link in span.links],
        "start": span.start_time,
        "end": span.end_time,
        "status": span.status.status_code.name,
        "scope": span.instrumentation_scope.name if span.instrumentation_scope else None,
        "pid": os.getpid(),
    }


@dataclass(frozen=True)
class Span:
    """One exported span, as read back."""

    name: str
    trace: str
    span: str
    parent: str | None
    attributes: dict[str, Any]
    links: list[str]
    start: int
    end: int
    status: str
    scope: str | None
    pid: int


def read_spans(path: Path) -> list[Span]:
    """Every span the test's processes exported."""
    if not path.exists():
        return []
    return [Span(**json.loads(line)) for line in path.read_text().splitlines() if line]


def setup_tracing(path: str, instrument_celery: bool) -> None:
    """This process's tracer provider (and, if asked, Celery's instrumentation)."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(FileSpans(path)))
    trace.set_tracer_provider(provider)
    if instrument_celery:
        from opentelemetry.instrumentation.celery import CeleryInstrumentor

        CeleryInstrumentor().instrument()
