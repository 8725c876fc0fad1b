"""What a test environment's workflows are doing: busy, or waiting only on time.

Time may skip forward only while nothing but time can move a workflow: no message of
the runtime is queued in the broker or held by the worker (:class:`Messages`, counted
from Celery's own signals), no step is scheduled or running in the journal, and each
open instance waits on timers, signal deadlines or signals (:func:`survey`).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from celery.signals import before_task_publish, task_postrun, task_revoked

from celery_durable.engine.journal import Kind, Status
from celery_durable.runtime.durable import RESUME_TASK
from celery_durable.runtime.steps import DurableStep

if TYPE_CHECKING:
    from celery_durable.runtime.durable import Durable

#: The most open instances a survey looks at (a test starts far fewer).
SURVEY_LIMIT = 10_000


class Messages:
    """The runtime's messages published and not yet run to the end, by task id.

    A retry publishes a message with the task id of the one running it, so these are
    counts, not a set. With ``skip_retry_delays``, a step's retry message loses its ETA
    here, before it is published: Celery's retry countdowns and backoff are not waited
    for (the journal still records the retry's due time).
    """

    def __init__(self, durable: Durable, *, skip_retry_delays: bool = True) -> None:
        self._durable = durable
        self._skip_retry_delays = skip_retry_delays
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._connected = False

    def connect(self) -> None:
        """Start counting (Celery signals, process-wide)."""
        before_task_publish.connect(self._published, weak=False)
        task_postrun.connect(self._ran, weak=False)
        task_revoked.connect(self._revoked, weak=False)
        self._connected = True

    def disconnect(self) -> None:
        """Stop counting."""
        if self._connected:
            before_task_publish.disconnect(self._published)
            task_postrun.disconnect(self._ran)
            task_revoked.disconnect(self._revoked)
            self._connected = False

    @property
    def pending(self) -> int:
        """How many of the runtime's messages are queued, held or running."""
        with self._lock:
            return sum(self._counts.values())

    def _ours(self, name: Any) -> DurableStep | bool:
        """The step task called ``name`` (or True for the orchestrator's task), if it is
        this runtime's."""
        if name == RESUME_TASK:
            return True
        task = self._durable.app.tasks.get(name) if isinstance(name, str) else None
        if isinstance(task, DurableStep) and task.durable is self._durable:
            return task
        return False

    def _published(self, sender: Any = None, headers: Any = None, **_: Any) -> None:
        if not isinstance(headers, dict):
            return
        ours = self._ours(headers.get("task", sender))
        if not ours:
            return
        if self._skip_retry_delays and isinstance(ours, DurableStep) and headers.get("eta"):
            headers["eta"] = None  # Celery publishes this very dict: the retry runs now
        with self._lock:
            self._counts[str(headers.get("id"))] += 1

    def _done(self, task_id: Any) -> None:
        with self._lock:
            key = str(task_id)
            if self._counts.get(key, 0) > 1:
                self._counts[key] -= 1
            else:
                self._counts.pop(key, None)

    def _ran(self, sender: Any = None, task_id: Any = None, **_: Any) -> None:
        self._done(task_id)

    def _revoked(self, sender: Any = None, request: Any = None, **_: Any) -> None:
        self._done(getattr(request, "id", None))


@dataclass
class Survey:
    """The open instances at one moment.

    Attributes:
        busy: why time cannot skip now (a message in flight, a step scheduled or
            running); empty when every open instance waits on time or on a signal.
        next_due: the earliest fire time of a pending timer or signal deadline, or the
            start of a deferred instance; ``None`` when nothing waits on time.
        blocked: instances that wait for something time does not bring (a workflow no
            worker knows), with the reason.
    """

    busy: list[str] = field(default_factory=list)
    next_due: datetime | None = None
    blocked: list[str] = field(default_factory=list)

    def due_by(self, now: datetime) -> bool:
        """Something waits on a time that has come."""
        return self.next_due is not None and self.next_due <= now


def survey(durable: Durable, messages: Messages) -> Survey:
    """Look at every open instance of ``durable``'s store and at the messages in flight."""
    found = Survey()
    if messages.pending:
        found.busy.append(f"{messages.pending} message(s) of the runtime queued or running")
    store = durable.store
    open_instances = [
        *store.list(status=Status.PENDING, limit=SURVEY_LIMIT),
        *store.list(status=Status.RUNNING, limit=SURVEY_LIMIT),
    ]
    dues: list[datetime] = []
    for instance in open_instances:
        if instance.note:
            found.blocked.append(f"{instance.id}: {instance.note}")
            continue
        loaded = store.load(instance.id)
        if loaded is None:
            continue
        events = loaded[1]
        if not events and instance.status is Status.PENDING and instance.wake_at is not None:
            dues.append(instance.wake_at)  # a deferred start (apply_async(countdown=...))
            continue
        decode: Callable[[str], Any] = durable.codec(instance.serializer).loads
        for event in events:
            if event.state.is_final:
                continue
            if event.kind is Kind.STEP:
                found.busy.append(
                    f"{instance.id}: step {event.name} (seq {event.seq}) {event.state.value}"
                )
            elif event.kind in (Kind.TIMER, Kind.SIGNAL) and event.input is not None:
                due = decode(event.input)[0][0]  # [[fire time or deadline], {}]
                if isinstance(due, datetime):
                    dues.append(due)
    found.next_due = min(dues) if dues else None
    return found
