"""Heartbeats of running steps: one daemon thread per worker process.

Every step is marked started (``Store.start_step``) before its code runs, with
``heartbeat_at`` = its start and its instance's ``wake_at`` a few intervals ahead. A step
that runs longer than ``durable_heartbeat_interval`` then reports in every interval
(``Store.heartbeat``), pushing both on. If the worker dies at any moment, the beats stop
(or never come), that ``wake_at`` comes due, and the tick has the step sent again —
within seconds, whatever the broker's visibility timeout. Steps shorter than one
interval write no beat beyond their start mark.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING

from celery_durable.errors import DurableError
from celery_durable.runtime.recovery import HEARTBEAT_MISSES

if TYPE_CHECKING:
    from celery_durable.runtime.durable import Durable

logger = logging.getLogger("celery_durable")


class Heartbeats:
    """The running steps of this process, and the thread that beats for them."""

    def __init__(self, durable: Durable) -> None:
        self._durable = durable
        self._running: dict[tuple[str, int, int], float] = {}  # -> monotonic time of last beat
        self._lock = threading.Lock()
        self._pid = 0

    @contextmanager
    def track(self, workflow_id: str, run: int, seq: int) -> Iterator[None]:
        """Beat for step ``seq`` of run ``run`` of ``workflow_id`` while the block runs."""
        key = (workflow_id, run, seq)
        with self._lock:
            self._running[key] = time.monotonic()
            if self._pid != os.getpid():  # first step in this (possibly forked) process
                self._pid = os.getpid()
                threading.Thread(target=self._loop, name="durable-heartbeat", daemon=True).start()
        try:
            yield
        finally:
            with self._lock:
                self._running.pop(key, None)

    def _loop(self) -> None:
        pid = os.getpid()
        while pid == os.getpid():
            interval = self._durable.settings.heartbeat_interval
            time.sleep(interval / 4)
            now = time.monotonic()
            with self._lock:
                due = [key for key, last in self._running.items() if now - last >= interval]
            for key in due:
                self._beat(key, interval)

    def _beat(self, key: tuple[str, int, int], interval: float) -> None:
        workflow_id, run, seq = key
        at = self._durable.now()
        try:
            alive = self._durable.store.heartbeat(
                workflow_id, run, seq, at, at + timedelta(seconds=interval * HEARTBEAT_MISSES)
            )
        except DurableError as exc:
            logger.warning("heartbeat of %s:%d failed: %s", workflow_id, seq, exc)
            return
        with self._lock:
            if key in self._running:
                if alive:
                    self._running[key] = time.monotonic()
                else:
                    # Journaled by another copy of the step, or gone: stop beating.
                    self._running.pop(key, None)
