"""Who may use the console, and how its forms are protected.

* **Auth** (``--auth``): ``user:password`` asks for HTTP Basic credentials; any other text
  is a token, given as ``Authorization: Bearer TOKEN`` (tools) or as the password of Basic
  auth with any user name (browsers). Every route, pages and API, is behind it.
* **CSRF**: the pages' forms carry a token equal to a ``SameSite=Strict`` cookie set by
  the console (double submit), and a form POST whose ``Origin`` names another site is
  refused. The JSON API needs no token: it takes only ``Content-Type:
  application/json`` POSTs, which a cross-site HTML form cannot send.
* **Binding**: :func:`is_loopback` tells whether a host keeps the console on this
  machine; ``celery ... durable web`` refuses any other host without ``--auth``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from celery_durable.web.errors import ConsoleError

CSRF_COOKIE = "durable_csrf"
CSRF_FIELD = "csrf_token"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def is_loopback(host: str) -> bool:
    """True if ``host`` (a name or an address) serves this machine alone."""
    if host.strip("[]").lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve to anything


@dataclass(frozen=True)
class Auth:
    """The credentials ``--auth`` set: a user and password, or a token.

    Attributes:
        user: the user name (``None`` for a token).
        secret: the password, or the token.
    """

    user: str | None
    secret: str

    @classmethod
    def parse(cls, text: str) -> Auth:
        """``user:password`` or a token.

        Raises:
            ValueError: empty text, an empty user or an empty password.
        """
        if not text:
            raise ValueError("--auth needs user:password or a token, not an empty text")
        if ":" in text:
            user, password = text.split(":", 1)
            if not user or not password:
                raise ValueError("--auth user:password needs both a user and a password")
            return cls(user, password)
        return cls(None, text)

    def check(self, header: str | None) -> str | None:
        """The user an ``Authorization`` header proves (``"token"`` for a token), or
        ``None`` if it proves nothing."""
        if not header:
            return None
        scheme, _, value = header.partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer" and self.user is None:
            return "token" if _same(value.strip(), self.secret) else None
        if scheme != "basic":
            return None
        try:
            user, _, password = base64.b64decode(value.strip()).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        if self.user is None:
            return (user or "token") if _same(password, self.secret) else None
        return user if _same(user, self.user) and _same(password, self.secret) else None


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


class AuthMiddleware:
    """Answers 401 to any request without valid credentials; puts the user in
    ``scope["durable.user"]`` (``"-"`` when the console has no auth)."""

    def __init__(self, app: ASGIApp, auth: Auth | None) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self.auth is None:
            scope["durable.user"] = "-"
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        user = self.auth.check(headers.get("authorization"))
        if user is None:
            await _unauthorized(scope, send)
            return
        scope["durable.user"] = user
        await self.app(scope, receive, send)


async def _unauthorized(scope: Scope, send: Send) -> None:
    api = scope.get("path", "").startswith("/api/")
    body = (
        b'{"error": "authentication required (--auth)"}'
        if api
        else b"authentication required: this console was started with --auth"
    )
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"www-authenticate", b'Basic realm="celery_durable console", charset="UTF-8"'),
                (b"content-type", b"application/json" if api else b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def new_csrf_token() -> str:
    """A fresh random CSRF token (for the cookie and the forms)."""
    return secrets.token_urlsafe(32)


def check_csrf(cookie: str | None, field: str | None, origin: str | None, host: str | None) -> None:
    """Refuse a form POST that did not come from one of the console's own pages.

    Args:
        cookie: the ``durable_csrf`` cookie.
        field: the form's ``csrf_token``.
        origin: the request's ``Origin`` header (browsers send it on POSTs).
        host: the request's ``Host`` header.

    Raises:
        ConsoleError: the token is missing or wrong, or the origin is another site (403).
    """
    if origin and origin != "null" and host and urlsplit(origin).netloc.lower() != host.lower():
        raise ConsoleError(403, f"a form from another site ({origin}) may not act here")
    if not cookie or not field or not _same(cookie, field):
        raise ConsoleError(
            403,
            "the form's CSRF token is missing or stale; reload the page and try again "
            "(tools use the JSON API under /api)",
        )
