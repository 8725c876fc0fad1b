"""``celery -A app durable metrics --port N``: serve ``/metrics`` without the console.

For deployments that do not run the console (which serves the same text at
``/metrics``). Set ``PROMETHEUS_MULTIPROC_DIR`` to one empty directory for the workers,
beat and this command, so a scrape adds up every process's samples; the store's
instance counts are read at each scrape either way.
"""

from __future__ import annotations

import os

import click

from celery_durable.runtime.durable import Durable
from celery_durable.telemetry.exposition import MULTIPROC_ENV, metrics_server

pass_durable = click.make_pass_decorator(Durable)


@click.command("metrics")
@click.option("--host", default="0.0.0.0", show_default=True, help="Address to listen on.")
@click.option(
    "--port", default=9808, show_default=True, type=click.IntRange(0, 65535), help="0: any."
)
@pass_durable
def metrics(runtime: Durable, host: str, port: int) -> None:
    """Serve Prometheus metrics at /metrics (workflows, steps, re-sends, the tick)."""
    try:
        server = metrics_server(runtime.store, port, host)
    except ImportError as exc:
        raise click.ClickException(str(exc)) from exc
    bound_host, bound_port = str(server.server_address[0]), int(server.server_address[1])
    if not os.environ.get(MULTIPROC_ENV):
        click.echo(
            f"warning: {MULTIPROC_ENV} is not set: only the store's instance counts are "
            "served, not the workers' metrics; set it to one empty directory for the "
            "workers, beat and this command",
            err=True,
        )
    click.echo(f"celery_durable metrics on http://{bound_host}:{bound_port}/metrics", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
