"""``GET /metrics``: the Prometheus text of :mod:`celery_durable.telemetry.exposition`."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from celery_durable.telemetry.exposition import scrape


async def metrics_endpoint(request: Request) -> Response:
    """The library's metrics (all processes, with ``PROMETHEUS_MULTIPROC_DIR``) and the
    store's instance counts; 501 without the ``[metrics]`` extra."""
    try:
        body, content_type = await run_in_threadpool(scrape, request.app.state.durable.store)
    except ImportError as exc:
        return PlainTextResponse(str(exc), status_code=501)
    return Response(body, media_type=content_type)


def metrics_routes() -> list[Route]:
    """The ``/metrics`` route (under the console's auth, as every route)."""
    return [Route("/metrics", metrics_endpoint, methods=["GET"])]
