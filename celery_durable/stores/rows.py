"""Converting journal records to and from SQL rows (shared by both SQL paths)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any, overload

from sqlalchemy import RowMapping, case

from celery_durable.engine.journal import Event, Failure, Instance, Kind, State, Status
from celery_durable.stores.base import Commit
from celery_durable.stores.schema import events


@overload
def aware(value: datetime, name: str) -> datetime: ...
@overload
def aware(value: datetime | None, name: str) -> datetime | None: ...
def aware(value: datetime | None, name: str) -> datetime | None:
    if value is not None and value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime (UTC), got {value!r}")
    return value


def failure_text(failure: Failure | None) -> str | None:
    return None if failure is None else json.dumps(failure.to_dict())


def failure_from(value: str | None) -> Failure | None:
    return None if value is None else Failure.from_dict(json.loads(value))


def patches_text(patches: Sequence[str]) -> str | None:
    """The ``patches`` column's JSON list (NULL for none)."""
    return json.dumps(list(patches)) if patches else None


def patches_from(value: str | None) -> tuple[str, ...]:
    return tuple(json.loads(value)) if value else ()


def instance_values(instance: Instance) -> dict[str, Any]:
    return {
        "id": instance.id,
        "workflow": instance.workflow,
        "status": Status(instance.status).value,
        "input": instance.input,
        "serializer": instance.serializer,
        "version": instance.version,
        "created_at": aware(instance.created_at, "created_at"),
        "updated_at": aware(instance.updated_at, "updated_at"),
        "output": instance.output,
        "failure": failure_text(instance.failure),
        "wake_at": aware(instance.wake_at, "wake_at"),
        "custom_status": instance.custom_status,
        "parent_id": instance.parent_id,
        "inbox": instance.inbox,
        "cancel_requested": bool(instance.cancel_requested),
        "run": instance.run,
        "note": instance.note,
        "parent_close": instance.parent_close,
        "code_version": instance.code_version,
        "patches": patches_text(instance.patches),
        "waiting_at": instance.waiting_at,
        "trace_context": instance.trace_context,
    }


def instance_from_row(row: RowMapping) -> Instance:
    return Instance(
        id=row["id"],
        workflow=row["workflow"],
        status=Status(row["status"]),
        input=row["input"],
        serializer=row["serializer"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        version=row["version"],
        output=row["output"],
        failure=failure_from(row["failure"]),
        wake_at=row["wake_at"],
        custom_status=row["custom_status"],
        parent_id=row["parent_id"],
        inbox=row["inbox"],
        cancel_requested=bool(row["cancel_requested"]),
        run=row["run"],
        note=row["note"],
        parent_close=row["parent_close"],
        code_version=row["code_version"],
        patches=patches_from(row["patches"]),
        waiting_at=row["waiting_at"],
        trace_context=row["trace_context"],
    )


def event_values(instance_id: str, e: Event) -> dict[str, Any]:
    return {
        "instance_id": instance_id,
        "seq": e.seq,
        "kind": Kind(e.kind).value,
        "name": e.name,
        "input": e.input,
        "state": State(e.state).value,
        "output": e.output,
        "failure": failure_text(e.failure),
        "scheduled_at": aware(e.scheduled_at, "scheduled_at"),
        "started_at": aware(e.started_at, "started_at"),
        "completed_at": aware(e.completed_at, "completed_at"),
        "attempts": e.attempts,
        "heartbeat_at": aware(e.heartbeat_at, "heartbeat_at"),
        "resends": e.resends,
    }


def resent_seqs(commit: Commit) -> list[int]:
    """The seqs whose sign of life ``commit`` renews: its ``resent`` steps, except those
    it journals an outcome for (final once it applies; PostgreSQL also cannot update one
    row twice in a statement)."""
    journaled = {e.seq for e in commit.outcomes}
    return sorted({seq for seq in commit.resent if seq not in journaled})


def check_restart(commit: Commit) -> None:
    """Refuse a ``continue_as_new`` commit that also journals outcomes, resends steps or
    rewinds: the events they would write are deleted by the restart."""
    if commit.restart_input is not None and (
        commit.outcomes or commit.resent or commit.rewind_from is not None
    ):
        raise ValueError(
            f"commit for {commit.instance_id!r} restarts the instance (restart_input):"
            " it cannot also journal outcomes, resend steps or rewind the run it ends"
        )


def outcome_values(e: Event) -> tuple[int, dict[str, Any]]:
    if not State(e.state).is_final:
        raise ValueError(f"outcome for event {e.seq} has state {e.state!r}, not a final one")
    values: dict[str, Any] = {
        "state": State(e.state).value,
        "output": e.output,
        "failure": failure_text(e.failure),
        "completed_at": aware(e.completed_at, "completed_at"),
        # A worker reports the attempts it knows of; the journal keeps the larger count.
        "attempts": case((events.c.attempts > e.attempts, events.c.attempts), else_=e.attempts),
    }
    if e.started_at is not None:
        values["started_at"] = aware(e.started_at, "started_at")
    return e.seq, values


def event_from_row(row: RowMapping) -> Event:
    """An event from a row of :meth:`SQLAlchemyStore.load` (columns labelled ``e_*``)."""
    prefix = "e_"
    return Event(
        seq=row[f"{prefix}seq"],
        kind=Kind(row[f"{prefix}kind"]),
        name=row[f"{prefix}name"],
        input=row[f"{prefix}input"],
        state=State(row[f"{prefix}state"]),
        scheduled_at=row[f"{prefix}scheduled_at"],
        output=row[f"{prefix}output"],
        failure=failure_from(row[f"{prefix}failure"]),
        started_at=row[f"{prefix}started_at"],
        completed_at=row[f"{prefix}completed_at"],
        attempts=row[f"{prefix}attempts"],
        heartbeat_at=row[f"{prefix}heartbeat_at"],
        resends=row[f"{prefix}resends"],
    )
