"""The web console: every workflow, where it waits, its timeline, and actions on it.

``celery -A app durable web`` serves it; :func:`create_app` returns it as an ASGI app to
mount in an existing site. Its dependencies are an extra:
``pip install 'celery-durable[web]'`` (Starlette, Jinja2, uvicorn).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from celery_durable.runtime.durable import Durable

INSTALL_HINT = "the console needs its extra: pip install 'celery-durable[web]'"

__all__ = ["INSTALL_HINT", "create_app", "require_web"]


def require_web() -> None:
    """Check that the console's dependencies are installed.

    Raises:
        ImportError: one is missing; the message says what to install.
    """
    for module in ("starlette", "jinja2"):
        try:
            __import__(module)
        except ImportError as exc:
            raise ImportError(f"{INSTALL_HINT} ({module} is not installed)") from exc


def create_app(durable: Durable, *, auth: str | None = None) -> Starlette:
    """The console for ``durable``'s store and broker, as an ASGI app.

    Args:
        durable: the app's runtime (``Durable(app)``).
        auth: ``"user:password"`` (HTTP Basic) or a token (``Authorization: Bearer``),
            required on every request; ``None`` for none (keep it on 127.0.0.1 then).

    Returns:
        A Starlette application (pages ``/``, ``/workflows/{id}``, API under ``/api``).

    Raises:
        ImportError: the ``[web]`` extra is not installed.
    """
    require_web()
    from celery_durable.web.app import create_app as build

    return build(durable, auth=auth)
