"""The workflow context: what workflow code awaits, and its deterministic helpers.

Every ``ctx`` command (``ctx.step``, ``ctx.run``, ``ctx.sleep``, ``ctx.wait_signal``,
``ctx.child``, and their combinations
``ctx.gather``, ``ctx.first``) is an awaitable (:mod:`celery_durable.engine.awaitables`)
whose ``__await__`` yields it to the replay driver (:mod:`celery_durable.engine.replay`),
which gives it its ``seq``, matches it against the journal and sends back its outcome.
Workflow code therefore never touches an event loop: it is an ordinary coroutine driven
with ``send()`` and ``throw()``.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import math
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, NoReturn, ParamSpec, TypeVar

from celery_durable.engine import patches
from celery_durable.engine.awaitables import (
    PARENT_CLOSE_POLICIES,
    _ChildCommand,
    _ContinueAsNew,
    _Cursor,
    _encode_call,
    _encode_fire_time,
    _First,
    _function_name,
    _Gather,
    _RunCommand,
    _SignalCommand,
    _StepCommand,
    _TimerCommand,
)
from celery_durable.engine.journal import Instance
from celery_durable.engine.saga import Saga
from celery_durable.engine.serialization import Codec
from celery_durable.errors import SerializationError, SignalTimeout, StepFailed

P = ParamSpec("P")
T = TypeVar("T")

if TYPE_CHECKING:
    _LoggerAdapter = logging.LoggerAdapter[logging.Logger]
else:  # LoggerAdapter is subscriptable at runtime only from Python 3.11
    _LoggerAdapter = logging.LoggerAdapter


class _ReplayQuietLogger(_LoggerAdapter):
    """Drops records while the workflow re-runs code that already ran (and logged)."""

    def __init__(self, logger: logging.Logger, context: WorkflowContext) -> None:
        super().__init__(
            logger, {"workflow_id": context.workflow_id, "workflow_name": context.workflow_name}
        )
        self._context = context

    def isEnabledFor(self, level: int) -> bool:  # every LoggerAdapter method asks this first
        return not self._context.is_replaying and super().isEnabledFor(level)


class WorkflowContext:
    """What a workflow receives as its first argument, ``ctx``.

    Workflow code must be deterministic: each pass of the orchestrator re-runs it from
    the start and feeds it the journaled outcomes, so it may only await ``ctx`` commands,
    and must take time, randomness and other changing values from ``ctx`` (``ctx.now()``,
    ``ctx.uuid4()``, ``ctx.run(...)``).

    The engine builds one context per pass; workflow code never builds one.
    """

    def __init__(
        self,
        instance: Instance,
        cursor: _Cursor,
        *,
        codec: Codec,
        resolve_step: Callable[[Any], str],
        failure_exceptions: tuple[type[BaseException], ...] = (),
    ) -> None:
        self._failure_exceptions = failure_exceptions
        self._instance = instance
        self._cursor = cursor
        self._codec = codec
        self._resolve_step = resolve_step
        self._uuid_count = 0
        self._logger: _ReplayQuietLogger | None = None

    @property
    def workflow_id(self) -> str:
        """The id of this workflow instance."""
        return self._instance.id

    def _fails_workflow(self, exc: BaseException) -> bool:
        """True if ``exc`` escaping the workflow fails it (a journaled outcome such as
        ``StepFailed`` or ``SignalTimeout``, or a type in ``failure_exceptions``); any
        other exception is a bug that parks the instance as ``stuck``."""
        return isinstance(exc, (StepFailed, SignalTimeout, *self._failure_exceptions))

    @property
    def run_number(self) -> int:
        """This run's number: 1, then one more after each ``continue_as_new``."""
        return self._instance.run

    @property
    def workflow_name(self) -> str:
        """The registered name of this workflow."""
        return self._instance.workflow

    @property
    def is_replaying(self) -> bool:
        """True while the code being run already ran in an earlier pass.

        That is while the workflow has not yet reached the end of its journal (and while
        the engine closes a suspended workflow, whose ``finally`` blocks then run). Use it
        to skip side effects that must happen once, such as metrics; :attr:`logger`
        already does.
        """
        return self._cursor.discarding or self._cursor.in_journal

    @property
    def logger(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger (named after the workflow) that stays quiet while :attr:`is_replaying`.

        Its records carry ``workflow_id`` and ``workflow_name`` as extra attributes.
        """
        if self._logger is None:
            name = self._instance.workflow or "celery_durable.workflow"
            self._logger = _ReplayQuietLogger(logging.getLogger(name), self)
        return self._logger

    def now(self) -> datetime:
        """The current time (UTC), the same on every replay.

        The time a workflow sees at a given point is the time of the orchestrator pass
        that first reached that point: if the journal holds an event at the current
        position, that event's ``scheduled_at``; otherwise the time of this pass (which
        will become the ``scheduled_at`` of the next command issued).
        """
        if self._cursor.in_journal:
            return self._cursor.journal[self._cursor.seq].scheduled_at
        return self._cursor.now

    def sleep(self, delay: timedelta | float, /) -> Awaitable[None]:
        """Wait durably for ``delay``: minutes or a year, across restarts and deploys.

        The fire time is ``ctx.now() + delay``, computed when the timer is first issued
        and journaled; no worker holds anything while the workflow waits. The timer
        never fires early: a pass that runs before the fire time just waits again.
        Once set, a timer keeps its journaled fire time: changing ``delay`` in the code
        does not move a timer an instance has already set (only the timers it sets
        afterwards). Switching between ``sleep`` and :meth:`sleep_until` is not a change
        of the workflow's commands.

        Args:
            delay: a ``datetime.timedelta``, or a number of seconds (``int`` or
                ``float``); zero fires at once (the workflow goes on in the same pass).

        Returns:
            An awaitable giving ``None`` once the fire time has come. After it,
            ``ctx.now()`` is at or past the fire time.

        Raises:
            ValueError: ``delay`` is negative, not finite, or too long to add to a date.
            TypeError: ``delay`` is neither a timedelta nor a number.
        """
        if isinstance(delay, timedelta):
            span = delay
        elif isinstance(delay, (int, float)) and not isinstance(delay, bool):
            if not math.isfinite(delay):
                raise ValueError(f"ctx.sleep() needs a finite delay, got {delay!r}")
            try:
                span = timedelta(seconds=delay)
            except OverflowError:
                raise ValueError(f"ctx.sleep() delay {delay!r} seconds is too long") from None
        else:
            raise TypeError(
                "ctx.sleep() takes a datetime.timedelta or a number of seconds, got "
                f"{type(delay).__name__!r}; use ctx.sleep_until() for a datetime"
            )
        if span < timedelta(0):
            raise ValueError(f"ctx.sleep() needs a delay >= 0, got {delay!r}")
        try:
            fire_at = self.now() + span
        except OverflowError:
            raise ValueError(f"ctx.sleep() delay {delay!r} is too long") from None
        return self._timer(fire_at)

    def sleep_until(self, when: datetime, /) -> Awaitable[None]:
        """Wait durably until ``when``; a time already past fires at once.

        Like :meth:`sleep` (same journal record, so switching between the two is not a
        change of the workflow's commands): the fire time is journaled when the timer is
        first issued, and a later change of ``when`` in the code does not move a timer
        already set. The timer never fires before ``when``.

        Args:
            when: a timezone-aware datetime, e.g. ``datetime(2025, 1, 1, tzinfo=timezone.utc)``;
                it is journaled in UTC.

        Returns:
            An awaitable giving ``None`` once ``when`` has come (in the same pass if it
            is already past). After it, ``ctx.now()`` is at or past ``when``.

        Raises:
            TypeError: ``when`` is not a datetime, or is naive (no time zone).
        """
        if not isinstance(when, datetime):
            raise TypeError(
                f"ctx.sleep_until() takes a datetime, got {type(when).__name__!r}; "
                "use ctx.sleep() for a delay"
            )
        if when.tzinfo is None or when.utcoffset() is None:
            raise TypeError(
                f"ctx.sleep_until() got the naive datetime {when.isoformat()}; pass an aware "
                "UTC datetime, e.g. datetime(..., tzinfo=timezone.utc)"
            )
        return self._timer(when.astimezone(timezone.utc))

    def _timer(self, fire_at: datetime) -> _TimerCommand:
        return _TimerCommand(self, _encode_fire_time(self._codec, fire_at), fire_at)

    def wait_signal(self, name: str, /, timeout: timedelta | float | None = None) -> Awaitable[Any]:
        """Wait durably for the signal ``name`` and return its payload.

        Signals are sent from anywhere that can reach the store and the broker (a web
        request, another workflow, a script) with ``durable.signal(workflow_id, name,
        payload)`` or ``handle.signal(name, payload)``. They are kept in the instance's
        inbox until a wait of that name takes them, so a signal sent before the workflow
        gets to its wait is not lost: the wait takes it as soon as it is issued.

        Each signal is received exactly once: by the first wait of its name that the
        workflow issues (or already waits on) after it arrived. Signals of one name go
        to the waits of that name in arrival order (the oldest to the earliest wait);
        signals of other names stay in the inbox for their own waits. In a
        :meth:`first` race, a wait that loses takes nothing, not even a signal that
        comes later; such a signal stays for the next wait of its name.

        The wait is journaled under the signal's name, with its deadline: waiting on
        another signal at that point of the workflow is a change of its commands. While
        it waits, no worker holds anything.

        Args:
            name: the signal's name, e.g. ``"verified"``.
            timeout: how long to wait: a ``datetime.timedelta`` or a number of seconds,
                more than zero; ``None`` (the default) waits forever. The deadline,
                ``ctx.now() + timeout``, is computed and journaled when the wait is first
                issued (later changes of ``timeout`` in the code do not move it). A signal
                that is in the inbox when the pass after the deadline runs is still
                received; otherwise the wait times out, never before its deadline.

        Returns:
            An awaitable giving the signal's payload, decoded by the instance's serializer
            (``None`` when it was sent without one).

        Raises:
            SignalTimeout: (when awaited) the deadline passed with no signal; the timeout
                is journaled, and a replay raises it again. Catch it to clean up.
            TypeError: ``name`` is not a string, or ``timeout`` is neither ``None``, a
                timedelta nor a number.
            ValueError: ``name`` is empty, or ``timeout`` is not more than zero, not
                finite, or too long to add to a date.

        Example::

            try:
                payload = await ctx.wait_signal("verified", timeout=timedelta(days=3))
            except SignalTimeout:
                await ctx.step(delete_user, user_id)
                raise

        or, as a race: ``await ctx.first(ctx.wait_signal("verified"), ctx.sleep(days))``.
        """
        if not isinstance(name, str):
            raise TypeError(
                f"ctx.wait_signal() takes the signal's name as a str, got {type(name).__name__!r}"
            )
        if not name:
            raise ValueError("ctx.wait_signal() needs a non-empty signal name")
        deadline = None if timeout is None else self._deadline(timeout)
        encoded = _encode_fire_time(self._codec, deadline, "a signal wait's deadline")
        return _SignalCommand(self, name, encoded)

    def _deadline(self, timeout: timedelta | float) -> datetime:
        """``ctx.now() + timeout``, for a timeout a caller of ctx.wait_signal() gave."""
        if isinstance(timeout, timedelta):
            span = timeout
        elif isinstance(timeout, (int, float)) and not isinstance(timeout, bool):
            if not math.isfinite(timeout):
                raise ValueError(
                    f"ctx.wait_signal() needs a finite timeout (or None to wait forever), "
                    f"got {timeout!r}"
                )
            try:
                span = timedelta(seconds=timeout)
            except OverflowError:
                raise ValueError(
                    f"ctx.wait_signal() timeout {timeout!r} seconds is too long"
                ) from None
        else:
            raise TypeError(
                "ctx.wait_signal() takes a timeout as a datetime.timedelta, a number of "
                f"seconds or None, got {type(timeout).__name__!r}"
            )
        if span <= timedelta(0):
            raise ValueError(f"ctx.wait_signal() needs a timeout > 0, got {timeout!r}")
        try:
            return self.now() + span
        except OverflowError:
            raise ValueError(f"ctx.wait_signal() timeout {timeout!r} is too long") from None

    def uuid4(self) -> uuid.UUID:
        """A random-looking UUID (version 4), the same on every replay.

        The n-th call in a run of a workflow instance always returns the same value,
        derived from the workflow id, the run number and n, and values are unique across
        calls, runs (``continue_as_new``) and instances. They are NOT secret (anyone
        knowing the workflow id can compute them): use ``await ctx.run(secrets.token_hex)``
        for secrets.
        """
        run = self._instance.run
        prefix = self._instance.id if run == 1 else f"{self._instance.id}\x00run {run}"
        seed = f"{prefix}\x00{self._uuid_count}".encode()
        self._uuid_count += 1
        return uuid.UUID(bytes=hashlib.sha256(seed).digest()[:16], version=4)

    def step(self, task: Any, /, *args: Any, **kwargs: Any) -> Awaitable[Any]:
        """Run a step (a ``@durable.step`` Celery task) once, and return its result.

        The first time, the step is journaled and sent to a worker, and the workflow waits;
        on later passes the journaled result is returned without running it again.

        Args:
            task: the step task, or its registered name.
            *args: positional arguments for the task; they must be serializable.
            **kwargs: keyword arguments for the task; they must be serializable.

        Returns:
            An awaitable giving the step's result, decoded by the instance's serializer
            (so a tuple comes back as a list with JSON).

        Raises:
            StepFailed: (when awaited) the step failed for good; ``.type`` names the
                step's exception class.
            SerializationError: the arguments cannot be encoded; nothing is journaled.
            TypeError: ``task`` is not a step task or a task name.
        """
        name = self._resolve_step(task)
        what = f"step {name!r}"
        encoded = _encode_call(self._codec, what, args, kwargs)
        return _StepCommand(self, name, encoded, tuple(args), dict(kwargs))

    def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Awaitable[T]:
        """Run a small local function inline, once, and journal its result.

        For values that differ between runs (ids, secrets, reading a clock or a file):
        the function runs on the first pass only; replays return the journaled result.
        The first pass also sees the value after a trip through the serializer, exactly
        as replays will.

        Args:
            fn: a plain (not async) function; it is journaled under its qualified name.
            *args: positional arguments for ``fn``; they must be serializable.
            **kwargs: keyword arguments for ``fn``; they must be serializable.

        Returns:
            An awaitable giving ``fn``'s result.

        Raises:
            StepFailed: (when awaited) ``fn`` raised, or returned a value the serializer
                cannot encode; the failure is journaled.
            SerializationError: the arguments cannot be encoded; nothing is journaled.
            TypeError: ``fn`` is an ``async def`` function.
        """
        name = _function_name(fn)
        if inspect.iscoroutinefunction(fn):
            raise TypeError(
                f"ctx.run({name}): ctx.run runs plain functions inline, not async ones; "
                "make it a @durable.step to run async code"
            )
        encoded = _encode_call(self._codec, f"ctx.run({name})", args, kwargs)
        return _RunCommand(self, name, encoded, fn, tuple(args), dict(kwargs), self._codec)

    def child(
        self,
        workflow: Any,
        /,
        *args: Any,
        workflow_id: str | None = None,
        on_parent_close: str = "terminate",
        **kwargs: Any,
    ) -> Awaitable[Any]:
        """Start a child workflow and return its result once it has ended.

        The child is an instance of its own (its own journal, steps and retries), created
        once this pass is committed; the parent waits without holding anything. The call
        is journaled under the child's workflow name, with its id and arguments: on later
        passes the same child is awaited, never started twice. Like other commands it can
        be passed to :meth:`gather` (children run in parallel) and :meth:`first`.

        Args:
            workflow: the child's registered workflow (an object with a ``name``, such as
                the one ``@durable.workflow`` returns), or its registered name.
            *args: positional arguments for the child; they must be serializable.
            workflow_id: the child's workflow id; by default ``"<parent id>:<seq>"``
                (``seq`` being the call's position in the parent's journal; in run
                ``n > 1`` of a parent that continued as new, ``"<parent id>:<seq>~<n>"``),
                the same on every replay. An id that already belongs to another instance
                (another parent's child, a top-level workflow, another workflow or other
                arguments) fails the call with ``StepFailed`` of type
                ``"WorkflowIdConflict"``.
            on_parent_close: what happens to the child if the parent ends (completes,
                fails, is cancelled or terminated, or continues as new) while the child
                still runs: ``"terminate"`` (the default: it ends at once, as
                ``handle.terminate()``), ``"cancel"`` (``handle.cancel()``: its
                compensations run) or ``"abandon"`` (it runs on alone).
            **kwargs: keyword arguments for the child; they must be serializable.

        Returns:
            An awaitable giving the child's result, decoded by the instance's serializer.

        Raises:
            StepFailed: (when awaited) the child failed (``.type`` is the type of its
                failure, e.g. ``"TransferFailed"``) or was cancelled (``.type`` is
                ``"WorkflowCancelled"``).
            SerializationError: the arguments cannot be encoded; nothing is journaled.
            TypeError: ``workflow`` is neither a workflow nor a name, or ``workflow_id``
                is not a string.
            ValueError: ``workflow_id`` is empty, or ``on_parent_close`` is not one of the
                three policies.
        """
        if on_parent_close not in PARENT_CLOSE_POLICIES:
            raise ValueError(
                f"ctx.child() on_parent_close must be one of {', '.join(PARENT_CLOSE_POLICIES)}, "
                f"not {on_parent_close!r}"
            )
        name: Any = workflow if isinstance(workflow, str) else getattr(workflow, "name", None)
        if not isinstance(name, str):
            raise TypeError(
                f"ctx.child() needs a registered workflow or a workflow name, got {workflow!r}"
            )
        if workflow_id is not None:
            if not isinstance(workflow_id, str):
                raise TypeError(
                    f"ctx.child() takes workflow_id as a str, got {type(workflow_id).__name__!r}"
                )
            if not workflow_id:
                raise ValueError("ctx.child() needs a non-empty workflow_id (or None)")
        encoded = _encode_call(self._codec, f"child workflow {name!r}", args, kwargs)
        return _ChildCommand(
            self,
            name,
            encoded,
            tuple(args),
            dict(kwargs),
            workflow_id,
            self._codec,
            on_parent_close,
        )

    def continue_as_new(self, *args: Any, **kwargs: Any) -> NoReturn:
        """End this run and restart the workflow with a fresh journal and new arguments.

        Not awaited: the call does not return. The instance keeps its workflow id and
        starts again from the top, called with ``args`` and ``kwargs``, over an empty
        journal; the commands of the pass that calls it are not journaled. Eternal
        workflows (schedules, polling loops, actors fed by signals) use it to keep their
        journal, and so their replays, bounded: carry the state that matters in the
        arguments. Signals not consumed yet stay in the inbox for the new run.

        It raises a :class:`BaseException` that the engine catches: do not catch it with
        a bare ``except BaseException`` (``except Exception`` and ``ctx.saga()`` blocks
        let it through).

        Args:
            *args: positional arguments of the new run; they must be serializable.
            **kwargs: keyword arguments of the new run; they must be serializable.

        Raises:
            SerializationError: the arguments cannot be encoded (a normal exception,
                raised here; the workflow goes on).

        Example::

            async def ticker(ctx, count):
                await ctx.sleep(timedelta(hours=1))
                await ctx.step(tick, count)
                ctx.continue_as_new(count + 1)
        """
        encoded = _encode_call(self._codec, "ctx.continue_as_new()", args, kwargs)
        raise _ContinueAsNew(encoded)

    def gather(self, *awaitables: Awaitable[Any]) -> Awaitable[list[Any]]:
        """Wait for several commands at once (fan-out / fan-in) and return all their results.

        Each command takes its own place in the journal, in argument order, and all the
        new ones are issued together: the steps among them are sent in the same pass and
        run in parallel; a ``ctx.run`` runs inline as it is issued; timers (and the
        deadlines of signal waits) count down together (the workflow wakes at the earliest
        one still pending); signal waits each take their own signal.

        The gather waits until every command is final, even after one has failed, so that
        every success and every failure is journaled before the workflow goes on.

        Args:
            *awaitables: commands of this ``ctx`` not awaited yet (``ctx.step(...)``,
                ``ctx.sleep(...)``, ``ctx.run(...)``, ``ctx.wait_signal(...)``, ...). None
                may be passed twice.

        Returns:
            An awaitable giving the list of results, in argument order (``None`` for a
            timer, the payload for a signal). With no arguments it gives ``[]`` and
            journals nothing.

        Raises:
            StepFailed: (when awaited, once every command is final) the error of the
                first failed command in argument order; the other failures are in the
                journal (``handle.history()``).
            SignalTimeout: (likewise) that first failed command is a signal wait that
                timed out.
            TypeError: an argument is not a command of this ``ctx``: e.g. the coroutine
                of a helper ``async def`` (combining those is not supported yet: await
                it on its own), an asyncio future, or a ``ctx.gather``/``ctx.first``
                (they do not nest).
            RuntimeError: a command was already awaited or combined, or is passed twice.
        """
        return _Gather(self, awaitables)

    def first(self, *awaitables: Awaitable[Any]) -> Awaitable[tuple[int, Any]]:
        """Race several commands; return the index and result of the first one to finish.

        For races such as a signal or a timeout. The commands are issued as with
        :meth:`gather`. The race is decided in the first pass in which any of them is
        final: among those final in that pass, the one that finished earliest wins, a
        timer counting as finished at its fire time and any other command at the time
        its outcome was journaled (``completed_at``); a tie goes to the lower index. The
        winner is then journaled (a ``run`` event named ``ctx.first`` right after the
        commands, holding the index), so every replay returns the same winner whatever
        outcomes arrive later, and whatever the clocks of the workers that journal them.

        A signal wait counts as finished when its signal arrived (not before the wait was
        issued), or at its deadline if it timed out.

        The losers are left as they are: a losing step still runs and its outcome is
        journaled when it comes, but nothing waits for it; a losing timer no longer
        wakes the workflow; a losing signal wait takes no signal, neither one already in
        the inbox nor one that comes later (those stay for the next wait of that name).

        Args:
            *awaitables: at least one command of this ``ctx`` not awaited yet; as for
                :meth:`gather`.

        Returns:
            An awaitable giving ``(index, result)``: the winner's position among the
            arguments and its result (``None`` for a timer, the payload for a signal).

        Raises:
            StepFailed: (when awaited) the winner failed.
            SignalTimeout: (when awaited) the winner is a signal wait that timed out.
            ValueError: no command given.
            TypeError: an argument is not a command of this ``ctx`` (see :meth:`gather`).
            RuntimeError: a command was already awaited or combined, or is passed twice.
        """
        if not awaitables:
            raise ValueError("ctx.first() needs at least one command to race")
        return _First(self, awaitables)

    def saga(self) -> Saga:
        """Collect compensations as the workflow goes; run them in reverse if it fails.

        Use it as ``async with ctx.saga() as saga:`` and, after each step that must be
        undone if a later one fails, register its undo with ``saga.compensate(step,
        *args)`` (same arguments as :meth:`step`). Registering journals nothing.

        If the block exits with an exception (a ``StepFailed``, any other exception, or
        a cancellation), the registered compensations run as durable steps, one after
        the other, last registered first; then the block's exception propagates
        unchanged. A compensation that fails is journaled like any step and the others
        still run; the failures are then attached to the propagating exception as
        ``compensation_failures`` (a list of ``StepFailed``, in the order they ran) and
        summed up in a note (``__notes__``), which shows in tracebacks and in the failed
        instance's error details. A cancellation requested while the compensations run
        does not cut them short: the running one is waited for, the others still run,
        and the block's exception propagates with a note saying so. If the block ends
        normally, nothing runs.

        Example::

            async with ctx.saga() as saga:
                src_tran = await ctx.step(start_transfer, src, -amount)
                saga.compensate(rollback_transfer, src, src_tran)
                dst_tran = await ctx.step(start_transfer, dst, +amount)
                saga.compensate(rollback_transfer, dst, dst_tran)

        Returns:
            A :class:`~celery_durable.engine.saga.Saga`, an async context manager for
            one ``async with`` block.
        """
        return Saga(self)

    def set_status(self, status: Any, /) -> None:
        """Publish a custom status for observers (``handle.status()``); not a command.

        The value kept is the last one set in the orchestrator pass; it is committed with
        the pass, so observers see it once the workflow waits or ends. It is not
        journaled as an event and may be set as often as needed. A workflow that never
        calls it keeps whatever status it had (``None`` at first).

        Args:
            status: any value the instance's serializer can encode (``None`` clears it).

        Raises:
            SerializationError: the value cannot be encoded; the status is unchanged.
        """
        try:
            encoded = self._codec.dumps(status)
        except Exception as exc:
            raise SerializationError(
                f"ctx.set_status() got a value of type {type(status).__name__!r} that the "
                f"{self._codec.name!r} serializer cannot encode: {exc}"
            ) from exc
        self._cursor.custom_status = encoded

    def patched(self, patch_id: str, /) -> bool:
        """Branch between old and new code while instances of the old are in flight.

        ``True`` for a run that reaches this call on code that has the patch (a marker
        is journaled the first time, and replays find it), ``False`` when replaying a
        journal written before the patch existed, so old and new instances both run on
        the new code::

            if ctx.patched("fraud-check"):
                await ctx.step(check_fraud, order_id)
            await ctx.step(charge, order_id)

        A run answers once per id (later calls give the same answer).
        ``celery -A app durable patches`` tells when no open instance replays the old
        branch any more; then see :meth:`deprecate_patch`.

        Raises:
            TypeError, ValueError: ``patch_id`` is not a string of 1 to 255 characters.
        """
        return patches.patched(self._cursor, patch_id)

    def deprecate_patch(self, patch_id: str, /) -> None:
        """The step after ``ctx.patched(patch_id)`` once no open instance replays its
        old branch: keep only the new code, preceded by this call.

        It consumes the marker that runs which took the new branch journaled, and
        journals nothing. It is optional (replay passes over markers the code no longer
        asks for) and may be removed at any time: it says in the code that the old
        branch is gone.

        Raises:
            TypeError, ValueError: ``patch_id`` is not a string of 1 to 255 characters.
        """
        patches.deprecate_patch(self._cursor, patch_id)
