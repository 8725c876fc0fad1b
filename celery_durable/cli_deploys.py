"""``celery -A app durable replay-check | export | patches``: deploy new workflow code
safely.

* ``replay-check`` replays every open instance in the store (or every journal exported
  to a folder) against the code now importable, without running a step or writing
  anything, and prints per instance ``OK`` or the first mismatch; it exits with 1 if any
  instance would not replay, so CI can gate a deploy on it.
* ``export`` writes journals as JSON files, to check in next to the tests
  (``celery_durable.testing.replay``) or to replay-check elsewhere.
* ``patches`` says, per ``ctx.patched`` id, how many open instances still replay the old
  branch or hold the marker: when the old branch, and then the call, can go.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import click

from celery_durable.engine.check import ReplayCheck
from celery_durable.engine.journal import Status
from celery_durable.errors import WorkflowNotFound
from celery_durable.runtime.deploys import (
    OPEN,
    check_instance,
    check_store,
    export_journal,
    export_path,
    patch_uses,
    read_journal,
    stored_instances,
)
from celery_durable.runtime.durable import Durable

pass_durable = click.make_pass_decorator(Durable)

_OPEN_TEXT = ",".join(s.value for s in OPEN)


def _statuses(text: str) -> list[Status]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    try:
        return [Status(name) for name in names]
    except ValueError:
        known = ", ".join(s.value for s in Status)
        raise click.BadParameter(
            f"{text!r}: give statuses separated by commas, among {known}", param_hint="--status"
        ) from None


@click.command("replay-check")
@click.option(
    "--status",
    "status_text",
    default=_OPEN_TEXT,
    show_default=True,
    metavar="S1,S2",
    help="Check the instances with these statuses.",
)
@click.option("--workflow", metavar="NAME", help="Only instances of this workflow.")
@click.option(
    "--from-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Check the journals exported to this folder instead of the store.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
@pass_durable
def replay_check(
    runtime: Durable, status_text: str, workflow: str | None, from_dir: Path | None, as_json: bool
) -> None:
    """Replay open instances against the code now importable; exit 1 on any mismatch.

    Nothing is run, written or sent: each journal is replayed up to its end and the
    first command it does not hold yet.
    """
    statuses = _statuses(status_text)
    checks = (
        _check_folder(runtime, from_dir, statuses, workflow)
        if from_dir is not None
        else check_store(runtime, statuses, workflow)
    )
    failed = total = 0
    rows = []
    for check in checks:
        total += 1
        failed += not check.ok
        if as_json:
            rows.append(_check_data(check))
        else:
            click.echo(check.describe())
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        where = f"in {from_dir}" if from_dir is not None else f"with status {status_text}"
        if not total:
            click.echo(f"no instance {where} to check")
        else:
            click.echo(f"\nchecked {total} instance(s) {where}: {total - failed} ok, {failed} not")
    if failed:
        raise SystemExit(1)


def _check_folder(
    runtime: Durable, folder: Path, statuses: Sequence[Status], workflow: str | None
) -> Iterator[ReplayCheck]:
    for path in sorted(folder.glob("*.json")):
        try:
            instance, events = read_journal(path)
        except ValueError as exc:
            yield ReplayCheck(path.name, "?", "ERROR", 0, message=str(exc))
            continue
        if instance.status in statuses and workflow in (None, instance.workflow):
            yield check_instance(runtime, instance, events)


def _check_data(check: ReplayCheck) -> dict[str, Any]:
    return {
        "id": check.instance_id,
        "workflow": check.workflow,
        "verdict": check.verdict,
        "replayed": check.replayed,
        "seq": check.seq,
        "journal": check.journaled,
        "code": check.asked,
        "message": check.message,
    }


@click.command()
@click.argument("workflow_ids", nargs=-1, metavar="ID...")
@click.option(
    "--to",
    "folder",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The folder to write <id>.json files to (made if missing).",
)
@click.option(
    "--status",
    "status_text",
    metavar="S1,S2",
    help="Without IDs: export every instance with these statuses.",
)
@pass_durable
def export(
    runtime: Durable, workflow_ids: tuple[str, ...], folder: Path, status_text: str | None
) -> None:
    """Write workflow journals as JSON files (for replay-check --from-dir and for
    celery_durable.testing.replay in unit tests)."""
    if not workflow_ids and status_text is None:
        raise click.UsageError("name the instances to export (ID...) or give --status")
    if workflow_ids:
        ids: Sequence[str] = workflow_ids
    else:
        ids = [i.id for i in stored_instances(runtime.store, _statuses(status_text or ""))]
    folder.mkdir(parents=True, exist_ok=True)
    missing = []
    for workflow_id in ids:
        loaded = runtime.store.load(workflow_id)
        if loaded is None:
            missing.append(workflow_id)
            continue
        path = export_path(folder, workflow_id)
        path.write_text(json.dumps(export_journal(*loaded), indent=1), encoding="utf-8")
        click.echo(f"wrote {path} ({len(loaded[1])} events)")
    if missing:
        names = ", ".join(repr(m) for m in missing)
        raise WorkflowNotFound(
            f"no workflow instance with id {names} in the store; the others were written"
        )


@click.command()
@click.option("--workflow", metavar="NAME", help="Only instances of this workflow.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
@pass_durable
def patches(runtime: Durable, workflow: str | None, as_json: bool) -> None:
    """Per ctx.patched id: the open instances that replay its old branch or hold its
    marker, and so what may be removed now."""
    uses, failed = patch_uses(runtime, check_store(runtime, OPEN, workflow))
    if as_json:
        data = [
            {
                "patch": u.patch_id,
                "old_branch": u.old_branch,
                "marker": u.marker,
                "not_reached": u.not_reached,
                "in_code": u.in_code,
                "advice": u.advice(),
            }
            for u in uses
        ]
        click.echo(json.dumps({"patches": data, "not_replaying": len(failed)}, indent=2))
        return
    if not uses:
        click.echo("no patch in the registered workflows or the open instances' journals")
    else:
        header = ["PATCH", "OLD BRANCH", "MARKER", "NOT REACHED", "WHAT NOW"]
        rows = [
            [u.patch_id, str(u.old_branch), str(u.marker), str(u.not_reached), u.advice()]
            for u in uses
        ]
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    if failed:
        click.echo(
            f"\n{len(failed)} open instance(s) do not replay the current code at all: "
            "see `durable replay-check`"
        )
