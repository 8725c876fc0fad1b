"""Step mocks: a step's body replaced for a test, everything around it kept.

``env.mock_step(charge, raises=ConnectionError, fail_times=2, returns="tx-1")`` swaps the
body of the ``@durable.step`` task ``charge``; the task itself still runs as a Celery task
on the worker, so the journal, Celery's retry options (``autoretry_for``, ``max_retries``),
``StepFailed`` and compensations behave as with the real body.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from celery_durable.runtime.steps import DurableStep, current_step

_MISSING = object()


class MockedStepError(Exception):
    """What a mocked step raises on its failing runs when no ``raises`` is given."""


@dataclass(frozen=True)
class StepCall:
    """One run of a mocked step.

    Attributes:
        args: the positional arguments the step was called with.
        kwargs: its keyword arguments.
        attempt: the run's attempt number (``current_step().attempt``; 1 for the first
            run, then one more per Celery retry or re-send); 0 when it ran outside a
            workflow.
        idempotency_key: ``current_step().idempotency_key``, or ``None`` outside a
            workflow.
    """

    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    attempt: int = 0
    idempotency_key: str | None = None


class StepMock:
    """The body of a step replaced by canned behaviour; made by
    :meth:`DurableTestEnv.mock_step <celery_durable.testing.DurableTestEnv.mock_step>`.

    The first ``fail_times`` runs raise ``raises`` (or :class:`MockedStepError`); the
    runs after return ``returns``. With ``raises`` and no ``fail_times``, every run
    raises. Usable as a context manager: the real body is back when the block ends (or
    when the environment stops, or on :meth:`restore`).

    Attributes:
        task: the ``@durable.step`` task whose body is replaced.
        calls: every run so far, in order (:class:`StepCall`).
    """

    def __init__(
        self,
        task: DurableStep,
        *,
        returns: Any = None,
        raises: BaseException | type[BaseException] | None = None,
        fail_times: int | None = None,
    ) -> None:
        if fail_times is not None and (
            isinstance(fail_times, bool) or not isinstance(fail_times, int) or fail_times < 0
        ):
            raise ValueError(f"fail_times must be a whole number >= 0, not {fail_times!r}")
        if raises is not None and not (
            isinstance(raises, BaseException)
            or (isinstance(raises, type) and issubclass(raises, BaseException))
        ):
            raise TypeError(f"raises must be an exception class or instance, not {raises!r}")
        self.task = task
        self.returns = returns
        self.raises = raises
        self.fail_times = fail_times
        self.calls: list[StepCall] = []
        self._lock = threading.Lock()
        # Celery's autoretry_for wraps the body: the wrapper stays, the body inside goes.
        self._attribute = "_orig_run" if "_orig_run" in task.__dict__ else "run"
        self._saved = task.__dict__.get(self._attribute, _MISSING)
        self._active = False

    def __repr__(self) -> str:
        return f"<StepMock {self.task.name} calls={len(self.calls)}>"

    @property
    def call_count(self) -> int:
        """How many times the step ran."""
        return len(self.calls)

    def install(self) -> StepMock:
        """Put the canned body in place (done by ``env.mock_step``)."""
        setattr(self.task, self._attribute, self._body)
        self._active = True
        return self

    def restore(self) -> None:
        """Give the step its real body back (again: nothing)."""
        if not self._active:
            return
        self._active = False
        if self._saved is _MISSING:
            self.task.__dict__.pop(self._attribute, None)
        else:
            setattr(self.task, self._attribute, self._saved)

    def __enter__(self) -> StepMock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.restore()

    def _body(self, *args: Any, **kwargs: Any) -> Any:
        step = current_step()
        with self._lock:
            self.calls.append(
                StepCall(
                    args=args,
                    kwargs=kwargs,
                    attempt=step.attempt if step else 0,
                    idempotency_key=step.idempotency_key if step else None,
                )
            )
            run = len(self.calls)
        failing = run <= self.fail_times if self.fail_times is not None else self.raises is not None
        if not failing:
            return self.returns
        if self.raises is None:
            raise MockedStepError(
                f"step {self.task.name}: mocked failure {run} of {self.fail_times}"
            )
        if isinstance(self.raises, BaseException):
            raise copy.copy(self.raises)  # a fresh traceback on every run
        raise self.raises(f"step {self.task.name}: mocked failure {run}")
