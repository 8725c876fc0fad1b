"""Fixtures for the engine tests: a stdlib JSON codec and hand-built journals."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import pytest

from celery_durable.engine.journal import Event, Failure, Instance, Kind, State, Status
from celery_durable.errors import SerializationError

T0 = datetime(2024, 1, 1, 12, 0, tzinfo=timezone.utc)


def _encode_datetime(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"__type__": "datetime", "__value__": value.isoformat()}
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _decode_datetime(data: dict[str, Any]) -> Any:
    if data.get("__type__") == "datetime":
        return datetime.fromisoformat(data["__value__"])
    return data


class PlainJsonCodec:
    """The smallest codec: stdlib json (no datetimes), failing as the Codec protocol asks."""

    name = "json"

    def dumps(self, value: Any) -> str:
        try:
            return json.dumps(value)
        except TypeError as exc:
            raise SerializationError(str(exc)) from exc

    def loads(self, data: str) -> Any:
        return json.loads(data)


class JsonCodec(PlainJsonCodec):
    """Stdlib json that round-trips datetimes the way kombu's json serializer does."""

    def dumps(self, value: Any) -> str:
        try:
            return json.dumps(value, default=_encode_datetime)
        except TypeError as exc:
            raise SerializationError(str(exc)) from exc

    def loads(self, data: str) -> Any:
        return json.loads(data, object_hook=_decode_datetime)


@pytest.fixture
def codec() -> JsonCodec:
    return JsonCodec()


@pytest.fixture
def plain_codec() -> PlainJsonCodec:
    """A codec that cannot encode datetimes (unlike kombu's json)."""
    return PlainJsonCodec()


@pytest.fixture
def instance(codec: JsonCodec) -> Callable[..., Instance]:
    """Build an instance of workflow ``wf`` whose input is ``[args, kwargs]``."""

    def build(*args: Any, workflow: str = "wf", id: str = "wf-1", **kwargs: Any) -> Instance:  # noqa: A002
        return Instance(
            id=id,
            workflow=workflow,
            status=Status.RUNNING,
            input=codec.dumps([list(args), kwargs]),
            serializer=codec.name,
            created_at=T0,
            updated_at=T0,
        )

    return build


_CALL: Any = object()
"""``event(input=...)`` not given: the input is encoded from ``args`` and ``kwargs``."""


@pytest.fixture
def event(codec: JsonCodec) -> Callable[..., Event]:
    """Build a journal event; ``output`` is given decoded, ``failure`` as a Failure.

    The event's input is the encoded ``[args, kwargs]`` the step was called with (replay
    checks it against the arguments the code passes), or ``input`` verbatim (an encoded
    string, or ``None``) when given.
    """

    def build(
        seq: int,
        name: str,
        state: State = State.COMPLETED,
        *,
        kind: Kind = Kind.STEP,
        output: Any = None,
        failure: Failure | None = None,
        at: datetime = T0,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        input: Any = _CALL,  # noqa: A002
    ) -> Event:
        encoded = codec.dumps([list(args), kwargs or {}]) if input is _CALL else input
        return Event(
            seq=seq,
            kind=kind,
            name=name,
            input=encoded,
            state=state,
            scheduled_at=at,
            output=codec.dumps(output) if state is State.COMPLETED else None,
            failure=failure,
            completed_at=at if state.is_final else None,
        )

    return build


@pytest.fixture
def timer(codec: JsonCodec) -> Callable[..., Event]:
    """Build a journal timer event that fires at ``fire_at``, issued at ``at``.

    A COMPLETED timer fired at ``fired_at`` (default: its fire time).
    """

    def build(
        seq: int,
        fire_at: datetime,
        state: State = State.SCHEDULED,
        *,
        at: datetime = T0,
        fired_at: datetime | None = None,
    ) -> Event:
        fired = state.is_final
        return Event(
            seq=seq,
            kind=Kind.TIMER,
            name="sleep",
            input=codec.dumps([[fire_at], {}]),
            state=state,
            scheduled_at=at,
            completed_at=(fired_at or fire_at) if fired else None,
        )

    return build
