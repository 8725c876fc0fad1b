"""The JSON API under ``/api``: the same reads and actions as the pages, for tools.

``GET /api/workflows`` (filters ``status``, ``workflow``, ``id_prefix``, ``since``,
``until``, ``limit``, ``cursor``), ``GET /api/workflows/{id}``, and ``POST
/api/workflows/{id}/signal`` (``{"name": ..., "payload": ...}``), ``/cancel``,
``/terminate``, ``/retry``. POSTs must be ``Content-Type: application/json`` (a cross-site
HTML form cannot send that, so no CSRF token is needed); errors are ``{"error": ...}``
with a 4xx status.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from celery_durable.runtime.durable import Durable
from celery_durable.web.actions import Actor, check_signal_name, perform
from celery_durable.web.errors import ConsoleError
from celery_durable.web.present import to_json
from celery_durable.web.queries import ListQuery, list_workflows, workflow_view

MAX_BODY = 1_000_000


def json_response(data: Any, status: int = 200) -> Response:
    """``data`` as a JSON response (times as ISO text)."""
    return Response(to_json(data), status_code=status, media_type="application/json")


def durable_of(request: Request) -> Durable:
    """The runtime the console was made for."""
    durable: Durable = request.app.state.durable
    return durable


def actor_of(request: Request) -> Actor:
    """Who sent the request (the authenticated user) and from where."""
    client = request.client
    address = f"{client.host}:{client.port}" if client else "unknown"
    forwarded = request.headers.get("x-forwarded-for")
    if forwarded:
        address += f" (forwarded for {forwarded})"
    return Actor(user=str(request.scope.get("durable.user", "-")), address=address)


async def list_api(request: Request) -> Response:
    """``GET /api/workflows``: a page of instances, with counts and ``next_cursor``."""
    query = ListQuery.parse(request.query_params)
    page = await run_in_threadpool(list_workflows, durable_of(request), query)
    return json_response(page.to_dict())


async def detail_api(request: Request) -> Response:
    """``GET /api/workflows/{id}``: the header fields, ``waiting_at``, ``signals`` and
    ``events``."""
    view = await run_in_threadpool(
        workflow_view, durable_of(request), request.path_params["workflow_id"]
    )
    return json_response(view.to_dict())


async def read_json(request: Request) -> dict[str, Any]:
    """The body of a JSON POST (an empty body is ``{}``).

    Raises:
        ConsoleError: another content type (415), a body too large (413), malformed JSON
            or not an object (400).
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise ConsoleError(
            415,
            "API actions take Content-Type: application/json (forms post to the pages); "
            "nothing was changed",
        )
    body = await request.body()
    if len(body) > MAX_BODY:
        raise ConsoleError(413, f"the body is larger than {MAX_BODY} bytes")
    if not body.strip():
        return {}
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise ConsoleError(
            400, f"the body is not valid JSON ({exc}); nothing was changed"
        ) from None
    if not isinstance(data, dict):
        raise ConsoleError(400, "the body must be a JSON object; nothing was changed")
    return data


def action_endpoint(action: str) -> Any:
    """The endpoint of ``POST /api/workflows/{id}/<action>``."""

    async def endpoint(request: Request) -> Response:
        data = await read_json(request)
        name = payload = None
        if action == "signal":
            unknown = set(data) - {"name", "payload"}
            if unknown:
                raise ConsoleError(
                    400, f"unknown field(s) {sorted(unknown)}: a signal is {{name, payload}}"
                )
            name, payload = check_signal_name(data.get("name")), data.get("payload")
        outcome = await run_in_threadpool(
            perform,
            durable_of(request),
            request.path_params["workflow_id"],
            action,
            actor_of(request),
            name,
            payload,
        )
        return json_response(outcome.to_dict())

    endpoint.__name__ = f"{action}_api"
    return endpoint


def api_routes() -> list[Route]:
    """The API's routes (mounted at the console's root)."""
    routes = [Route("/api/workflows", list_api, methods=["GET"])]
    for action in ("signal", "cancel", "terminate", "retry"):
        routes.append(
            Route(
                f"/api/workflows/{{workflow_id:path}}/{action}",
                action_endpoint(action),
                methods=["POST"],
            )
        )
    routes.append(Route("/api/workflows/{workflow_id:path}", detail_api, methods=["GET"]))
    return routes
