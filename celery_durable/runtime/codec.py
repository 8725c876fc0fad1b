"""Payload encoding through Celery's (kombu's) serializer registry.

Text serializers (``json``, ``yaml``) are stored as they are, so a journal can be read with
``psql``; binary ones (``pickle``, ``msgpack``) are stored base64-encoded.
"""

from __future__ import annotations

import base64
from typing import Any

from kombu.exceptions import ContentDisallowed, DecodeError, EncodeError
from kombu.serialization import registry as _untyped_registry

from celery_durable.errors import ConfigurationError, SerializationError

registry: Any = _untyped_registry  # kombu ships no type hints


def content_type(serializer: str) -> str:
    """The content type of a kombu serializer name; a content type is returned as it is.

    Raises:
        ConfigurationError: no serializer of that name is registered with kombu.
    """
    if "/" in serializer:
        return serializer
    try:
        found: str = registry.name_to_type[serializer]
    except KeyError:
        raise ConfigurationError(
            f"{serializer!r} is not a registered kombu serializer (known: "
            f"{', '.join(sorted(registry.name_to_type))}); install or register it, or "
            "name a content type such as 'application/json'"
        ) from None
    return found


class KombuCodec:
    """A :class:`~celery_durable.engine.serialization.Codec` over one kombu serializer.

    Args:
        name: a serializer registered with kombu (``"json"`` by default in Celery).

    Raises:
        ConfigurationError: no serializer of that name is registered.
    """

    def __init__(self, name: str) -> None:
        try:
            content_type, content_encoding, _ = registry.dumps(None, serializer=name)
        except Exception as exc:
            raise ConfigurationError(
                f"durable_serializer {name!r} is not a registered kombu serializer; "
                "use 'json' (the default) or register it with kombu.serialization.register"
            ) from exc
        self.name = name
        self._content_type: str = content_type
        self._content_encoding: str = content_encoding
        self._binary = content_encoding == "binary"

    def dumps(self, value: Any) -> str:
        """Encode ``value``.

        Raises:
            SerializationError: the serializer cannot encode it.
        """
        try:
            _, _, payload = registry.dumps(value, serializer=self.name)
        except (EncodeError, TypeError, ValueError) as exc:
            raise SerializationError(
                f"{type(value).__name__} value cannot be encoded with the {self.name!r} "
                f"serializer: {exc}"
            ) from exc
        if self._binary:
            return base64.b64encode(payload).decode("ascii")
        return payload if isinstance(payload, str) else payload.decode(self._content_encoding)

    def loads(self, data: str) -> Any:
        """Decode a payload produced by :meth:`dumps`."""
        raw: str | bytes = base64.b64decode(data) if self._binary else data
        try:
            return registry.loads(
                raw, self._content_type, self._content_encoding, accept={self._content_type}
            )
        except (DecodeError, ContentDisallowed) as exc:
            raise SerializationError(
                f"a journal payload cannot be decoded with the {self.name!r} serializer: {exc}"
            ) from exc
