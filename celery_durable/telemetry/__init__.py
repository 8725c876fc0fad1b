"""Observability for celery_durable: OpenTelemetry traces, Prometheus metrics, log context.

The runtime calls the small hooks of :class:`~celery_durable.telemetry.tracing.Tracing`
and :class:`~celery_durable.telemetry.metrics.Metrics`; this package imports neither the
runtime nor the console (only the engine's journal records and the stores), and imports
``opentelemetry`` and ``prometheus_client`` lazily, so an app without the ``[otel]`` or
``[metrics]`` extra pays nothing for it:

* :mod:`.tracing`: one span per workflow run (its context stored with the instance), a
  child span per step attempt, spans for timers, signal waits, children and
  compensations; ``durable_tracing``.
* :mod:`.metrics`: Prometheus counters and histograms (multiprocess-safe under prefork
  with ``PROMETHEUS_MULTIPROC_DIR``); ``durable_metrics``.
* :mod:`.exposition`: the ``/metrics`` text for the console and ``durable metrics``.
* :mod:`.logs`: the workflow id, run and seq on every library log record.
"""

from __future__ import annotations

from celery_durable.telemetry.logs import LogContext, log_context

__all__ = ["LogContext", "log_context"]
