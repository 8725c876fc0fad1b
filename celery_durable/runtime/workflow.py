"""``Workflow``: a registered ``async def`` workflow, started with ``delay`` or
``apply_async`` (``@durable.workflow`` makes one)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec, TypeVar

from celery_durable.client import WorkflowHandle, start
from celery_durable.engine.context import WorkflowContext
from celery_durable.runtime.deploys import source_version

if TYPE_CHECKING:
    from celery_durable.runtime.durable import Durable

P = ParamSpec("P")
R = TypeVar("R")

WorkflowFunction = Callable[Concatenate[WorkflowContext, P], Coroutine[Any, Any, R]]


class Workflow(Generic[P, R]):
    """A registered workflow; start it with :meth:`delay` or :meth:`apply_async`.

    Attributes:
        name: the stable name the journal records (module + function name by default).
        fn: the ``async def`` function.
    """

    def __init__(
        self,
        durable: Durable,
        fn: WorkflowFunction[P, R],
        name: str,
        failure_exceptions: tuple[type[BaseException], ...] = (),
    ) -> None:
        self.durable = durable
        self.fn = fn
        self.name = name
        self.failure_exceptions = failure_exceptions
        """Exception types that fail the workflow (others park it as ``stuck``)."""
        self._signature = inspect.signature(fn)
        functools.update_wrapper(self, fn)

    def __repr__(self) -> str:
        return f"<Workflow {self.name}>"

    @property
    def code_version(self) -> str:
        """The version stamped on instances this code starts: ``durable_code_version``,
        or a hash of the workflow function's source (12 hex digits)."""
        configured = self.durable.settings.code_version
        return configured if configured is not None else source_version(self.fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"workflow {self.name!r} is not called directly: start it with "
            f"{self.fn.__name__}.delay(...) or .apply_async(...)"
        )

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> WorkflowHandle[R]:
        """Start the workflow with these arguments; see :meth:`apply_async`."""
        return self.apply_async(args, kwargs)

    def apply_async(
        self,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        workflow_id: str | None = None,
        countdown: float | None = None,
    ) -> WorkflowHandle[R]:
        """Start the workflow.

        Args:
            args: positional arguments (after ``ctx``).
            kwargs: keyword arguments.
            workflow_id: the instance id; starting again with the same id returns the
                existing run instead of a second one. A random id by default.
            countdown: seconds before the workflow's first pass runs.

        Returns:
            A handle on the (new or existing) instance.

        Raises:
            TypeError: the arguments do not fit the workflow's signature; nothing is
                stored.
            SerializationError: an argument cannot be encoded; nothing is stored.
            WorkflowIdConflict: ``workflow_id`` belongs to an instance of another
                workflow, or one started with other arguments; nothing is stored.
        """
        try:
            self._signature.bind(None, *args, **(kwargs or {}))
        except TypeError as exc:
            takes = self._signature.replace(
                parameters=list(self._signature.parameters.values())[1:]
            )
            raise TypeError(
                f"workflow {self.name!r} cannot start with these arguments: {exc}. It takes "
                f"{takes} after ctx; nothing was started"
            ) from None
        tracing = self.durable.tracing
        handle: WorkflowHandle[R] = start(
            self.durable,
            self.name,
            tuple(args),
            dict(kwargs or {}),
            workflow_id=workflow_id,
            countdown=countdown,
            code_version=self.code_version,
            trace_context=(
                tracing.new_run(self.name, workflow_id, self.durable.now()) if tracing else None
            ),
        )
        return handle
