"""Store URLs: parsing, checking, and showing them with the password masked."""

from __future__ import annotations

import os
import re

from sqlalchemy import URL
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

from celery_durable.errors import ConfigurationError

_PSYCOPG3 = "pip install 'celery-durable[postgres]'"
# What to install for a missing PostgreSQL driver, by the URL's driver name.
_POSTGRES_HINTS = {
    "psycopg": f"install the driver (psycopg 3): {_PSYCOPG3}",
    "psycopg2": (
        "install the driver (psycopg2): pip install psycopg2-binary; or switch to "
        f"psycopg 3 with a 'postgresql+psycopg://' URL and {_PSYCOPG3}"
    ),
}


def parse_url(raw: str) -> URL:
    """Parse and check a store URL; every problem is a ConfigurationError."""
    try:
        url = make_url(raw)
    except (sa_exc.ArgumentError, ValueError) as exc:
        raise ConfigurationError(
            f"store URL {mask_text(raw)!r} is not a database URL "
            "(expected e.g. 'sqlite:///durable.sqlite3' or "
            "'postgresql+psycopg://user@host/db')"
        ) from exc
    backend, _, driver = url.drivername.partition("+")
    if backend in ("postgres", "postgresql"):
        url = url.set(drivername=f"postgresql+{driver or 'psycopg'}")
    try:
        dialect = url.get_dialect()
    except sa_exc.NoSuchModuleError as exc:
        raise ConfigurationError(
            f"store URL {mask(url)}: unknown database {url.drivername!r}; use "
            "'sqlite:///path.sqlite3', 'postgresql+psycopg://user@host/db' or another "
            "SQLAlchemy dialect"
        ) from exc
    if getattr(dialect, "is_async", False):
        raise ConfigurationError(
            f"store URL {mask(url)}: {url.drivername!r} is an asyncio driver; the store "
            "needs a blocking one, e.g. 'postgresql+psycopg://' or 'sqlite://'"
        )
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        hint = f"install the driver for {url.drivername!r} ({exc})"
        if url.get_backend_name() == "postgresql":
            hint = _POSTGRES_HINTS.get(
                url.get_driver_name(),
                f"{hint}; or switch to psycopg 3 with a 'postgresql+psycopg://' URL and "
                f"{_PSYCOPG3}",
            )
        raise ConfigurationError(
            f"store URL {mask(url)}: the database driver is not installed; {hint}"
        ) from exc
    if url.get_backend_name() == "sqlite":
        url = _absolute_sqlite(url)
    return url


def _absolute_sqlite(url: URL) -> URL:
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return url
    return url.set(database=os.path.abspath(database))


def mask(url: URL) -> str:
    return url.render_as_string(hide_password=True)


def mask_text(raw: str) -> str:
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", raw)
