"""The console's reads: the filtered, paged list of instances and one instance in full.

The HTML pages and the JSON API are built on these same functions: a page renders what
the API returns. Query parameters are checked here; a bad one is a
:class:`~celery_durable.web.errors.ConsoleError` (400) before the store is read.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Protocol
from urllib.parse import urlencode

from celery_durable.engine.awaitables import decode_child_id
from celery_durable.engine.journal import Event, Instance, Kind, Signal, Status
from celery_durable.engine.saga import compensations
from celery_durable.engine.serialization import Codec
from celery_durable.runtime.durable import Durable
from celery_durable.web.errors import ConsoleError
from celery_durable.web.present import (
    Undecoded,
    codec_of,
    decode,
    decode_call,
    iso,
    jsonable,
    waiting_on,
)

DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
CHILDREN_SHOWN = 1000


class Params(Protocol):
    """Query or form parameters (Starlette's ``QueryParams`` and ``FormData`` are)."""

    def getlist(self, key: str) -> list[Any]:
        """Every value given for ``key``."""
        ...


@dataclass(frozen=True)
class ListQuery:
    """The list's filters and page, as ``GET /`` and ``GET /api/workflows`` take them.

    Attributes:
        statuses: only these statuses (``status``, repeated or comma-separated); all if empty.
        workflow: only this workflow name.
        id_prefix: only ids starting with this text.
        since / until: created at or after ``since``, before ``until`` (ISO 8601; UTC
            when no offset is given).
        limit: at most this many rows (1 to 1,000).
        cursor: the opaque position after which this page starts (``next_cursor`` of the
            page before), or ``None`` for the newest.
    """

    statuses: tuple[Status, ...] = ()
    workflow: str | None = None
    id_prefix: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = DEFAULT_LIMIT
    cursor: str | None = None

    @classmethod
    def parse(cls, params: Params) -> ListQuery:
        """Read and check the query parameters.

        Raises:
            ConsoleError: a parameter is malformed (400).
        """
        statuses: list[Status] = []
        for value in params.getlist("status"):
            for name in str(value).split(","):
                if not name.strip():
                    continue
                try:
                    statuses.append(Status(name.strip().lower()))
                except ValueError:
                    known = ", ".join(s.value for s in Status)
                    raise ConsoleError(
                        400, f"unknown status {name.strip()!r}; use one of: {known}"
                    ) from None
        limit_text = _one(params, "limit")
        limit = DEFAULT_LIMIT
        if limit_text is not None:
            try:
                limit = int(limit_text)
            except ValueError:
                raise ConsoleError(400, f"limit {limit_text!r} is not a whole number") from None
            if not 1 <= limit <= MAX_LIMIT:
                raise ConsoleError(400, f"limit must be between 1 and {MAX_LIMIT}, not {limit}")
        query = cls(
            statuses=tuple(dict.fromkeys(statuses)),
            workflow=_one(params, "workflow"),
            id_prefix=_one(params, "id_prefix"),
            since=_time(params, "since"),
            until=_time(params, "until"),
            limit=limit,
            cursor=_one(params, "cursor"),
        )
        query.position()  # a malformed cursor is refused now
        return query

    def position(self) -> tuple[datetime, str] | None:
        """The decoded cursor: ``(created_at, id)`` of the last row of the page before.

        Raises:
            ConsoleError: the cursor is not one this console made (400).
        """
        if self.cursor is None:
            return None
        try:
            padded = self.cursor + "=" * (-len(self.cursor) % 4)
            at, last_id = json.loads(base64.urlsafe_b64decode(padded.encode()))
            return datetime.fromisoformat(at), str(last_id)
        except (ValueError, TypeError, binascii.Error):
            raise ConsoleError(
                400, f"cursor {self.cursor!r} is malformed; use the next_cursor of a page"
            ) from None

    def query_string(self, **changes: Any) -> str:
        """This query as URL parameters, with ``changes`` applied (``cursor=None`` drops
        the cursor)."""
        query = replace(self, **changes)
        pairs: list[tuple[str, str]] = [("status", Status(s).value) for s in query.statuses]
        for key in ("workflow", "id_prefix"):
            value = getattr(query, key)
            if value:
                pairs.append((key, value))
        for key in ("since", "until"):
            value = getattr(query, key)
            if value is not None:
                pairs.append((key, value.isoformat()))
        if query.limit != DEFAULT_LIMIT:
            pairs.append(("limit", str(query.limit)))
        if query.cursor:
            pairs.append(("cursor", query.cursor))
        return urlencode(pairs)

    def to_dict(self) -> dict[str, Any]:
        """The filters as JSON data (the API echoes them)."""
        return {
            "status": [s.value for s in self.statuses],
            "workflow": self.workflow,
            "id_prefix": self.id_prefix,
            "since": iso(self.since),
            "until": iso(self.until),
            "limit": self.limit,
            "cursor": self.cursor,
        }


def make_cursor(instance: Instance) -> str:
    """The cursor that starts the page after ``instance``."""
    data = json.dumps([instance.created_at.isoformat(), instance.id]).encode()
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _one(params: Params, key: str) -> str | None:
    values = [str(v) for v in params.getlist(key) if str(v).strip()]
    if len(values) > 1:
        raise ConsoleError(400, f"{key} is given {len(values)} times; give it once")
    return values[0].strip() if values else None


def _time(params: Params, key: str) -> datetime | None:
    text = _one(params, key)
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        raise ConsoleError(
            400, f"{key} {text!r} is not an ISO 8601 time (e.g. 2024-05-01T12:00:00Z)"
        ) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class WorkflowPage:
    """One page of the list.

    Attributes:
        query: the filters and page it answers.
        workflows: the rows, newest first (JSON-ready dicts).
        counts: instances per status under the same filters (the status filter aside).
        next_cursor: the cursor of the next page, or ``None`` on the last.
    """

    query: ListQuery
    workflows: list[dict[str, Any]]
    counts: dict[str, int]
    next_cursor: str | None

    def to_dict(self) -> dict[str, Any]:
        """The page as the JSON API answers it."""
        return {
            "workflows": jsonable(self.workflows),
            "counts": self.counts,
            "total": sum(self.counts.values()),
            "next_cursor": self.next_cursor,
            "filters": self.query.to_dict(),
        }


def list_workflows(durable: Durable, query: ListQuery) -> WorkflowPage:
    """The instances ``query`` selects, each with what it waits on, and the counts."""
    store = durable.store
    found = _newest(durable, query, query.limit + 1)
    more = len(found) > query.limit
    found = found[: query.limit]
    live = [i.id for i in found if not i.status.is_terminal]
    pending = store.pending_events(live) if live else {}
    counted = store.count_by_status(
        workflow=query.workflow, id_prefix=query.id_prefix, since=query.since, until=query.until
    )
    codecs: dict[str, Codec | Undecoded] = {}
    rows = []
    for instance in found:
        codec = codecs.get(instance.serializer)
        if codec is None:
            codec = codecs[instance.serializer] = codec_of(durable, instance.serializer)
        row = summary(instance, codec)
        row["waiting_on"] = [waiting_on(codec, e) for e in pending.get(instance.id, [])]
        rows.append(row)
    counts = {s.value: counted.get(s, 0) for s in Status}
    next_cursor = make_cursor(found[-1]) if more and found else None
    return WorkflowPage(query, rows, counts, next_cursor)


def _newest(durable: Durable, query: ListQuery, limit: int) -> list[Instance]:
    """The newest ``limit`` instances ``query`` selects. Several statuses are read one by
    one and merged: each read walks the (status, created_at) index in order, where one
    ``status IN (...)`` read would sort every row of those statuses."""
    reads = [(s,) for s in query.statuses] if len(query.statuses) > 1 else [query.statuses]
    found: list[Instance] = []
    for statuses in reads:
        found += durable.store.list(
            statuses=statuses or None,
            workflow=query.workflow,
            id_prefix=query.id_prefix,
            since=query.since,
            until=query.until,
            before=query.position(),
            limit=limit,
        )
    if len(reads) > 1:
        found.sort(key=lambda i: (i.created_at, i.id), reverse=True)
    return found[:limit]


def summary(instance: Instance, codec: Codec | Undecoded) -> dict[str, Any]:
    """An instance's list fields (no arguments or result: those are on its own page)."""
    return {
        "id": instance.id,
        "workflow": instance.workflow,
        "status": instance.status.value,
        "custom_status": decode(codec, instance.custom_status),
        "created_at": instance.created_at,
        "updated_at": instance.updated_at,
        "wake_at": instance.wake_at,
        "run": instance.run,
        "parent_id": instance.parent_id,
        "error": instance.failure.to_dict() if instance.failure else None,
        "note": instance.note,
        "waiting_at": instance.waiting_at,
        "code_version": instance.code_version,
        "patches": list(instance.patches),
    }


@dataclass(frozen=True)
class WorkflowView:
    """One instance in full, decoded: what ``/workflows/{id}`` and the API show.

    Attributes:
        instance: the instance row.
        events: its journal, by seq.
        codec: the codec of its payloads (or why they are not decoded).
        signals: its inbox (signals no wait has taken yet), oldest first.
        children: ids of its child workflows (journaled or stored), in order.
        compensation_of: seq of a compensating step -> seq of the failure (or
            cancellation) it follows.
    """

    instance: Instance
    events: Sequence[Event]
    codec: Codec | Undecoded
    signals: Sequence[Signal]
    children: list[str]
    compensation_of: dict[int, int] = field(default_factory=dict)

    def header(self) -> dict[str, Any]:
        """The header fields (status, workflow, run, input, result or error, ...)."""
        instance = self.instance
        args, kwargs = decode_call(self.codec, instance.input)
        data = summary(instance, self.codec)
        completed = instance.status is Status.COMPLETED
        data |= {
            "input": {"args": args, "kwargs": kwargs},
            "args": args,
            "kwargs": kwargs,
            "result": decode(self.codec, instance.output) if completed else None,
            "children": self.children,
            "patches": list(instance.patches),
            "cancel_requested": instance.cancel_requested,
            "version": instance.version,
        }
        return data

    def event_dicts(self) -> list[dict[str, Any]]:
        """The journal decoded, one dict per event."""
        return [self.event_dict(e) for e in self.events]

    def event_dict(self, event: Event) -> dict[str, Any]:
        """One journal event decoded (``args``/``kwargs``, ``result`` or ``error``)."""
        args, kwargs = decode_call(self.codec, event.input)
        return {
            "seq": event.seq,
            "kind": event.kind.value,
            "name": event.name,
            "state": event.state.value,
            "scheduled_at": event.scheduled_at,
            "started_at": event.started_at,
            "completed_at": event.completed_at,
            "heartbeat_at": event.heartbeat_at,
            "attempts": event.attempts,
            "resends": event.resends,
            "args": args,
            "kwargs": kwargs,
            "result": decode(self.codec, event.output),
            "error": event.failure.to_dict() if event.failure else None,
            "compensation_of": self.compensation_of.get(event.seq),
        }

    def signal_dicts(self) -> list[dict[str, Any]]:
        """The inbox decoded."""
        return [
            {"name": s.name, "payload": decode(self.codec, s.payload), "sent_at": s.sent_at}
            for s in self.signals
        ]

    def to_dict(self) -> dict[str, Any]:
        """The instance as ``GET /api/workflows/{id}`` answers it."""
        data = self.header() | {"signals": self.signal_dicts(), "events": self.event_dicts()}
        return dict(jsonable(data))


def workflow_view(durable: Durable, workflow_id: str) -> WorkflowView:
    """Read one instance, its journal, inbox and children.

    Raises:
        ConsoleError: no such instance (404).
    """
    loaded = durable.store.load(workflow_id)
    if loaded is None:
        raise ConsoleError(404, f"no workflow instance with id {workflow_id!r} in the store")
    instance, events = loaded
    codec = codec_of(durable, instance.serializer)
    children: dict[str, None] = {}
    for event in events:
        if event.kind is Kind.CHILD and not isinstance(codec, Undecoded):
            try:
                children[decode_child_id(codec, event.input)] = None
            except Exception:  # a malformed row loses its link, not the page
                continue
    for child in durable.store.list(parent_id=workflow_id, limit=CHILDREN_SHOWN):
        children.setdefault(child.id, None)
    signals = durable.store.signals(workflow_id)
    return WorkflowView(
        instance,
        events,
        codec,
        signals,
        list(children),
        compensations(events, instance.failure if instance.status is Status.FAILED else None),
    )
