"""Journal values as the console shows them: decoded payloads, JSON, times, "waiting on".

Payloads are decoded with the instance's own codec (``durable.codec(serializer)``); a
payload this app may not or cannot decode is shown as a note, never raised, so one
foreign row never breaks a page.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from celery_durable.engine.awaitables import decode_child_id, decode_deadline, decode_fire_time
from celery_durable.engine.journal import Event, Failure, Kind, State
from celery_durable.engine.serialization import Codec
from celery_durable.runtime.durable import Durable


@dataclass(frozen=True)
class Undecoded:
    """A payload the console did not decode, and why."""

    reason: str

    def __str__(self) -> str:
        return f"<not decoded: {self.reason}>"


def codec_of(durable: Durable, serializer: str) -> Codec | Undecoded:
    """The instance's codec, or why its payloads are not decoded here."""
    try:
        return durable.codec(serializer)
    except (TypeError, ValueError) as exc:  # SerializationError is a TypeError
        return Undecoded(str(exc))


def decode(codec: Codec | Undecoded, data: str | None) -> Any:
    """``data`` decoded (``None`` stays ``None``), or an :class:`Undecoded` note."""
    if data is None:
        return None
    if isinstance(codec, Undecoded):
        return codec
    try:
        return codec.loads(data)
    except Exception as exc:  # a foreign or damaged row: show it, never fail the page
        return Undecoded(f"{type(exc).__name__}: {exc}")


def decode_call(codec: Codec | Undecoded, data: str | None) -> tuple[list[Any], dict[str, Any]]:
    """An encoded ``[args, kwargs]`` as a list and a dict (``[note], {}`` if undecodable)."""
    decoded = decode(codec, data)
    if decoded is None:
        return [], {}
    if isinstance(decoded, Undecoded):
        return [decoded], {}
    try:
        args, kwargs = decoded
        return list(args), dict(kwargs)
    except (TypeError, ValueError):
        return [Undecoded(f"{decoded!r} is not an [args, kwargs] pair")], {}


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON data: ISO times, exact decimals as text, ``str`` for the
    rest of what JSON does not know."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if isinstance(value, Failure):
        return value.to_dict()
    if isinstance(value, Decimal):
        return str(value)
    return str(value)


def to_json(value: Any, indent: int | None = None) -> str:
    """``value`` as JSON text (see :func:`jsonable`)."""
    return json.dumps(jsonable(value), indent=indent, ensure_ascii=False, sort_keys=False)


def show(value: Any) -> str:
    """A decoded value for a page: JSON when it has a JSON form, else its text."""
    try:
        return to_json(value, indent=2 if isinstance(value, (dict, list, tuple)) else None)
    except (TypeError, ValueError):
        return str(value)


def iso(value: datetime | None) -> str | None:
    """An aware UTC time as ISO text, or ``None``."""
    return value.astimezone(timezone.utc).isoformat() if value is not None else None


def short_time(value: datetime | None) -> str:
    """A UTC time for a table cell (``2024-05-01 12:00:03``)."""
    if value is None:
        return ""
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def failure_text(failure: Failure | None) -> str:
    """``Type: message`` of a journaled failure ("" for none)."""
    if failure is None:
        return ""
    return f"{failure.type}: {failure.message}" if failure.message else failure.type


def waiting_on(codec: Codec | Undecoded, event: Event) -> dict[str, Any]:
    """What a pending event means for someone reading the list: its kind and name, the
    timer's due time, the signal's deadline, the child's id, and a line of text."""
    item: dict[str, Any] = {"seq": event.seq, "kind": event.kind.value, "name": event.name}
    item["state"] = event.state.value
    text = f"{event.kind.value} {event.name}"
    if event.kind is Kind.STEP:
        started = event.state is State.STARTED
        text = f"step {event.name} ({'running' if started else 'queued'})"
        if event.attempts > 1:
            text += f", attempt {event.attempts}"
    elif event.kind is Kind.TIMER:
        due = _quietly(lambda c: decode_fire_time(c, event.input), codec)
        item["due"] = iso(due)
        text = f"timer until {short_time(due)}" if due else "timer"
    elif event.kind is Kind.SIGNAL:
        deadline = _quietly(lambda c: decode_deadline(c, event.input), codec)
        item["deadline"] = iso(deadline)
        text = f"signal {event.name!r}"
        if deadline is not None:
            text += f" (until {short_time(deadline)})"
    elif event.kind is Kind.CHILD:
        child_id = _quietly(lambda c: decode_child_id(c, event.input), codec)
        item["child_id"] = child_id
        text = f"child {event.name}" + (f" ({child_id})" if child_id else "")
    item["text"] = text
    return item


def _quietly(read: Any, codec: Codec | Undecoded) -> Any:
    if isinstance(codec, Undecoded):
        return None
    try:
        return read(codec)
    except Exception:  # an undecodable input only loses its detail, not the row
        return None
