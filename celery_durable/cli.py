"""``celery -A app durable ...``: inspect and repair workflow instances from a shell.

Registered as a ``celery`` subcommand through the ``celery.commands`` entry point, so it
loads the app exactly as ``celery worker`` does. Output is aligned for people; ``--json``
(on ``list`` and ``show``) prints the same data for machines. Every
:class:`~celery_durable.DurableError` ends the command with a one-line message and exit
status 1.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import click

from celery_durable.cli_deploys import export, patches, replay_check
from celery_durable.cli_metrics import metrics
from celery_durable.client import HistoryEvent, WorkflowInfo
from celery_durable.engine.journal import Failure, State, Status
from celery_durable.errors import DurableError, WorkflowNotFound
from celery_durable.runtime.durable import Durable, runtime_of
from celery_durable.web.command import web

__all__ = ["durable", "runtime_of"]

_WIDTH = 40  # longest value cell in a table before it is cut

pass_durable = click.make_pass_decorator(Durable)


class _DurableGroup(click.Group):
    """A group that turns celery_durable errors into one-line click errors."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DurableError as exc:
            raise click.ClickException(str(exc)) from exc


@click.group(cls=_DurableGroup, invoke_without_command=True)
@click.pass_context
def durable(ctx: click.Context) -> None:
    """Inspect and repair durable workflow instances (times are UTC)."""
    app = getattr(ctx.obj, "app", None)
    if app is None:
        raise click.UsageError("run this as a celery subcommand: celery -A module durable ...")
    app.loader.import_default_modules()  # the app's include= modules declare workflows
    ctx.obj = runtime_of(app)
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


@durable.command("list")
@click.option("--status", type=click.Choice([s.value for s in Status]), help="Only this status.")
@click.option("--workflow", metavar="NAME", help="Only instances of this workflow.")
@click.option(
    "--version",
    "code_version",
    metavar="V",
    help="Only instances whose run started on this code version.",
)
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
@pass_durable
def list_(
    runtime: Durable,
    status: str | None,
    workflow: str | None,
    code_version: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List workflow instances, newest first."""
    infos = runtime.list(status=status, workflow=workflow, limit=limit, version=code_version)
    if as_json:
        _print_json([_info_data(i) for i in infos])
    elif not infos:
        click.echo("no workflow instances")
    else:
        header = ["ID", "WORKFLOW", "STATUS", "VERSION", "CREATED", "UPDATED", "ERROR"]
        _print_table(header, [_info_row(i) for i in infos])


@durable.command()
@click.argument("workflow_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
@pass_durable
def show(runtime: Durable, workflow_id: str, as_json: bool) -> None:
    """Show one instance, the signals waiting in its inbox and its decoded journal."""
    instance = runtime.store.get(workflow_id)
    if instance is None:
        raise WorkflowNotFound(f"no workflow instance with id {workflow_id!r} in the store")
    info = WorkflowInfo.from_instance(instance, runtime.codec(instance.serializer))
    handle = runtime.handle(workflow_id)
    pending = handle.status().pending_signals
    history = handle.history()
    if as_json:
        data = _info_data(info) | {
            "version": instance.version,
            "pending_signals": [
                {"name": p.name, "payload": p.payload, "sent_at": p.sent_at} for p in pending
            ],
            "journal": [_event_data(e) for e in history],
        }
        _print_json(data)
        return
    registered = "" if info.workflow in runtime.workflows else "  (not registered here)"
    fields = [
        ("id", info.id),
        ("workflow", info.workflow + registered),
        ("status", info.status.value),
        ("run", str(info.run)),
        ("created", _time(info.created_at)),
        ("updated", _time(info.updated_at)),
        ("version", str(instance.version)),
        ("input", _call(info.args, info.kwargs, cut=False)),
    ]
    if info.note is not None:
        fields.append(("note", info.note))
    if info.status is Status.COMPLETED:
        fields.append(("result", repr(info.result)))
    if info.error is not None:
        fields.append(("error", _failure(info.error)))
    if info.wake_at is not None:
        fields.append(("wake at", _time(info.wake_at)))
    if info.custom is not None:
        fields.append(("custom status", repr(info.custom)))
    if info.parent_id is not None:
        fields.append(("parent", info.parent_id))
    fields.append(("code version", info.code_version or "unknown"))
    if info.patches:
        fields.append(("patches", ", ".join(info.patches)))
    if info.waiting_at is not None:
        fields.append(("waiting at", info.waiting_at))
    for key, value in fields:
        click.echo(f"{key + ':':<15}{value}")
    if pending:
        # Sent, and no ctx.wait_signal has taken them (yet): often a misspelt name.
        click.echo(f"\npending signals ({len(pending)}):")
        rows = [[p.name, _cut(repr(p.payload)), _time(p.sent_at)] for p in pending]
        _print_table(["NAME", "PAYLOAD", "SENT"], rows)
    click.echo(f"\njournal ({len(history)} event{'' if len(history) == 1 else 's'}):")
    if history:
        header = ["SEQ", "KIND", "NAME", "ARGS", "STATE", "RESULT / ERROR", "ATTEMPTS"]
        header += ["SCHEDULED", "STARTED", "COMPLETED"]
        _print_table(header, [_event_row(e) for e in history])
    if info.error is not None and info.error.details:
        click.echo("\ntraceback:\n" + info.error.details.rstrip())


@durable.command()
@click.argument("workflow_id")
@pass_durable
def retry(runtime: Durable, workflow_id: str) -> None:
    """Resume a stuck instance, or rewind a failed one to its failure point (after
    deploying fixed code)."""
    before = runtime.store.get(workflow_id)
    runtime.retry(workflow_id)
    if before is not None and before.status is Status.FAILED:
        click.echo(
            f"workflow {workflow_id}: failed -> running; rewound to its failure point, "
            "a worker sends the failed step again"
        )
    else:
        click.echo(f"workflow {workflow_id}: stuck -> running; a worker replays it")


@durable.command()
@click.argument("workflow_id")
@click.argument("name")
@click.argument("payload", required=False)
@click.option("--json", "as_json", is_flag=True, help="PAYLOAD must be valid JSON.")
@pass_durable
def signal(
    runtime: Durable, workflow_id: str, name: str, payload: str | None, as_json: bool
) -> None:
    """Send signal NAME to a workflow; PAYLOAD is JSON (a bare word is a string).

    Text that looks like JSON (starts with {, [ or ") and does not parse is refused, as is
    any text that does not parse with --json.
    """
    value = None if payload is None else _signal_payload(payload, as_json)
    runtime.signal(workflow_id, name, value)
    click.echo(f"workflow {workflow_id}: signal {name!r} sent")


def _signal_payload(payload: str, as_json: bool) -> Any:
    try:
        return json.loads(payload)
    except ValueError as exc:
        if not as_json and payload.lstrip()[:1] not in ("{", "[", '"'):
            return payload  # a bare word is a string
        raise click.BadParameter(
            f"{payload!r} is not valid JSON ({exc}); nothing was sent. To send this text "
            f"as a plain string, pass it as a JSON string: {shlex.quote(json.dumps(payload))}",
            param_hint="PAYLOAD",
        ) from exc


@durable.command()
@click.argument("workflow_id")
@click.option("--terminate", is_flag=True, help="Stop at once, without running compensations.")
@pass_durable
def cancel(runtime: Durable, workflow_id: str, terminate: bool) -> None:
    """Cancel a workflow (its compensations run), or terminate it (--terminate)."""
    done = runtime.terminate(workflow_id) if terminate else runtime.cancel(workflow_id)
    if not done:
        status = runtime.handle(workflow_id).status()
        click.echo(f"workflow {workflow_id} is already {status}: nothing to do")
    elif terminate:
        click.echo(f"workflow {workflow_id}: terminated")
    elif _is_stuck(runtime, workflow_id):
        # Nothing runs a stuck instance: the request waits in the journal for its retry.
        app = click.get_current_context().find_root().params.get("app") or "app"
        click.echo(
            f"workflow {workflow_id} is stuck: the cancellation applies when it is retried "
            f"(celery -A {app} durable retry {workflow_id}); its compensations run then"
        )
    else:
        click.echo(f"workflow {workflow_id}: cancellation requested; a worker compensates")


def _is_stuck(runtime: Durable, workflow_id: str) -> bool:
    instance = runtime.store.get(workflow_id)
    return instance is not None and instance.status is Status.STUCK


# -- formatting ----------------------------------------------------------------------
def _time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else ""


def _cut(text: str, cut: bool = True) -> str:
    text = " ".join(text.split())  # one line per row
    return text if not cut or len(text) <= _WIDTH else text[: _WIDTH - 1] + "…"


def _call(args: Sequence[Any], kwargs: dict[str, Any], cut: bool = True) -> str:
    parts = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
    return _cut(", ".join(parts), cut)


def _failure(failure: Failure) -> str:
    return f"{failure.type}: {failure.message}" if failure.message else failure.type


def _info_row(info: WorkflowInfo) -> list[str]:
    error = info.error.type if info.error else ""
    created, updated = _time(info.created_at), _time(info.updated_at)
    version = info.code_version or "-"
    return [info.id, info.workflow, info.status.value, version, created, updated, error]


def _event_row(event: HistoryEvent) -> list[str]:
    outcome = _failure(event.error) if event.error else ""
    if event.state is State.COMPLETED:
        outcome = repr(event.result)
    return [
        str(event.seq),
        event.kind.value,
        event.name,
        _call(event.args, event.kwargs),
        event.state.value,
        _cut(outcome),
        str(event.attempts),
        _time(event.scheduled_at),
        _time(event.started_at),
        _time(event.completed_at),
    ]


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


# -- JSON ----------------------------------------------------------------------------
def _info_data(info: WorkflowInfo) -> dict[str, Any]:
    return {
        "id": info.id,
        "workflow": info.workflow,
        "status": info.status.value,
        "created_at": info.created_at,
        "updated_at": info.updated_at,
        "error": info.error.to_dict() if info.error else None,
        "args": info.args,
        "kwargs": info.kwargs,
        "result": info.result,
        "custom_status": info.custom,
        "wake_at": info.wake_at,
        "parent_id": info.parent_id,
        "run": info.run,
        "note": info.note,
        "code_version": info.code_version,
        "patches": list(info.patches),
        "waiting_at": info.waiting_at,
    }


def _event_data(event: HistoryEvent) -> dict[str, Any]:
    return {
        "seq": event.seq,
        "kind": event.kind.value,
        "name": event.name,
        "args": event.args,
        "kwargs": event.kwargs,
        "state": event.state.value,
        "result": event.result,
        "error": event.error.to_dict() if event.error else None,
        "attempts": event.attempts,
        "scheduled_at": event.scheduled_at,
        "started_at": event.started_at,
        "completed_at": event.completed_at,
    }


def _jsonable(value: Any) -> Any:
    """JSON for what the json module does not know: ISO times, ``str`` for the rest."""
    return value.isoformat() if isinstance(value, datetime) else str(value)


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, default=_jsonable, indent=2, ensure_ascii=False))


durable.add_command(replay_check)
durable.add_command(export)
durable.add_command(patches)
durable.add_command(web)
durable.add_command(metrics)
