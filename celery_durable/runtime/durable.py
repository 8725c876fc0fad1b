"""``Durable(app)``: workflows and steps on an existing Celery app.

This is the only layer that imports celery. It registers one orchestrator task,
``celery_durable.resume``, and turns ``@durable.step`` functions into real Celery tasks.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import os
import threading
import uuid
import weakref
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, ParamSpec, TypeVar, overload

from celery import Celery, Task
from celery.signals import worker_ready, worker_shutdown

from celery_durable.client import (
    WorkflowHandle,
    WorkflowInfo,
    cancel,
    retry,
    send_signal,
    terminate,
    utcnow,
)
from celery_durable.engine.commands import ScheduleStep
from celery_durable.engine.journal import Instance, Status
from celery_durable.errors import (
    ConfigurationError,
    SerializationError,
    StoreError,
    WorkflowNotFound,
)
from celery_durable.runtime import observe
from celery_durable.runtime.codec import KombuCodec, content_type
from celery_durable.runtime.eager import EagerChain
from celery_durable.runtime.heartbeat import Heartbeats
from celery_durable.runtime.ids import RESUME_TASK as RESUME_TASK
from celery_durable.runtime.live import LiveWorkflows
from celery_durable.runtime.liveness import WorkerBeat, start_worker_beat
from celery_durable.runtime.logs import quiet_task_logs
from celery_durable.runtime.orchestrator import (
    FirstPass,
    Loaded,
    StepOutcome,
    advance,
    first_pass,
)
from celery_durable.runtime.recovery import HEARTBEAT_MISSES, recover
from celery_durable.runtime.settings import Settings, whole_second_delays, without_held_etas
from celery_durable.runtime.steps import DurableStep, step_task_id
from celery_durable.runtime.task_steps import PlainTaskSteps
from celery_durable.runtime.unsent import broker_errors, resume_unsent, step_unsent
from celery_durable.runtime.workflow import Workflow as Workflow
from celery_durable.runtime.workflow import WorkflowFunction
from celery_durable.stores.base import Store, open_store
from celery_durable.telemetry.metrics import Metrics, load_metrics
from celery_durable.telemetry.tracing import Tracing, load_tracing
from celery_durable.views import undecoded_info

logger = logging.getLogger("celery_durable")

P = ParamSpec("P")
R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])

TICK_TASK = "celery_durable.tick"
RESUME_HARD_LIMIT_GRACE = 15.0
"""Seconds between a pass's soft time limit (it parks) and its hard one (it is killed)."""
STEP_REQUEST = "celery_durable.runtime.losses:DurableStepRequest"
RESUME_REQUEST = "celery_durable.runtime.losses:ResumeRequest"


class Durable:
    """Durable workflows and steps for a Celery app.

    Args:
        app: the Celery app; its ``durable_*`` settings are read when first needed.
        store: a store object or URL that overrides ``durable_store`` (tests, tools).
        clock: a function returning the current UTC time (``celery_durable.testing``
            supplies a controllable one); the wall clock by default.

    Example::

        app = Celery("bank", broker="redis://localhost:6379/0")
        durable = Durable(app)

        @durable.step
        def charge(account: str, amount: Decimal) -> str: ...

        @durable.workflow
        async def checkout(ctx, account: str, amount: Decimal) -> str:
            return await ctx.step(charge, account, amount)
    """

    def __init__(
        self,
        app: Celery,
        *,
        store: Store | str | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.app = app
        self.workflows: dict[str, Workflow[Any, Any]] = {}
        self._store_arg = store
        self._store: Store | None = None if store is None or isinstance(store, str) else store
        self._settings: Settings | None = None
        self._codecs: dict[str, KombuCodec] = {}
        self.clock: Callable[[], datetime] = clock or utcnow
        """The runtime's time source; tests may swap in ``celery_durable.testing.Clock``."""
        self.heartbeats = Heartbeats(self)
        self._plain_tasks = PlainTaskSteps(self)  # existing tasks as steps (signals)
        self._live: LiveWorkflows | None = None
        self._lock = threading.Lock()
        self._resume_task = self._register_resume_task()
        self._tick_task = self._register_tick_task()
        quiet_task_logs(TICK_TASK)  # the tick logs what it did, not Celery's two lines
        observe.tag_task_logs()  # workflow id, run and seq on every library log record
        self._telemetry: tuple[int, Tracing | None, Metrics | None] | None = None
        # A `celery worker` main process beats the step messages it holds (liveness.py).
        self._worker_beat: WorkerBeat | None = None
        worker_ready.connect(self._start_worker_beat, weak=False)
        worker_shutdown.connect(self._stop_worker_beat, weak=False)
        if app.configured:
            self._schedule_tick(app)
        # (Again) whenever the app's configuration is loaded: beat reads beat_schedule.
        app.on_after_configure.connect(self._schedule_tick, weak=False)
        _RUNTIMES[app] = weakref.ref(self)

    # -- configuration ---------------------------------------------------------------
    @property
    def settings(self) -> Settings:
        """The ``durable_*`` settings, read from ``app.conf`` on first use."""
        if self._settings is None:
            self._settings = without_held_etas(self.app, Settings.from_conf(self.app.conf))
        return self._settings

    @property
    def tracing(self) -> Tracing | None:
        """The OpenTelemetry hooks (``durable_tracing``), or ``None`` when tracing is off.
        Decided once per process, on first use (set the tracer provider before that)."""
        return self._observers()[1]

    @property
    def metrics(self) -> Metrics | None:
        """The Prometheus hooks (``durable_metrics``), or ``None`` when metrics are off."""
        return self._observers()[2]

    def _observers(self) -> tuple[int, Tracing | None, Metrics | None]:
        observers = self._telemetry
        pid = os.getpid()
        if observers is None or observers[0] != pid:
            # Per process: a prefork child sets its tracer provider after the fork.
            settings = self.settings
            observers = (pid, load_tracing(settings.tracing), load_metrics(settings.metrics))
            self._telemetry = observers
        return observers

    @property
    def store(self) -> Store:
        """The journal store, opened on first use."""
        if self._store is None:
            with self._lock:
                if self._store is None:
                    url = self._store_arg if isinstance(self._store_arg, str) else None
                    self._store = open_store(url or self.settings.store)
        return self._store

    @property
    def live(self) -> LiveWorkflows:
        """This process's suspended workflows (sticky execution; ``durable_live_cache``)."""
        if self._live is None:
            with self._lock:
                if self._live is None:
                    self._live = LiveWorkflows(self.settings.live_cache)
        return self._live

    def codec(self, name: str | None = None) -> KombuCodec:
        """The payload codec called ``name``; the configured ``durable_serializer`` by default.

        Raises:
            SerializationError: ``name`` is not in ``durable_accept_content``: payloads a
                journal row says were encoded with it are never decoded (a row must not
                choose its decoder, e.g. pickle in a JSON-only app).
        """
        name = name or self.settings.serializer
        codec = self._codecs.get(name)
        if codec is None:
            accepted = self.settings.accept_content
            try:
                accepts = content_type(name) in {content_type(a) for a in accepted}
            except ConfigurationError:
                accepts = False  # a name kombu does not know is not accepted either
            if not accepts:
                raise SerializationError(
                    f"payloads encoded with the {name!r} serializer are not accepted by this "
                    f"app (durable_accept_content: {list(accepted)!r}) and are not decoded; "
                    f"if the store's data is trusted, add {name!r} to "
                    "app.conf.durable_accept_content"
                )
            codec = self._codecs[name] = KombuCodec(name)
        return codec

    def now(self) -> datetime:
        """The current time (UTC, aware) from this runtime's clock."""
        return self.clock()

    @property
    def eta_max(self) -> timedelta:
        """``durable_eta_max``: the longest delay sent to the broker as a message ETA."""
        return timedelta(seconds=self.settings.eta_max)

    @property
    def redrive_after(self) -> timedelta:
        """``durable_step_timeout``: how long a sent message may wait before it is
        presumed lost and sent again."""
        return timedelta(seconds=self.settings.step_timeout)

    @property
    def silence_limit(self) -> timedelta:
        """How long a started step may go without a sign of life before its worker is
        presumed dead: ``durable_heartbeat_interval`` x the misses allowed."""
        return timedelta(seconds=self.settings.heartbeat_interval * HEARTBEAT_MISSES)

    def redrive_at(self) -> datetime:
        """When an instance whose message was just sent must be looked at if it is lost."""
        return self.now() + self.redrive_after

    def recover(self) -> int:
        """Do what the tick does, now: fire due timers and re-drive every instance whose
        progress message is overdue (lost, or its worker died).

        Returns:
            How many instances were sent a resume message.
        """
        return recover(self)

    def _start_worker_beat(self, sender: Any = None, **_: Any) -> None:
        if self._worker_beat is None:
            self._worker_beat = start_worker_beat(self, sender)

    def _stop_worker_beat(self, sender: Any = None, **_: Any) -> None:
        beat, self._worker_beat = self._worker_beat, None
        if beat is not None:
            beat.stop()

    # -- decorators ------------------------------------------------------------------
    @overload
    def step(self, fn: F, /) -> F: ...
    @overload
    def step(self, /, **options: Any) -> Callable[[F], F]: ...
    def step(self, fn: Any = None, /, **options: Any) -> Any:
        """Declare a step: a real Celery task whose outcome the workflow journals.

        Takes any ``app.task`` option (``name``, ``queue``, ``autoretry_for``,
        ``retry_backoff``, ``max_retries``, ``rate_limit``, ...). ``acks_late`` and
        ``reject_on_worker_lost`` are on by default so a killed worker's step runs again,
        and ``ignore_result`` is on (the journal keeps results). Inside the step,
        :func:`celery_durable.current_step` gives its idempotency key.

        ``transactional=True``: an exactly-once database step. Its function takes a
        SQLAlchemy ``Connection`` to the store's database first (callers do not pass it);
        its writes there and its journaled outcome commit in one transaction, so a crash
        can never keep one without the other. A failure rolls its writes back; Celery's
        retries run outside the transaction. Keep it short: the instance (on SQLite, the
        whole database) waits for it. ``transactional="django"``: the same with Django's
        ORM, in ``transaction.atomic()`` on the ``default`` database (the journal's).

        Usable bare (``@durable.step``) or with options (``@durable.step(name="Pay")``).
        """

        def decorate(func: Any) -> Any:
            if inspect.iscoroutinefunction(func):
                raise TypeError(
                    f"@durable.step needs a plain def function, and {func.__qualname__} is "
                    "async def; Celery tasks are synchronous (workflows are the async part)"
                )
            # Not shared: the task belongs to this app's Durable, not to every app.
            options.setdefault("shared", False)
            if options.get("transactional") is True:
                # Its function takes the transaction's connection first, which callers
                # do not pass: Celery's argument check would count it.
                options.setdefault("typing", False)
            options.setdefault("Request", STEP_REQUEST)
            return self.app.task(base=DurableStep, durable=self, **options)(func)

        return decorate(fn) if fn is not None else decorate

    @overload
    def workflow(self, fn: WorkflowFunction[P, R], /) -> Workflow[P, R]: ...
    @overload
    def workflow(
        self,
        /,
        *,
        name: str | None = None,
        failure_exceptions: tuple[type[BaseException], ...] = (),
    ) -> Callable[[WorkflowFunction[P, R]], Workflow[P, R]]: ...
    def workflow(
        self,
        fn: Any = None,
        /,
        *,
        name: str | None = None,
        failure_exceptions: tuple[type[BaseException], ...] = (),
    ) -> Any:
        """Declare a workflow: an ``async def`` function taking ``ctx`` first.

        An exception that escapes the workflow *fails* it (status ``failed``, for good)
        when it is a journaled outcome (``StepFailed``, ``SignalTimeout``, a failed
        child) or an instance of a type in ``failure_exceptions``. Any other exception is
        taken for a bug: the instance is parked as ``stuck`` with the traceback (logged
        at ERROR with the workflow id), nothing of that pass is journaled, and
        ``durable.retry(id)`` (or ``celery -A app durable retry ID``) resumes it with the
        code deployed by then, without running journaled steps again.

        Args:
            name: the stable name the journal records; defaults to
                ``module.function`` (as Celery names tasks). Keep it when moving code.
            failure_exceptions: exception types (subclasses included) that are the
                workflow's business failures, e.g. ``(InsufficientFunds,)``.

        Raises:
            TypeError: the function is not ``async def``.
            ConfigurationError: another function is registered under that name.
        """

        def decorate(func: WorkflowFunction[P, R]) -> Workflow[P, R]:
            if not inspect.iscoroutinefunction(func):
                raise TypeError(
                    f"@durable.workflow needs an async def function taking ctx first; "
                    f"{getattr(func, '__qualname__', func)!r} is not one"
                )
            wf_name = name or self.app.gen_task_name(func.__name__, func.__module__)
            existing = self.workflows.get(wf_name)
            if existing is not None and existing.fn.__qualname__ != func.__qualname__:
                raise ConfigurationError(
                    f"workflow name {wf_name!r} is taken by {existing.fn.__qualname__}; "
                    "give one of them another name=..."
                )
            if not isinstance(failure_exceptions, tuple) or not all(
                isinstance(t, type) and issubclass(t, BaseException) for t in failure_exceptions
            ):
                raise TypeError(
                    "@durable.workflow(failure_exceptions=...) takes a tuple of exception "
                    f"classes, not {failure_exceptions!r}"
                )
            workflow = Workflow(self, func, wf_name, failure_exceptions)
            self.workflows[wf_name] = workflow
            return workflow

        return decorate(fn) if fn is not None else decorate

    # -- queries ---------------------------------------------------------------------
    def handle(self, workflow_id: str) -> WorkflowHandle[Any]:
        """A handle on an existing instance (no store access until it is used)."""
        return WorkflowHandle(self, workflow_id)

    def list(
        self,
        *,
        status: Status | str | None = None,
        workflow: str | None = None,
        limit: int = 100,
        version: str | None = None,
    ) -> list[WorkflowInfo]:
        """Workflow instances, newest first, filtered by status, workflow name and the code
        version their run started on (``version``), with their arguments, result and
        custom status decoded (as ``history()`` does).

        An instance whose payloads cannot be decoded here (a serializer outside
        ``durable_accept_content``, or unreadable data) is listed all the same, with empty
        arguments and ``note`` saying why: one foreign row never hides the others.
        """
        instances = self.store.list(
            status=Status(status) if status is not None else None,
            workflow=workflow,
            limit=limit,
            code_version=version,
        )
        listed = []
        for instance in instances:
            try:
                listed.append(WorkflowInfo.from_instance(instance, self.codec(instance.serializer)))
            except (TypeError, ValueError) as exc:  # SerializationError is a TypeError
                listed.append(undecoded_info(instance, str(exc)))
        return listed

    def signal(self, workflow_id: str, name: str, payload: Any = None) -> None:
        """Send the signal ``name`` to a workflow (``ctx.wait_signal(name)`` receives
        ``payload``). Works from any process that has the store and the broker, such as a
        web request; see :func:`celery_durable.client.send_signal`.

        Raises:
            WorkflowNotFound: no such instance.
            DurableError: the workflow has finished.
            SerializationError: the payload cannot be encoded; nothing is stored.
        """
        send_signal(self, workflow_id, name, payload)

    def cancel(self, workflow_id: str) -> bool:
        """Cancel a workflow (compensations run); see :func:`celery_durable.client.cancel`."""
        return cancel(self, workflow_id)

    def terminate(self, workflow_id: str, reason: str = "terminated") -> bool:
        """Stop a workflow without running more of its code; see
        :func:`celery_durable.client.terminate`."""
        return terminate(self, workflow_id, reason)

    def retry(self, workflow_id: str) -> WorkflowHandle[Any]:
        """Resume a ``stuck`` instance, or rewind a ``failed`` one; see
        :func:`celery_durable.client.retry`.

        Raises:
            WorkflowNotFound: no such instance.
            DurableError: the instance is neither stuck nor failed.
        """
        return retry(self, workflow_id)

    # -- the runtime's moving parts --------------------------------------------------
    def advance(
        self,
        instance_id: str,
        outcome: StepOutcome | None = None,
        journal: Loaded | None = None,
        eager: EagerChain | None = None,
    ) -> None:
        """Run one orchestrator pass for ``instance_id`` (see :mod:`.orchestrator`)."""
        advance(self, instance_id, outcome, journal, eager)

    def resolve_step(self, task: Any) -> str:
        """The task name ``ctx.step`` journals for ``task``: a ``@durable.step`` or any
        Celery task (an existing ``@app.task`` / ``@shared_task`` runs as a step too, see
        :mod:`.task_steps`), or a task's name; rejects anything else."""
        if isinstance(task, str):
            return task
        if isinstance(task, Task):
            return str(task.name)
        raise TypeError(
            f"ctx.step() takes a Celery task (@durable.step, @app.task or @shared_task) "
            f"or a task name, not {type(task).__name__}; for a local function use ctx.run()"
        )

    def send_step(self, instance_id: str, step: ScheduleStep, run: int = 1) -> bool:
        """Publish a committed step of run ``run``; its task id is ``"<instance_id>:<seq>"``
        (``"<instance_id>:<seq>~<run>"`` from the second run on).

        Returns:
            ``False`` if the broker could not be reached: the journal then has the step
            sent again by the first tick the broker takes (:mod:`.unsent`).
        """
        task_id = step_task_id(instance_id, step.seq, run)
        task = self.app.tasks.get(step.name)
        try:
            if task is not None:
                task.apply_async(step.args, step.kwargs, task_id=task_id)
            else:
                self.app.send_task(step.name, step.args, step.kwargs, task_id=task_id)
        except self.broker_errors as exc:
            step_unsent(self, instance_id, run, step.seq, step.name, exc)
            return False
        return True

    @functools.cached_property
    def broker_errors(self) -> tuple[type[BaseException], ...]:
        """What a publish raises when the broker cannot be reached."""
        return broker_errors(self.app)

    @functools.cached_property
    def _whole_second_delays(self) -> bool:
        return whole_second_delays(self.app)

    def broker_countdown(self, seconds: float) -> float:
        """``seconds`` as a countdown the broker can carry: rounded up to whole seconds
        where Celery's native delayed delivery carries it (RabbitMQ quorum queues), which
        raises for a fraction below 1 s and would cut one short."""
        if seconds > 0 and self._whole_second_delays:
            return float(math.ceil(seconds))
        return seconds

    def first_pass(self, instance: Instance) -> FirstPass | None:
        """The first orchestrator pass of an instance about to be created, run in this
        process (the caller of ``.delay()``): it is then stored with its first events in
        one statement and its first steps are published from here, instead of after a
        resume message's round trip (see :func:`.orchestrator.first_pass`).

        Returns:
            ``None`` when the pass is left to a worker: ``durable_start_in_caller`` is
            off, the workflow is not registered in this process, or its first pass does
            more than schedule steps and timers.
        """
        if not self.settings.start_in_caller:
            return None
        return first_pass(self, instance)

    def send_resume(
        self, instance_id: str, countdown: float | None = None, producer: Any = None
    ) -> bool:
        """Publish a message that runs the instance's orchestrator on some worker.

        Its task id starts with the workflow id (``"<id>:resume:<random>"``), so the
        worker's log lines about it name the workflow; it carries the pass's time limits
        (``durable_resume_time_limit``). ``producer``: a kombu producer to publish
        with (the tick passes one for its whole batch).

        Returns:
            ``False`` if the broker could not be reached: the instance's ``wake_at`` is
            then pulled to when the message was due, for the tick (:mod:`.unsent`).
        """
        limit = self.settings.resume_time_limit
        options: dict[str, Any] = {
            "task_id": f"{instance_id}:resume:{uuid.uuid4().hex[:12]}",
            "soft_time_limit": limit,
            "time_limit": limit + RESUME_HARD_LIMIT_GRACE,
        }
        if self.settings.queue:
            options["queue"] = self.settings.queue
        if countdown:
            options["countdown"] = self.broker_countdown(countdown)
        if producer is not None:
            options["producer"] = producer  # the tick's, shared by its whole batch
        try:
            self._resume_task.apply_async((instance_id,), **options)
        except self.broker_errors as exc:
            resume_unsent(self, instance_id, countdown, exc)
            return False
        return True

    def _register_tick_task(self) -> Any:
        durable = self

        def tick() -> int:
            try:
                sent = durable.recover()
            except StoreError as exc:
                # A failed claim claims nothing; the next tick tries again. One line, not a
                # traceback every tick interval for as long as the database is down.
                logger.warning("tick: store unavailable (%s); the next tick tries again", exc)
                return 0
            if sent:
                logger.info("tick: resumed %d instance%s", sent, "" if sent == 1 else "s")
            else:
                logger.debug("tick: nothing due")
            return sent

        register: Any = self.app.task(name=TICK_TASK, ignore_result=True, shared=False)
        return register(tick)

    def _schedule_tick(self, sender: Celery, **_: Any) -> None:
        """Put the tick in beat's schedule (``celery -A app beat`` or ``worker -B``)."""
        interval = Settings.from_conf(sender.conf).tick_interval
        sender.add_periodic_task(
            interval,
            sender.signature(TICK_TASK),
            name=TICK_TASK,
            # A tick that waited longer than the next one is useless: drop it.
            expires=interval,
            **({"queue": self.settings.queue} if self.settings.queue else {}),
        )

    def _register_resume_task(self) -> Any:
        durable = self

        def resume(task: Task, instance_id: str) -> None:
            retries = int(task.request.retries or 0)
            try:
                # A workflow this worker does not know is noted on the instance and left
                # to the tick (one resume at a time), not retried here: see advance().
                durable.advance(instance_id)
            except StoreError as exc:
                logger.warning("workflow %s: store unavailable (%s); retrying", instance_id, exc)
                raise task.retry(exc=exc, countdown=min(2**retries, 60)) from exc
            except WorkflowNotFound:
                logger.error("resume: no workflow instance %s in the store; dropped", instance_id)

        register: Any = self.app.task(
            name=RESUME_TASK,
            bind=True,
            acks_late=True,
            reject_on_worker_lost=True,
            ignore_result=True,
            max_retries=None,  # a store that is down for long is waited for
            shared=False,
            durable=self,
            Request=RESUME_REQUEST,
        )
        return register(resume)


# Weak both ways: the app keeps its Durable alive (through the resume task), not this.
_RUNTIMES: weakref.WeakKeyDictionary[Celery, weakref.ref[Durable]] = weakref.WeakKeyDictionary()


def runtime_of(app: Celery) -> Durable:
    """The :class:`Durable` created for ``app`` (the latest one, if several were).

    Raises:
        ConfigurationError: no ``Durable(app)`` exists for this app.
    """
    ref = _RUNTIMES.get(app)
    runtime = ref() if ref is not None else None
    if runtime is None:
        raise ConfigurationError(
            f"app {getattr(app, 'main', None) or app!r} has no Durable(app); "
            "create one in the app module (durable = Durable(app))"
        )
    return runtime
