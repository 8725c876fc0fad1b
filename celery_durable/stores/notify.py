"""Waking ``handle.result()`` when an instance ends, with PostgreSQL's LISTEN/NOTIFY.

A PostgreSQL commit that ends an instance (completed, failed, cancelled or stuck) also
sends ``NOTIFY celery_durable_ended, '<instance id>'`` (delivered when it commits). A
process that waits for results keeps one listening connection, opened on first use by a
daemon thread, which wakes the waiters of that id. A waiter still looks at the store
after every ``timeout``: a notification that comes before the waiter registers, or is
lost with a connection, only costs that pause, never a result.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import defaultdict
from typing import Any

CHANNEL = "celery_durable_ended"

logger = logging.getLogger("celery_durable")


class EndListener:
    """One process's listening connection and the threads waiting on it.

    Args:
        connect: opens a new psycopg connection (autocommit) to the store's database.
    """

    def __init__(self, connect: Any) -> None:
        self._connect = connect
        self._lock = threading.Lock()
        self._waiters: defaultdict[str, set[threading.Event]] = defaultdict(set)
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._stopped = False
        self._ready = threading.Event()

    def wait(self, instance_id: str, timeout: float) -> None:
        """Block up to ``timeout`` seconds, or until ``instance_id`` is notified as ended."""
        woken = threading.Event()
        with self._lock:
            self._start()
            self._waiters[instance_id].add(woken)
        try:
            woken.wait(timeout)
        finally:
            with self._lock:
                waiters = self._waiters.get(instance_id)
                if waiters is not None:
                    waiters.discard(woken)
                    if not waiters:
                        del self._waiters[instance_id]

    def close(self) -> None:
        """Stop listening (the thread ends within a second)."""
        self._stopped = True

    def _start(self) -> None:
        if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
            return
        self._stopped = False
        self._pid = os.getpid()
        self._ready.clear()
        self._thread = threading.Thread(
            target=self._listen, name="celery-durable-listen", daemon=True
        )
        self._thread.start()
        # The first waiter gives the connection a moment to LISTEN (else it polls).
        self._ready.wait(1.0)

    def _listen(self) -> None:
        while not self._stopped:
            try:
                with self._connect() as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._ready.set()
                    while not self._stopped:
                        for note in conn.notifies(timeout=1.0):
                            self._wake(note.payload)
            except Exception as exc:  # the database went away: waiters poll meanwhile
                self._ready.set()
                logger.debug("result listener: %s; listening again", exc)
                if self._stopped:
                    return
                threading.Event().wait(1.0)

    def _wake(self, instance_id: str) -> None:
        with self._lock:
            waiters = list(self._waiters.get(instance_id, ()))
        for woken in waiters:
            woken.set()
