"""Payload codecs through kombu's serializer registry (no server needed)."""

from __future__ import annotations

import uuid
from datetime import date, datetime, timezone
from decimal import Decimal

import pytest

from celery_durable import ConfigurationError, SerializationError
from celery_durable.runtime.codec import KombuCodec

VALUES = [
    Decimal("1000.10"),
    datetime(2026, 11, 28, 12, 30, tzinfo=timezone.utc),
    date(2027, 1, 1),
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    {"nested": [1, 2.5, "x", None, True]},
]


@pytest.mark.parametrize("name", ["json", "pickle"])
def test_values_round_trip_with_their_types(name: str) -> None:
    codec = KombuCodec(name)
    encoded = codec.dumps(VALUES)
    assert isinstance(encoded, str)
    decoded = codec.loads(encoded)
    assert decoded == VALUES
    assert [type(v) for v in decoded] == [type(v) for v in VALUES]


def test_json_payloads_stay_readable_in_the_store() -> None:
    assert KombuCodec("json").dumps({"amount": 5}) == '{"amount": 5}'


def test_unencodable_value_is_a_serialization_error_naming_the_type() -> None:
    class Opaque:
        pass

    with pytest.raises(SerializationError, match=r"Opaque value cannot be encoded with the 'json'"):
        KombuCodec("json").dumps(Opaque())


def test_unknown_serializer_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="'nope' is not a registered kombu serializer"):
        KombuCodec("nope")
