"""A clock that tests move forward, so month-long timers fire in seconds.

It is the wall clock plus an offset: time flows as usual (short timers, ETAs and
heartbeats behave as in production) and :meth:`Clock.advance` jumps it forward. Give it
to the runtime and every part of celery_durable — the engine's ``ctx.now()``, timers,
the tick, recovery deadlines — reads it::

    clock = Clock()
    durable = Durable(app, clock=clock)      # or: durable.clock = clock
    ...
    clock.advance(days=30)
    durable.recover()                        # or wait for beat's next tick

Only processes that share the object see the jumps: use it with an in-process worker
(``celery.contrib.testing.worker.start_worker``).
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone


class Clock:
    """The current UTC time plus an offset that only grows.

    Args:
        start: what the clock reads now (default: the wall clock's time).
    """

    def __init__(self, start: datetime | None = None) -> None:
        now = datetime.now(timezone.utc)
        if start is not None and start.utcoffset() is None:
            raise ValueError("Clock(start=...) needs a timezone-aware datetime")
        self._offset = (start - now) if start is not None else timedelta(0)
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        """The clock's current time (UTC, aware)."""
        return datetime.now(timezone.utc) + self._offset

    def advance(self, delta: timedelta | None = None, **parts: float) -> datetime:
        """Jump forward by ``delta`` or by ``timedelta(**parts)`` (e.g. ``days=30``).

        Returns:
            The clock's new time.

        Raises:
            ValueError: a negative jump (time never goes back for a journal).
        """
        step = delta if delta is not None else timedelta(**parts)
        if step < timedelta(0):
            raise ValueError("a Clock only moves forward")
        with self._lock:
            self._offset += step
        return self()
