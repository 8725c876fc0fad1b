"""celery_durable in a Django project.

Settings: with the usual ``app.config_from_object("django.conf:settings",
namespace="CELERY")``, every ``durable_*`` setting is read from ``CELERY_DURABLE_*`` in
``settings.py`` (``CELERY_DURABLE_STORE``, ``CELERY_DURABLE_ETA_MAX``, ...), as Celery's
own settings are. :func:`database_url` turns an entry of ``DATABASES`` into the store's
URL, so the journal lives in the project's own database::

    CELERY_DURABLE_STORE = database_url(DATABASES["default"])

The console is an ASGI app: :func:`asgi_with_console` serves it under a prefix of the
project's ASGI application (``asgi.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from celery_durable.errors import ConfigurationError

_DRIVERS = {
    "django.db.backends.sqlite3": "sqlite",
    "django.db.backends.postgresql": "postgresql+psycopg",
}


def database_url(database: Mapping[str, Any]) -> str:
    """The SQLAlchemy URL of a Django ``DATABASES`` entry (SQLite or PostgreSQL).

    Raises:
        ConfigurationError: another engine, or an in-memory SQLite database (which each
            process would have its own copy of).
    """
    engine = str(database.get("ENGINE", ""))
    driver = _DRIVERS.get(engine)
    if driver is None:
        known = ", ".join(sorted(_DRIVERS))
        raise ConfigurationError(
            f"celery_durable cannot keep its journal in a {engine!r} database; use one of "
            f"{known}, or set CELERY_DURABLE_STORE to a SQLAlchemy URL"
        )
    name = str(database.get("NAME") or "")
    if driver == "sqlite":
        if not name or name == ":memory:" or name.startswith("file::memory:"):
            raise ConfigurationError(
                "the journal cannot live in an in-memory SQLite database (each process "
                "would have its own); give DATABASES a file NAME"
            )
        return f"sqlite:///{name}"
    user = quote(str(database.get("USER") or ""), safe="")
    password = quote(str(database.get("PASSWORD") or ""), safe="")
    credentials = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    host = str(database.get("HOST") or "localhost")
    port = f":{database['PORT']}" if database.get("PORT") else ""
    return f"{driver}://{credentials}{host}{port}/{quote(name, safe='')}"


def asgi_with_console(
    django_app: Any, durable: Any, prefix: str = "/durable", *, auth: str | None = None
) -> Any:
    """The project's ASGI application with the celery_durable console under ``prefix``.

    In ``asgi.py``::

        application = asgi_with_console(get_asgi_application(), durable)

    Args:
        django_app: Django's ASGI application (``get_asgi_application()``).
        durable: the project's :class:`~celery_durable.Durable`.
        prefix: where the console is served (its links follow it).
        auth: ``"user:password"`` or a token every console request must carry (see
            :func:`celery_durable.web.create_app`); ``None`` leaves it open, so protect
            ``prefix`` in front of the project then.
    """
    from starlette.applications import Starlette
    from starlette.routing import Mount

    from celery_durable.web import create_app

    console = create_app(durable, auth=auth)
    return Starlette(routes=[Mount(prefix, app=console), Mount("/", app=django_app)])
