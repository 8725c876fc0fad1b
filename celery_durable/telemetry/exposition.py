"""The ``/metrics`` text: the library's metrics from every process, and counts from the store.

Served by the console (``GET /metrics``) and by ``celery -A app durable metrics --port N``.
With ``PROMETHEUS_MULTIPROC_DIR`` set, a scrape adds up the samples every process (each
prefork pool process, beat, the caller processes) wrote there; without it, it shows the
serving process's own metrics only, which for a separate server means none of the
workers': set the directory for every process of the deployment. Either way the scrape
adds ``durable_instances{status}``, counted in the store at scrape time.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from celery_durable.engine.journal import Status
from celery_durable.stores.base import Store
from celery_durable.telemetry.metrics import INSTALL_HINT

__all__ = ["MULTIPROC_ENV", "StoreCollector", "metrics_server", "scrape"]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise ImportError(f"/metrics needs prometheus-client: {INSTALL_HINT}") from None
    return prometheus_client


class StoreCollector:
    """``durable_instances{status}``: how many instances each status has, in the store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[Any]:
        """One gauge family, every status listed (0 for none)."""
        from prometheus_client.core import GaugeMetricFamily

        counts = self.store.count_by_status()
        family = GaugeMetricFamily(
            "durable_instances", "Workflow instances in the store, by status.", labels=["status"]
        )
        for status in Status:
            family.add_metric([status.value], counts.get(status, 0))
        yield family


def scrape(store: Store | None = None) -> tuple[bytes, str]:
    """The exposition text of one scrape and its content type.

    Args:
        store: the journal whose instances are counted (``None``: no store counts).
    """
    prometheus = _prometheus()
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        registry = prometheus.CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry = prometheus.REGISTRY
    text: bytes = prometheus.generate_latest(registry)
    if store is not None:
        counted = prometheus.CollectorRegistry()
        counted.register(StoreCollector(store))
        text += prometheus.generate_latest(counted)
    return text, str(prometheus.CONTENT_TYPE_LATEST)


def metrics_server(store: Store | None, port: int, host: str = "0.0.0.0") -> ThreadingHTTPServer:
    """An HTTP server answering ``GET /metrics`` (and ``/``) with :func:`scrape`; the caller
    runs ``serve_forever()``. ``port`` 0 picks a free port (``server.server_address``)."""
    _prometheus()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] not in ("/", "/metrics"):
                self.send_error(404)
                return
            try:
                body, content_type = scrape(store)
            except Exception as exc:  # a store that is down: say so, keep serving
                self.send_error(503, f"{type(exc).__name__}: {exc}")
                return
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:  # scrapes are not news
            return

    return ThreadingHTTPServer((host, port), Handler)
