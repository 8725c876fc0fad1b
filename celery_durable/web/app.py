"""The console as one ASGI application (Starlette), for ``celery ... durable web`` or to
mount in an existing ASGI site."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from celery_durable.runtime.durable import Durable
from celery_durable.web import present
from celery_durable.web.api import api_routes, json_response
from celery_durable.web.errors import ConsoleError
from celery_durable.web.metrics import metrics_routes
from celery_durable.web.pages import page_routes, render
from celery_durable.web.security import Auth, AuthMiddleware
from celery_durable.web.timeline import duration

STATIC = Path(__file__).parent / "static"


def create_app(durable: Durable, *, auth: str | None = None) -> Starlette:
    """The console for ``durable``'s store and broker, as an ASGI app.

    Args:
        durable: the app's runtime (``Durable(app)``); the console reads its store and
            acts through it (signals and retries reach the workers over its broker).
        auth: ``"user:password"`` (HTTP Basic) or a token (``Authorization: Bearer``,
            or the password of Basic auth with any user) that every request must carry;
            ``None``: no auth (keep the console on 127.0.0.1 then).

    Returns:
        A Starlette application; mount it anywhere (its links follow ``root_path``).

    Raises:
        ValueError: ``auth`` is empty or a ``user:password`` lacks one of its parts.
    """
    credentials = Auth.parse(auth) if auth is not None else None
    app = Starlette(
        routes=[
            *api_routes(),
            *page_routes(),
            *metrics_routes(),
            Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
        ],
        middleware=[Middleware(AuthMiddleware, auth=credentials)],
        exception_handlers={ConsoleError: _console_error, HTTPException: _http_error},
    )
    app.state.durable = durable
    app.state.templates = Jinja2Templates(env=_environment())
    return app


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("celery_durable.web", "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["show"] = present.show
    env.filters["time"] = present.short_time
    env.filters["failure"] = present.failure_text
    env.filters["ms"] = _ms
    env.filters["url_id"] = _url_id
    return env


def _ms(value: float | None) -> str:
    return "" if value is None else duration(timedelta(milliseconds=value))


def _url_id(workflow_id: str) -> str:
    return quote(workflow_id, safe=":~@")


async def _console_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ConsoleError)
    return _error(request, exc.status, exc.message)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return _error(request, exc.status_code, str(exc.detail), exc.headers)


def _error(
    request: Request, status: int, message: str, headers: Mapping[str, str] | None = None
) -> Response:
    if request.url.path.startswith(f"{request.scope.get('root_path', '')}/api/"):
        response = json_response({"error": message, "status": status}, status)
    else:
        response = render(request, "error.html", {"status": status, "message": message}, status)
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


__all__ = ["create_app"]
