"""``ctx.saga()``: compensations collected as a workflow goes, run in reverse on failure."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

from celery_durable.engine.awaitables import _ContinueAsNew
from celery_durable.engine.journal import Event, Failure, Kind, State
from celery_durable.errors import StepFailed, WorkflowCancelled

if TYPE_CHECKING:
    from celery_durable.engine.awaitables import _Command
    from celery_durable.engine.context import WorkflowContext

_NOT_COMPENSATED = (GeneratorExit, KeyboardInterrupt, SystemExit, _ContinueAsNew)
"""Exceptions that are not the workflow's failure: the engine closing a suspended
workflow (``GeneratorExit``), the process going down, or ``ctx.continue_as_new()``.
(``WorkflowCancelled`` is compensated for: a cancelled saga rolls back.) Nor is a bug:
an exception that would park the instance as ``stuck`` rather than fail it (see
``@durable.workflow(failure_exceptions=...)``) runs no compensation."""


class Saga:
    """Compensating steps registered as a workflow goes; see :meth:`WorkflowContext.saga`.

    Plain workflow state: registering journals nothing, and each replay rebuilds the same
    list as the workflow re-runs. Only the compensations that run are journaled, as steps.
    """

    def __init__(self, ctx: WorkflowContext) -> None:
        self._ctx = ctx
        self._compensations: list[_Command] = []
        self._entered = False

    def compensate(self, task: Any, /, *args: Any, **kwargs: Any) -> None:
        """Register a step that undoes what the block did so far.

        Takes what :meth:`WorkflowContext.step` takes. Nothing runs and nothing is journaled
        now: if the ``async with`` block later exits with an exception, the registered
        steps run then, last registered first.

        Args:
            task: the compensating step task, or its registered name.
            *args: positional arguments for the task; they are encoded now.
            **kwargs: keyword arguments for the task; they are encoded now.

        Raises:
            SerializationError: the arguments cannot be encoded.
            TypeError: ``task`` is not a step task or a task name.
        """
        # Built (and so checked) now; awaited, and so given its seq, only if it runs.
        self._compensations.append(cast("_Command", self._ctx.step(task, *args, **kwargs)))

    async def __aenter__(self) -> Saga:
        if self._entered:
            raise RuntimeError("a ctx.saga() is used for one `async with` block; make a new one")
        self._entered = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc is None or isinstance(exc, _NOT_COMPENSATED):
            return
        if not isinstance(exc, WorkflowCancelled) and not self._ctx._fails_workflow(exc):
            # A bug (not a journaled failure): the instance parks as stuck with nothing of
            # this pass journaled, and the fixed code resumes it. Compensating here would
            # journal a rollback that the fixed code never asks for.
            return
        failures: list[tuple[str, StepFailed]] = []
        interrupted = False
        for command in reversed(self._compensations):
            try:
                try:
                    await command
                except WorkflowCancelled:
                    # A cancel requested while rolling back does not cut the rollback
                    # short: this compensation is waited for, and the others still run.
                    interrupted = True
                    await command.rejoin()
            except StepFailed as failure:  # journaled like any step; the others still run
                failures.append((command.name, failure))
        if failures:
            _attach(exc, failures)
        if interrupted:
            _note(exc, "a cancellation arrived while the saga rolled back; every compensation ran")
        # returning None lets ``exc`` propagate: the block's own exception, unchanged


def _attach(exc: BaseException, failures: list[tuple[str, StepFailed]]) -> None:
    """Record the failed compensations on the exception the saga lets through.

    ``exc.compensation_failures`` lists the StepFailed errors (in the order the
    compensations ran; an outer saga appends its own); a note names each failed step, so
    that tracebacks and the instance's failure details show them.
    """
    previous: list[StepFailed] = getattr(exc, "compensation_failures", None) or []
    exc.compensation_failures = [*previous, *(f for _, f in failures)]  # type: ignore[attr-defined]
    lines = [f"{len(failures)} compensation step(s) failed while the saga rolled back:"]
    lines += [f"  - step {name!r}: {failure}" for name, failure in failures]
    _note(exc, "\n".join(lines))


def _note(exc: BaseException, note: str) -> None:
    """Add ``note`` to ``exc`` (``__notes__``: tracebacks and failure details show it)."""
    if hasattr(exc, "add_note"):  # Python >= 3.11
        exc.add_note(note)
    else:  # Python 3.10 has no add_note; the engine still reads __notes__
        exc.__notes__ = [*getattr(exc, "__notes__", []), note]


def compensations(events: Sequence[Event], failure: Failure | None = None) -> dict[int, int]:
    """Which journaled events compensate (what a rollback ran), read off a journal.

    The journal does not mark compensations: they are the steps and children journaled
    after the point where a cancellation was thrown in (a CANCEL event), or after the
    failure that failed the run. Used by the console's timeline and by tracing.

    Args:
        events: the journal, by seq.
        failure: the instance's failure when it ended ``failed`` (its failure point is
            the last failed event with that type and message), else ``None``: a failure
            the workflow caught and went on from is not a rollback.

    Returns:
        seq of each compensating step or child -> seq of the event it follows.
    """
    trigger: int | None = None
    for event in events:
        if event.kind is Kind.CANCEL:
            trigger = event.seq
            break
    if trigger is None and failure is not None:
        for event in reversed(events):
            if (
                event.state is State.FAILED
                and event.failure is not None
                and (event.failure.type, event.failure.message) == (failure.type, failure.message)
            ):
                trigger = event.seq
                break
    if trigger is None:
        return {}
    return {e.seq: trigger for e in events if e.seq > trigger and e.kind in (Kind.STEP, Kind.CHILD)}
