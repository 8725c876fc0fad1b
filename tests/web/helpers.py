"""Small helpers of the console tests: waiting for a status, a page's CSRF token."""

from __future__ import annotations

import re

import httpx
from runtime.waiting import wait_for

from celery_durable import Durable, Status


def wait_status(durable: Durable, workflow_id: str, status: str, timeout: float = 30) -> None:
    """Wait until the instance has ``status`` (fails the test after ``timeout`` s)."""

    def reached() -> bool:
        instance = durable.store.get(workflow_id)
        return instance is not None and instance.status is Status(status)

    wait_for(reached, timeout)


def wait_waiting(durable: Durable, workflow_id: str, kind: str, timeout: float = 30) -> None:
    """Wait until the instance waits on a ``kind`` event ("signal", "timer", ...)."""

    def waiting() -> bool:
        pending = durable.store.pending_events([workflow_id]).get(workflow_id, [])
        return any(e.kind.value == kind for e in pending)

    wait_for(waiting, timeout)


def csrf_token(client: httpx.Client, path: str = "/") -> str:
    """Open a page (which sets the CSRF cookie) and read the token its forms carry."""
    page = client.get(path)
    assert page.status_code == 200, page.text
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert found, "the page has no CSRF token"
    return found.group(1)


def version(durable: Durable, workflow_id: str) -> int:
    """The instance's version (every write bumps it): unchanged means nothing written."""
    instance = durable.store.get(workflow_id)
    assert instance is not None
    return instance.version
