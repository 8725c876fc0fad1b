"""``celery -A app durable web``: serve the console with uvicorn.

Imports no web dependency until it runs, so ``celery ... durable`` works without the
``[web]`` extra and this command alone says what to install.
"""

from __future__ import annotations

import click

from celery_durable.runtime.durable import Durable
from celery_durable.web.security import is_loopback

pass_durable = click.make_pass_decorator(Durable)


def check_binding(host: str, auth: str | None) -> None:
    """Refuse to serve beyond this machine without credentials.

    Raises:
        click.UsageError: ``host`` is not a loopback address and ``auth`` is not set.
    """
    if auth is None and not is_loopback(host):
        raise click.UsageError(
            f"refusing to serve the console on {host} without --auth: anyone who reaches "
            "it could signal, cancel, terminate and retry workflows. Pass --auth "
            "user:password (or --auth TOKEN), or keep the default --host 127.0.0.1"
        )


@click.command("web")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--auth",
    metavar="USER:PASSWORD|TOKEN",
    envvar="CELERY_DURABLE_WEB_AUTH",
    help="Require HTTP Basic user:password, or a token (Authorization: Bearer TOKEN); "
    "needed to listen on anything but loopback. Also read from CELERY_DURABLE_WEB_AUTH.",
)
@pass_durable
def web(runtime: Durable, host: str, port: int, auth: str | None) -> None:
    """Serve the web console: every workflow, its timeline, and actions on it."""
    check_binding(host, auth)
    try:
        import uvicorn

        from celery_durable.web import create_app
    except ImportError as exc:
        raise click.ClickException(
            f"the console needs its extra: pip install 'celery-durable[web]' ({exc})"
        ) from exc
    try:
        app = create_app(runtime, auth=auth)
    except (ImportError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"celery_durable console on http://{shown}:{port}/ (Ctrl+C to stop)")
    uvicorn.run(app, host=host, port=port, log_level="info")
