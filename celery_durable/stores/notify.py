"""Waking ``handle.result()`` when an instance ends, with PostgreSQL's LISTEN/NOTIFY.

A PostgreSQL commit that ends an instance (completed, failed, cancelled or stuck) also
sends a notification on the channel ``celery_durable_ended`` (delivered when it
commits): the JSON array ``[id, version, status, output, failure]``, or ``[id]`` alone
when the output or error would not fit in a notification. A process that waits for results keeps
one listening connection, opened on first use by a daemon thread, which wakes the
waiters of that id and hands them the ending, so they need not read it back. A waiter
still looks at the store after every ``timeout``: a notification lost with a connection
only costs that pause, never a result; one that comes just before the waiter registers
is remembered for a few seconds.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import defaultdict
from typing import Any

from celery_durable.engine.journal import Failure, Status
from celery_durable.stores.base import Ending

CHANNEL = "celery_durable_ended"

ENDING_INLINE = 7000
"""Bytes of output plus error up to which a notification carries the ending itself."""

RECENT = 5.0
"""Seconds a notification nobody waited for is remembered."""

logger = logging.getLogger("celery_durable")


class EndListener:
    """One process's listening connection and the threads waiting on it.

    Args:
        connect: opens a new psycopg connection (autocommit) to the store's database.
    """

    def __init__(self, connect: Any) -> None:
        self._connect = connect
        self._lock = threading.Lock()
        self._waiters: defaultdict[str, set[_Waiter]] = defaultdict(set)
        self._ended: dict[str, tuple[float, Ending | None]] = {}
        """Ids notified lately with nobody waiting: a waiter that comes just after (it
        looked at the store just before the commit) returns at once, once."""
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._stopped = False
        self._ready = threading.Event()

    def wait(self, instance_id: str, timeout: float) -> Ending | None:
        """Block up to ``timeout`` seconds, or until ``instance_id`` is notified as ended;
        the ending, when the notification carried it."""
        woken = _Waiter()
        with self._lock:
            self._start()
            ended = self._ended.pop(instance_id, None)
            if ended is not None and time.monotonic() - ended[0] < RECENT:
                return ended[1]
            self._waiters[instance_id].add(woken)
        try:
            woken.wait(timeout)
            return woken.ending
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
                            self._wake(*_parse(note.payload))
            except Exception as exc:  # the database went away: waiters poll meanwhile
                self._ready.set()
                logger.debug("result listener: %s; listening again", exc)
                if self._stopped:
                    return
                threading.Event().wait(1.0)

    def _wake(self, instance_id: str, ending: Ending | None) -> None:
        now = time.monotonic()
        with self._lock:
            waiters = list(self._waiters.get(instance_id, ()))
            if not waiters:
                self._ended[instance_id] = (now, ending)
                if len(self._ended) > 1000:  # forget the old ones
                    self._ended = {
                        key: seen for key, seen in self._ended.items() if now - seen[0] < RECENT
                    }
        for woken in waiters:
            woken.ending = ending
            woken.set()


class _Waiter(threading.Event):
    ending: Ending | None = None


def _parse(payload: str) -> tuple[str, Ending | None]:
    """``[id, version, status, output, failure]`` (or ``[id]``) as the id and the ending."""
    try:
        values = json.loads(payload)
        instance_id = str(values[0])
    except (ValueError, TypeError, IndexError, KeyError):
        return payload, None  # not ours to read: wake whoever waits on that text
    if len(values) != 5:
        return instance_id, None
    try:
        _, version, status, output, failure = values
        return instance_id, Ending(
            int(version),
            Status(status),
            output,
            Failure.from_dict(json.loads(failure)) if failure else None,
        )
    except (ValueError, TypeError, KeyError):
        return instance_id, None
