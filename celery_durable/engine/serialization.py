"""The codec protocol through which the engine encodes and decodes payloads.

The runtime supplies a codec backed by Celery's serializer registry; the engine only
needs these two calls, so it stays free of kombu.
"""

from __future__ import annotations

from typing import Any, Protocol


class Codec(Protocol):
    """Turns Python values into the ``str`` payloads the journal keeps, and back."""

    name: str
    """The serializer's name, recorded on each instance."""

    def dumps(self, value: Any) -> str:
        """Encode ``value``.

        Raises:
            SerializationError: the value cannot be encoded.
        """
        ...

    def loads(self, data: str) -> Any:
        """Decode a payload produced by :meth:`dumps`."""
        ...
