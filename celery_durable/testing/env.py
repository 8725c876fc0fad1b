"""``DurableTestEnv``: your workflows, run for real in the test process, with time skipping.

No broker, no database server, no Docker: the app you already have is pointed, for the
environment's lifetime, at Celery's in-memory broker and an in-memory SQLite journal, and
a real Celery worker (``celery.contrib.testing.worker.start_worker``, thread pool) runs in
the process. Workflows go through the runtime's own code paths and the app's serializer.
Time is a :class:`~celery_durable.testing.Clock` that the environment moves forward::

    with DurableTestEnv(durable) as env:
        handle = schedule.delay("ann@example.com")
        env.sleep(days=30)            # fires the 30-day timer, waits for the steps after it
        assert handle.result() == ... # skips to each later timer by itself

When the environment stops, the app's configuration, the runtime's store and clock and
the steps' bodies are what they were before.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, TypeVar

from celery import Celery
from celery._state import get_current_task
from celery.contrib.testing.worker import start_worker, test_worker_started

from celery_durable.client import WorkflowHandle
from celery_durable.errors import ConfigurationError
from celery_durable.runtime.durable import RESUME_TASK, Durable, runtime_of
from celery_durable.runtime.settings import TIMERS_IN_STORE
from celery_durable.runtime.steps import DurableStep
from celery_durable.stores.base import Store, open_store
from celery_durable.testing.activity import Messages, survey
from celery_durable.testing.clock import Clock
from celery_durable.testing.mocks import StepMock

logger = logging.getLogger("celery_durable")

R = TypeVar("R")

#: The longest the worker's consumer loop waits for a message before it looks around.
DRAIN_TIMEOUT = 0.05
_UNSET = object()


class DurableTestEnv:
    """A durable test environment around an existing :class:`~celery_durable.Durable`.

    Args:
        durable: the runtime to test, or its Celery app (``Durable(app)`` must exist).
        store: the journal's URL; ``"sqlite://"`` (in memory) by default. A file
            (``f"sqlite:///{tmp_path}/journal.sqlite3"``) or a PostgreSQL URL work too.
        clock: the clock to move; a new :class:`Clock` (the wall clock) by default.
        time_skipping: whether ``handle.result()``, called in the test, skips the clock
            to the next timer whenever the workflows wait on nothing but time (see
            :meth:`result`). Explicit :meth:`sleep` skips time either way.
        skip_retry_delays: deliver Celery retries of steps at once instead of after
            their countdown (``retry_backoff``, ``default_retry_delay``, ``countdown=``).
        tick_interval: seconds between the environment's own ticks (what beat does:
            fire timers that came due in real time); ``None`` for none.
        concurrency: the worker's threads.
        settle_timeout: the default for :meth:`settle`, :meth:`sleep` and
            :meth:`signal`, in real seconds.
        worker_options: more keyword arguments for ``start_worker``.

    Attributes:
        durable: the runtime under test.
        app: its Celery app.
        clock: the environment's clock (``durable.clock`` while it runs).
        time_skipping: see above; may be changed while the environment runs.
        worker: the in-process Celery worker while the environment runs.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`. With pytest,
    the ``durable_env`` fixture of the ``celery_durable`` plugin gives one per test.
    """

    def __init__(
        self,
        durable: Durable | Celery,
        *,
        store: str = "sqlite://",
        clock: Clock | None = None,
        time_skipping: bool = True,
        skip_retry_delays: bool = True,
        tick_interval: float | None = 0.1,
        concurrency: int = 4,
        settle_timeout: float = 30.0,
        worker_options: dict[str, Any] | None = None,
    ) -> None:
        if isinstance(durable, Celery):
            durable = runtime_of(durable)
        if not isinstance(durable, Durable):
            raise TypeError(
                f"DurableTestEnv takes a Durable or the Celery app it was created for, "
                f"not {type(durable).__name__}"
            )
        self.durable = durable
        self.app: Celery = durable.app
        self.clock = clock or Clock()
        self.time_skipping = time_skipping
        self.settle_timeout = settle_timeout
        self._store_url = store
        self._tick_interval = tick_interval
        self._concurrency = concurrency
        self._worker_options = dict(worker_options or {})
        self._messages = Messages(durable, skip_retry_delays=skip_retry_delays)
        self._mocks: list[StepMock] = []
        self._lock = threading.RLock()  # ticks and skips take turns
        self._stack: ExitStack | None = None
        self._store: Store | None = None
        self.worker: Any = None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<DurableTestEnv {self.app.main or self.app!r} {state}>"

    # -- lifecycle ---------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """Whether the environment has started and not stopped."""
        return self._stack is not None

    @property
    def store(self) -> Store:
        """The environment's journal store.

        Raises:
            RuntimeError: the environment is not running.
        """
        if self._store is None:
            raise RuntimeError("the DurableTestEnv is not running: call start() or use `with`")
        return self._store

    def start(self) -> DurableTestEnv:
        """Point the app at the memory broker and a fresh journal, start the worker.

        Returns:
            The environment itself.

        Raises:
            RuntimeError: it is running already.
        """
        if self._stack is not None:
            raise RuntimeError("this DurableTestEnv is running already")
        with ExitStack() as stack:
            stack.enter_context(_configured(self.app, _overrides()))
            stack.callback(_reset_connections, self.app)
            self._store = store = open_store(self._store_url)
            stack.callback(self._close_store)
            # handle.result() polls the store's wait_ended: that is where time skips.
            patched: Any = store
            patched.wait_ended = functools.partial(self._wait_ended, store.wait_ended)
            stack.enter_context(_runtime_swapped(self.durable, self._store, self.clock))
            self._messages.connect()
            stack.callback(self._messages.disconnect)
            stack.callback(self._restore_mocks)
            queues = self._queues()
            stack.callback(self._purge, queues)
            self._purge(queues)
            stack.enter_context(_queue_selection(self.app))
            options: dict[str, Any] = {
                "pool": "threads",
                "concurrency": self._concurrency,
                "perform_ping_check": False,
                "loglevel": "WARNING",
                "shutdown_timeout": 30,
                **self._worker_options,
            }
            if queues != [self.app.conf.task_default_queue]:
                options.setdefault("queues", queues)
            # Before the consumer loop's first turn (in the worker's thread).
            test_worker_started.connect(_short_drains, sender=self.app, weak=False)
            try:
                self.worker = stack.enter_context(start_worker(self.app, **options))
            finally:
                test_worker_started.disconnect(_short_drains, sender=self.app)
            stack.callback(setattr, self, "worker", None)
            if self._tick_interval:
                stack.enter_context(self._ticking(self._tick_interval))
            self._stack = stack.pop_all()
        return self

    def stop(self) -> None:
        """Stop the worker (running steps finish first), restore the steps' bodies, the
        runtime's store and clock and the app's configuration. Stopping twice is
        harmless."""
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()

    def __enter__(self) -> DurableTestEnv:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- time --------------------------------------------------------------------------
    def now(self) -> datetime:
        """What the environment's clock reads (UTC, aware)."""
        return self.clock()

    def sleep(self, delta: timedelta | float | None = None, **parts: float) -> datetime:
        """Let time pass: ``env.sleep(days=30)`` or ``env.sleep(timedelta(hours=1))``.

        Waits until the workflows settle, then moves the clock from timer to timer up to
        the target, firing each at its own time (so a workflow that sleeps again counts
        from when its timer fired) and letting the workflows settle after each, as they
        would have in that much real time.

        Args:
            delta: how long (a ``timedelta`` or seconds); or ``timedelta`` keyword
                arguments (``days=``, ``hours=``, ...).

        Returns:
            The clock's time afterwards.

        Raises:
            TimeoutError: the workflows did not settle within ``settle_timeout`` real
                seconds (a step that never ends, for instance).
        """
        if delta is None:
            step = timedelta(**parts)
        elif isinstance(delta, timedelta):
            step = delta + timedelta(**parts)
        else:
            step = timedelta(seconds=delta, **parts)
        if step < timedelta(0):
            raise ValueError("env.sleep() goes forward only")
        self._check_running()
        self.settle()
        # From when the workflows settled: a timer set by the steps just run counts too.
        target = self.clock() + step
        while True:
            with self._lock:
                due = survey(self.durable, self._messages).next_due
                if due is None or due > target:
                    break
                self._advance_to(due)
            self.settle()
        with self._lock:
            self._advance_to(target)
        self.settle()
        return self.clock()

    def settle(self, timeout: float | None = None) -> None:
        """Wait until nothing moves without time passing: no message in flight, no step
        scheduled or running, no timer due that has not fired.

        Raises:
            TimeoutError: still busy after ``timeout`` real seconds (default
                ``settle_timeout``); the message says with what.
        """
        self._check_running()
        limit = self.settle_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        pause = 0.002
        while True:
            with self._lock:
                found = survey(self.durable, self._messages)
                if not found.busy and not found.due_by(self.clock()):
                    return
                if not found.busy:
                    self.durable.recover()  # a timer came due in real time: fire it
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"the workflows did not settle in {limit} s: "
                    + "; ".join(found.busy or found.blocked or ["a timer came due"])
                )
            time.sleep(pause)
            pause = min(pause * 2, 0.05)

    def skip_time(self) -> bool:
        """If every workflow waits on nothing but time, move the clock to the earliest
        pending timer or signal deadline and fire it.

        Returns:
            Whether time was skipped (or a due timer fired).
        """
        with self._lock:
            found = survey(self.durable, self._messages)
            if found.busy or found.next_due is None:
                return False
            self._advance_to(found.next_due)
            return True

    def result(self, handle: WorkflowHandle[R], timeout: float | None = 30.0) -> R:
        """``handle.result(timeout)`` with time skipping on, whatever ``time_skipping``
        says: whenever the workflows wait on nothing but time, the clock jumps to the
        next timer. ``timeout`` is in real seconds.

        Raises:
            WorkflowFailed: the workflow failed (or was cancelled).
            WorkflowStuck: the workflow is parked.
            TimeoutError: not finished after ``timeout`` real seconds.
        """
        was, self.time_skipping = self.time_skipping, True
        try:
            return handle.result(timeout=timeout)
        finally:
            self.time_skipping = was

    # -- signals, mocks ----------------------------------------------------------------
    def signal(
        self,
        workflow: WorkflowHandle[Any] | str,
        name: str,
        payload: Any = None,
        *,
        settle: bool = True,
    ) -> None:
        """Send the signal ``name`` (``ctx.wait_signal(name)`` gets ``payload``) and, by
        default, wait until the workflows settle.

        Args:
            workflow: a handle or a workflow id.

        Raises:
            WorkflowNotFound: no such instance.
            DurableError: the workflow has finished.
            TimeoutError: the workflows did not settle (see :meth:`settle`).
        """
        self._check_running()
        workflow_id = workflow.id if isinstance(workflow, WorkflowHandle) else workflow
        self.durable.signal(workflow_id, name, payload)
        if settle:
            self.settle()

    def mock_step(
        self,
        step: Any,
        *,
        returns: Any = None,
        raises: BaseException | type[BaseException] | None = None,
        fail_times: int | None = None,
    ) -> StepMock:
        """Replace the body of a ``@durable.step`` task until the environment stops (or
        the returned mock's ``with`` block ends).

        The task still runs on the worker as a Celery task: its outcome is journaled,
        ``autoretry_for`` / ``max_retries`` retry it, a failure reaches the workflow as
        ``StepFailed`` (``.type`` is the exception's class name) and compensations run.

        Args:
            step: the step task (or its name).
            returns: what the step returns on a successful run.
            raises: an exception class or instance its failing runs raise;
                :class:`~celery_durable.testing.MockedStepError` by default.
            fail_times: how many first runs fail; ``None``: every run fails if
                ``raises`` is given, none otherwise.

        Returns:
            The mock; ``mock.calls`` lists each run's arguments and attempt.

        Raises:
            TypeError: ``step`` is not a step of this environment's runtime.
        """
        task = self._step_task(step)
        mock = StepMock(task, returns=returns, raises=raises, fail_times=fail_times)
        mock.install()
        self._mocks.append(mock)
        return mock

    # -- internals ---------------------------------------------------------------------
    def _check_running(self) -> None:
        if self._stack is None:
            raise RuntimeError("the DurableTestEnv is not running: call start() or use `with`")

    def _advance_to(self, due: datetime) -> None:
        """Move the clock to ``due`` (if it is ahead) and tick. Call with the lock held."""
        now = self.clock()
        if due > now:
            self.clock.advance(due - now)
        self.durable.recover()

    def _wait_ended(
        self, wait: Callable[[str, float], Any], instance_id: str, timeout: float
    ) -> Any:
        """The store's ``wait_ended`` (what ``handle.result()`` polls with), skipping time
        first when the caller is the test (not a task) and skipping is on."""
        if self.time_skipping and self._stack is not None and get_current_task() is None:
            self.skip_time()
            timeout = min(timeout, 0.02)
        return wait(instance_id, timeout)

    def _step_task(self, step: Any) -> DurableStep:
        name = step if isinstance(step, str) else getattr(step, "name", None)
        task = self.app.tasks.get(name) if isinstance(name, str) else None
        if not isinstance(task, DurableStep) or task.durable is not self.durable:
            raise TypeError(
                f"mock_step() takes a @durable.step task of this environment's app "
                f"({self.app.main}), not {step!r}"
            )
        return task

    def _restore_mocks(self) -> None:
        while self._mocks:
            self._mocks.pop().restore()

    def _close_store(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            store.close()

    def _queues(self) -> list[str]:
        """The queues the runtime's tasks are routed to: the worker consumes them all."""
        queues = [self.app.conf.task_default_queue]
        names = [RESUME_TASK] + [
            name
            for name, task in self.app.tasks.items()
            if isinstance(task, DurableStep) and task.durable is self.durable
        ]
        for name in names:
            try:
                route = self.app.amqp.router.route({}, name, (), {})
            except Exception:  # a router that needs real arguments: the default queue
                continue
            queue = getattr(route.get("queue"), "name", None)
            if queue and queue not in queues:
                queues.append(queue)
        if self.durable.settings.queue and self.durable.settings.queue not in queues:
            queues.append(self.durable.settings.queue)
        return queues

    def _purge(self, queues: list[str]) -> None:
        """Drop messages left in the (process-wide) memory broker by an earlier run."""
        with self.app.connection_for_write() as connection:
            channel = connection.default_channel
            for queue in queues:
                channel.queue_purge(queue)

    @contextmanager
    def _ticking(self, interval: float) -> Iterator[None]:
        """A background tick, as beat runs one: timers due in real time fire."""
        stopped = threading.Event()

        def tick() -> None:
            while not stopped.wait(interval):
                try:
                    with self._lock:
                        self.durable.recover()
                except Exception:  # logged; the next tick tries again, as beat's does
                    logger.exception("DurableTestEnv: tick failed")

        thread = threading.Thread(target=tick, name="durable-test-tick", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stopped.set()
            thread.join()


def _short_drains(sender: Any = None, consumer: Any = None, **_: Any) -> None:
    """Make the worker's consumer loop come round every 50 ms instead of every 2 s.

    With a transport that cannot wake it (the memory broker), Celery's blocking loop
    waits up to 2 s for a message per turn, and it takes two turns to see it must stop:
    4 s per environment. Only this worker's connection is changed.
    """
    transport = consumer.connection.transport
    drain = transport.drain_events

    def drain_events(connection: Any, timeout: float | None = None) -> Any:
        return drain(connection, timeout=min(timeout or DRAIN_TIMEOUT, DRAIN_TIMEOUT))

    transport.drain_events = drain_events


def _overrides() -> dict[str, Any]:
    return {
        "broker_url": "memory://localhost/",
        "broker_read_url": None,
        "broker_write_url": None,
        # The memory transport polls: 10 ms keeps a step's round trip short.
        "broker_transport_options": {"polling_interval": 0.01},
        "broker_connection_retry_on_startup": True,
        "task_always_eager": False,
        "worker_hijack_root_logger": False,  # pytest's log capture stays in place
        "durable_eta_max": TIMERS_IN_STORE,
    }


@contextmanager
def _configured(app: Celery, overrides: dict[str, Any]) -> Iterator[None]:
    """``app.conf`` with ``overrides`` (and no ``CELERY_BROKER_URL``, which would win over
    ``broker_url``); exactly as before afterwards."""
    conf = app.conf
    saved = {key: conf.changes.get(key, _UNSET) for key in overrides}
    saved_url = os.environ.pop("CELERY_BROKER_URL", None)
    _reset_connections(app)
    conf.update(overrides)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is _UNSET:
                conf.changes.pop(key, None)
            else:
                conf.changes[key] = value
        if saved_url is not None:
            os.environ["CELERY_BROKER_URL"] = saved_url


def _reset_connections(app: Celery) -> None:
    """Forget the app's broker connection pools: the next use takes (kombu's process-wide)
    pool for what ``app.conf`` says now. Nothing is closed: the pools stay kombu's, for
    whoever uses that broker next."""
    app._pool = None
    amqp = app.__dict__.get("amqp")
    if amqp is not None:
        amqp._producer_pool = None


@contextmanager
def _queue_selection(app: Celery) -> Iterator[None]:
    """The worker's ``queues=`` selects the app's queues for good: put them back."""
    queues = app.amqp.queues
    saved = queues._consume_from
    try:
        yield
    finally:
        queues._consume_from = saved


@contextmanager
def _runtime_swapped(durable: Durable, store: Store, clock: Clock) -> Iterator[None]:
    """The runtime with the environment's store and clock, and settings, codecs and
    suspended workflows read afresh; everything as before afterwards."""
    names = ("_store", "_settings", "_codecs", "_live", "clock")
    saved = {name: getattr(durable, name) for name in names}
    durable._store = store
    durable._settings = None  # read again from the overridden app.conf
    durable._codecs = {}
    durable._live = None  # nothing suspended against another journal
    durable.clock = clock
    try:
        if durable.settings.eta_max != TIMERS_IN_STORE:
            raise ConfigurationError("DurableTestEnv: the app's durable settings did not apply")
        yield
    finally:
        for name, value in saved.items():
            setattr(durable, name, value)
