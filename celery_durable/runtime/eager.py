"""Eager next step: a run of quick steps in one task, without a broker round trip each.

When a step's commit schedules exactly one next step, and that step would come back to
this same worker queue anyway, the commit journals it as *started* (attempt 1, its
silence counted from that commit, as if a worker had just marked it) and the task that
committed runs it right after, in the same process, through Celery's own task tracer
(``task_prerun``/``task_postrun``/``task_success``/``task_failure`` fire, ``retry()``
and ``autoretry_for`` publish the retry as usual). The journal commit still comes first:
a process that dies before or while running the handed step leaves a started step that
falls silent, and recovery sends it again within ``durable_heartbeat_interval`` x 5 + a
tick, as for any step whose worker died.

Bounds (settings): at most ``durable_eager_steps`` steps in a row per task, and none
once the task has run ``durable_eager_seconds``; never a step with a ``rate_limit`` or a
time limit, nor from a task that has one (Celery's limits are per message); never a step
routed to another queue (Celery routing decides where everything else runs); never
several steps at once (a ``gather`` is published, so other workers share it).
"""

from __future__ import annotations

import contextvars
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celery.app.trace import trace_task

from celery_durable.engine.commands import ScheduleStep
from celery_durable.engine.journal import Event, Instance

if TYPE_CHECKING:
    from celery import Task

    from celery_durable.runtime.durable import Durable

logger = logging.getLogger("celery_durable")

_current: contextvars.ContextVar[EagerChain | None] = contextvars.ContextVar(
    "celery_durable_eager", default=None
)


@dataclass(frozen=True)
class Handoff:
    """A step journaled as started by the last commit, for this task to run next.

    Attributes:
        task_id: its deterministic task id.
        step: what to run.
        journal: the instance and journal as that commit left them.
    """

    task_id: str
    step: ScheduleStep
    journal: tuple[Instance, list[Event]]


def _has_time_limit(app: Any, task: Task) -> bool:
    return any(
        value is not None
        for value in (
            getattr(task, "time_limit", None),
            getattr(task, "soft_time_limit", None),
            app.conf.task_time_limit,
            app.conf.task_soft_time_limit,
        )
    )


def _queue_of(app: Any, task: Task, args: Any, kwargs: Any) -> str | None:
    """The queue Celery's router sends ``task`` with these arguments to."""
    options = app.amqp.router.route(
        dict(task._get_exec_options()), task.name, args, kwargs, task_type=task
    )
    queue = options.get("queue")
    name = getattr(queue, "name", queue)
    return str(name) if name is not None else None


class EagerChain:
    """The steps one step task runs in a row after its own (see the module docstring)."""

    def __init__(self, durable: Durable, task: Task) -> None:
        settings = durable.settings
        self.durable = durable
        self.task = task
        self.request = task.request
        self._queue: str | bool | None = False
        """The queue this task's message came through, once asked (``False``: not yet;
        ``None``: unusual route, nothing runs in a row)."""
        self.left = settings.eager_steps
        self.deadline = time.monotonic() + settings.eager_seconds
        self.next: Handoff | None = None
        self._running: Handoff | None = None

    @classmethod
    def current(cls) -> EagerChain | None:
        """The chain of the step task running in this thread, if any."""
        return _current.get()

    @classmethod
    def begin(cls, durable: Durable, task: Task) -> EagerChain | None:
        """A chain for the step task now running from a message, or ``None`` if its steps
        may not run further steps (turned off, time limits, an unusual route)."""
        request = task.request
        if durable.settings.eager_steps <= 0 or request.is_eager or request.called_directly:
            return None
        if _has_time_limit(durable.app, task) or any(request.timelimit or ()):
            return None
        return cls(durable, task)

    @property
    def queue(self) -> str | None:
        """The queue of this task's message (routed as Celery routes it), or ``None`` if it
        came another way: then no step runs in a row. Worked out on first use, after the
        task's own step ran (a workflow that ends there never pays for it)."""
        if self._queue is False:
            request = self.request
            queue = _queue_of(self.durable.app, self.task, request.args, request.kwargs)
            routed = (request.delivery_info or {}).get("routing_key")
            # Sent elsewhere than its route: do not guess where its steps belong.
            self._queue = None if routed and routed != queue else queue
        return self._queue if isinstance(self._queue, str) else None

    def accepts(self, step: ScheduleStep) -> ScheduleStep | None:
        """``step`` if this task may run it next, else ``None`` (it is published)."""
        from celery_durable.runtime.steps import DurableStep  # (import cycle)

        if self.next is not None or self.left <= 0 or time.monotonic() >= self.deadline:
            return None
        app = self.durable.app
        task = app.tasks.get(step.name)
        if not isinstance(task, DurableStep) or task.durable is not self.durable:
            return None
        if task.rate_limit or _has_time_limit(app, task):
            return None
        queue = self.queue
        if queue is None or _queue_of(app, task, step.args, step.kwargs) != queue:
            return None
        return step

    def hand(
        self,
        task_id: str,
        step: ScheduleStep,
        journal: tuple[Instance, list[Event]] | None,
    ) -> None:
        """Run ``step`` next (its commit marked it started); ``journal`` as it left it."""
        assert journal is not None, "a handed step's commit is always modelled"
        self.next = Handoff(task_id, step, journal)
        self.left -= 1

    def claim(self, task_id: str) -> Handoff | None:
        """The handoff of the step task ``task_id`` now running in this chain, if it is one."""
        running = self._running
        return running if running is not None and running.task_id == task_id else None

    def run_handed(self) -> None:
        """Run the handed steps one after the other (each may hand the next)."""
        token = _current.set(self)
        try:
            while self.next is not None:
                handoff, self.next = self.next, None
                self._running = handoff
                try:
                    self._trace(handoff)
                except Exception:
                    # Journaled as started: recovery sends it again once it is silent.
                    logger.exception("step %s: could not run it here", handoff.task_id)
                finally:
                    self._running = None
        finally:
            _current.reset(token)

    def _trace(self, handoff: Handoff) -> None:
        app = self.durable.app
        task = app.tasks[handoff.step.name]
        parent = self.request
        delivery_info = {
            key: value
            for key, value in (parent.delivery_info or {}).items()
            if key != "redelivered"
        }
        request = {
            "id": handoff.task_id,
            "task": task.name,
            "root_id": parent.root_id or parent.id,
            "parent_id": parent.id,
            "delivery_info": delivery_info,
            "hostname": parent.hostname,
            "reply_to": parent.reply_to,
            "correlation_id": handoff.task_id,
            "origin": parent.origin,
            "retries": 0,
            "is_eager": False,
            "headers": {},
        }
        trace_task(
            task,
            handoff.task_id,
            list(handoff.step.args),
            dict(handoff.step.kwargs),
            request,
            app=app,
            hostname=parent.hostname,
        )
