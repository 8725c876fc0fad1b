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

from celery_durable import faults
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


class _NotPending(Exception):
    """The step is not a pending step of that run any more: nothing runs."""


class DjangoStepTransactions:
    """Exactly-once steps in a Django project: the step's ORM writes and its journaled
    outcome in one ``transaction.atomic()`` of the database the journal lives in
    (``@durable.step(transactional="django")``).

    The journal's rows are written with the atomic block's own connection: the
    instance's row first (``UPDATE`` locks it on PostgreSQL, and takes SQLite's write
    lock), so a second copy of the step waits and then finds it journaled; the step runs
    in a nested ``atomic()`` (a savepoint: a failure rolls its writes back and is
    journaled); the outcome and a wake-up time for recovery are written before the one
    commit.

    Args:
        alias: the ``DATABASES`` entry the journal lives in (``CELERY_DURABLE_STORE``
            must point at the same database).
    """

    def __init__(self, alias: str = "default") -> None:
        self.alias = alias

    def run_step_in_transaction(
        self,
        instance_id: str,
        run: int,
        seq: int,
        name: str,
        body: Any,
        encode: Any,
        *,
        at: Any,
        wake_by: Any,
        retry_on: Any = lambda exc: False,
    ) -> Any:
        """``Store.run_step_in_transaction``'s contract, on Django's connection (the body
        is called with ``None``: it writes with the ORM)."""
        from django.db import connections, transaction

        from celery_durable.engine.journal import Failure, State
        from celery_durable.stores.rows import failure_text
        from celery_durable.stores.step_transactions import RetryStep, StepTransaction

        connection = connections[self.alias]
        stamp = _timestamps(connection.vendor)
        failure = error = None
        result = output = None
        try:
            with transaction.atomic(using=self.alias), connection.cursor() as cursor:
                cursor.execute(
                    "UPDATE durable_instances SET version = version + 1 WHERE id = %s"
                    " AND run = %s AND status IN ('pending', 'running')",
                    [instance_id, run],
                )
                if cursor.rowcount != 1:
                    raise _NotPending
                cursor.execute(
                    "SELECT kind, name, state FROM durable_events"
                    " WHERE instance_id = %s AND seq = %s",
                    [instance_id, seq],
                )
                row = cursor.fetchone()
                if row is None or tuple(row) not in (
                    ("step", name, State.SCHEDULED.value),
                    ("step", name, State.STARTED.value),
                ):
                    raise _NotPending
                try:
                    with transaction.atomic(using=self.alias):
                        result = body(None)
                        output = encode(result)
                except Exception as exc:
                    if retry_on(exc):
                        raise RetryStep(exc) from exc
                    failure, error = Failure.from_exception(exc), exc
                faults.point(faults.STEP_EFFECT)
                state = State.COMPLETED if failure is None else State.FAILED
                cursor.execute(
                    "UPDATE durable_events SET state = %s, output = %s, failure = %s,"
                    " completed_at = %s WHERE instance_id = %s AND seq = %s",
                    [state.value, output, failure_text(failure), stamp(at), instance_id, seq],
                )
                cursor.execute(
                    "UPDATE durable_instances SET wake_at = CASE WHEN wake_at IS NULL"
                    " OR wake_at > %s THEN %s ELSE wake_at END WHERE id = %s",
                    [stamp(wake_by), stamp(wake_by), instance_id],
                )
        except _NotPending:
            return StepTransaction(ran=False)
        if failure is not None:
            return StepTransaction(ran=True, failure=failure, error=error)
        return StepTransaction(ran=True, result=result)


def _timestamps(vendor: str) -> Any:
    """How the journal's timestamps are written on ``vendor``: aware on PostgreSQL,
    naive UTC text on SQLite (as the store's ``UTCDateTime`` writes them)."""
    from datetime import timezone

    def sqlite(value: Any) -> str:
        naive = value.astimezone(timezone.utc).replace(tzinfo=None)
        return str(naive.strftime("%Y-%m-%d %H:%M:%S.%f"))

    def aware(value: Any) -> Any:
        return value.astimezone(timezone.utc)

    return sqlite if vendor == "sqlite" else aware
