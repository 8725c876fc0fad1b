"""Deploying new workflow code while instances run: code versions, replay checks of the
store's open instances or of exported journals, and which patches still matter.

``celery -A app durable replay-check | export | patches`` and
``celery_durable.testing.replay`` are built on these.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import inspect
import json
import textwrap
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from celery_durable.engine.check import ReplayCheck, check_replay
from celery_durable.engine.journal import Event, Failure, Instance, Kind, State, Status
from celery_durable.errors import SerializationError
from celery_durable.stores.base import Store

if TYPE_CHECKING:
    from celery_durable.runtime.durable import Durable, Workflow


@functools.cache
def source_version(fn: Callable[..., Any]) -> str:
    """A hash of ``fn``'s source, 12 hex digits (of its bytecode when the source is not
    available, e.g. in a frozen application)."""
    try:
        text = inspect.getsource(fn).encode()
    except (OSError, TypeError):
        code = getattr(fn, "__code__", None)
        text = code.co_code if code is not None else repr(fn).encode()
    return hashlib.sha256(text).hexdigest()[:12]


# -- replay checks ---------------------------------------------------------------------

OPEN = (Status.PENDING, Status.RUNNING, Status.STUCK)
"""The statuses whose instances a deploy can still break."""

_PAGE = 500


def check_instance(
    durable: Durable,
    instance: Instance,
    events: Sequence[Event],
    workflow: Workflow[..., Any] | None = None,
) -> ReplayCheck:
    """Replay one journal against ``workflow``, by default the code registered with
    ``durable`` now under the instance's workflow name (nothing run, nothing written)."""
    workflow = workflow or durable.workflows.get(instance.workflow)
    if workflow is None:
        return ReplayCheck(
            instance.id,
            instance.workflow,
            "ERROR",
            0,
            message=(
                f"workflow {instance.workflow!r} is not defined in the code now importable "
                "(renamed or removed?): its instances would wait for a worker that knows it"
            ),
        )
    try:
        codec = durable.codec(instance.serializer)
    except SerializationError as exc:
        return ReplayCheck(instance.id, instance.workflow, "ERROR", 0, message=str(exc))
    return check_replay(
        workflow.fn,
        instance,
        events,
        codec=codec,
        now=durable.now(),
        resolve_step=durable.resolve_step,
        failure_exceptions=workflow.failure_exceptions,
    )


def stored_instances(
    store: Store, statuses: Sequence[Status], workflow: str | None = None
) -> Iterator[Instance]:
    """Every instance of these statuses (and workflow), newest first, read page by page."""
    before: tuple[datetime, str] | None = None
    while True:
        page = store.list(statuses=statuses, workflow=workflow, limit=_PAGE, before=before)
        yield from page
        if len(page) < _PAGE:
            return
        before = (page[-1].created_at, page[-1].id)


def check_store(
    durable: Durable, statuses: Sequence[Status] = OPEN, workflow: str | None = None
) -> Iterator[ReplayCheck]:
    """:func:`check_instance` for every instance of these statuses in the store."""
    for instance in stored_instances(durable.store, statuses, workflow):
        loaded = durable.store.load(instance.id)
        if loaded is not None:  # (purged meanwhile)
            yield check_instance(durable, *loaded)


# -- exported journals -----------------------------------------------------------------

FORMAT = "celery_durable.journal"
FORMAT_VERSION = 1


def export_journal(instance: Instance, events: Sequence[Event]) -> dict[str, Any]:
    """An instance and its journal as JSON-ready data (payloads stay encoded, as stored)."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "instance": _plain(dataclasses.asdict(instance)),
        "events": [_plain(dataclasses.asdict(event)) for event in events],
    }


def export_path(directory: Path, instance_id: str) -> Path:
    """Where :func:`export_journal`'s file for ``instance_id`` goes in ``directory``."""
    return directory / f"{quote(instance_id, safe='')}.json"


def read_journal(path: Path) -> tuple[Instance, list[Event]]:
    """An exported journal file, as an instance and its events.

    Raises:
        ValueError: not an exported journal, or a field is missing or malformed (the
            message names the file and the field).
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable JSON file ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(
            f"{path}: not a journal exported by `celery -A app durable export` "
            f'(no "format": "{FORMAT}")'
        )
    if data.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: journal format version {data.get('format_version')!r}; this "
            f"celery_durable reads version {FORMAT_VERSION}"
        )
    try:
        instance = _instance(data["instance"])
        events = [_event(event) for event in data["events"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: malformed journal: {type(exc).__name__}: {exc}") from exc
    return instance, events


def _plain(fields: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in fields.items():
        if isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, Enum):
            value = value.value
        elif isinstance(value, tuple):
            value = list(value)
        out[key] = value
    return out


def _time(value: Any) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _failure(value: Any) -> Failure | None:
    return None if value is None else Failure.from_dict(value)


def _instance(data: dict[str, Any]) -> Instance:
    return Instance(
        **{
            **data,
            "status": Status(data["status"]),
            "created_at": _time(data["created_at"]),
            "updated_at": _time(data["updated_at"]),
            "wake_at": _time(data.get("wake_at")),
            "failure": _failure(data.get("failure")),
            "patches": tuple(data.get("patches") or ()),
        }
    )


def _event(data: dict[str, Any]) -> Event:
    return Event(
        **{
            **data,
            "kind": Kind(data["kind"]),
            "state": State(data["state"]),
            "failure": _failure(data.get("failure")),
            **{
                key: _time(data.get(key))
                for key in ("scheduled_at", "started_at", "completed_at", "heartbeat_at")
            },
        }
    )


# -- patches ---------------------------------------------------------------------------


@dataclass
class PatchUse:
    """What the open instances need of one patch id.

    Attributes:
        patch_id: the id.
        old_branch: open instances that replay the old branch (``ctx.patched`` answers
            ``False``): the old branch must stay.
        marker: open instances whose journal holds the marker (they took the new
            branch; replay passes over the marker once the call is gone).
        not_reached: open instances whose next pass reaches the call on new ground
            (they will take the new branch).
        in_code: the id appears in a registered workflow's source.
    """

    patch_id: str
    old_branch: int = 0
    marker: int = 0
    not_reached: int = 0
    in_code: bool = False

    def advice(self) -> str:
        """What may be done with the patch now, for people."""
        if self.old_branch:
            return f"keep both branches: {self.old_branch} open instance(s) replay the old one"
        if self.in_code:
            return "the old branch can go: keep only the new code (markers are passed over)"
        return "not in the code any more; nothing open replays its old branch"


def patch_uses(
    durable: Durable, checks: Iterable[ReplayCheck]
) -> tuple[list[PatchUse], list[ReplayCheck]]:
    """Per patch id, what the open instances need (from their replay checks), and the
    checks that failed (their instances do not replay the current code at all)."""
    uses: dict[str, PatchUse] = {}
    failed = []
    for patch_id in sorted(_patch_ids_in_code(durable)):
        uses[patch_id] = PatchUse(patch_id, in_code=True)
    for check in checks:
        if not check.ok:
            failed.append(check)
        for patch_id, how in dict(check.patches).items():
            use = uses.setdefault(patch_id, PatchUse(patch_id))
            if how == "old":
                use.old_branch += 1
            elif how == "marker":
                use.marker += 1
            else:
                use.not_reached += 1
    return list(uses.values()), failed


_PATCH_CALLS = ("patched", "deprecate_patch")


def _patch_ids_in_code(durable: Durable) -> set[str]:
    """Literal ids given to ``ctx.patched`` / ``ctx.deprecate_patch`` in the registered
    workflows' source (what the code has, whether or not an instance reached it)."""
    found: set[str] = set()
    for workflow in durable.workflows.values():
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(workflow.fn)))
        except (OSError, TypeError, SyntaxError):
            continue
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in _PATCH_CALLS
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                found.add(node.args[0].value)
    return found
