"""The exceptions celery_durable raises.

The tree::

    DurableError
    ├── StepFailed              a step (or a ctx.run function) failed for good
    ├── SignalTimeout           ctx.wait_signal(..., timeout=) ran out of time
    ├── WorkflowFailed          handle.result() of a workflow that failed
    ├── WorkflowStuck           handle.result() of a workflow parked as ``stuck``
    ├── NonDeterminismError     replay met a different command than the journal holds
    ├── WorkflowNotFound        no instance with that id in the store
    ├── WorkflowIdConflict      the id is taken by another workflow or other arguments
    ├── UnknownWorkflow         no workflow registered under that name
    ├── SerializationError      a value the configured serializer cannot encode (also TypeError)
    ├── ConfigurationError      a setting or store URL that cannot be used
    └── StoreError              the store failed or is out of reach
        └── SchemaVersionError  the store's schema is newer than this library

    WorkflowCancelled (a BaseException, like asyncio.CancelledError: a bare
    ``except Exception`` in workflow code does not swallow it)
"""

from __future__ import annotations

from typing import Any


class DurableError(Exception):
    """Base class of every error celery_durable raises."""


class _FailureError(DurableError):
    """An error that carries a journaled failure: the original type name and message."""

    def __init__(self, type: str, message: str, details: Any = None) -> None:  # noqa: A002
        super().__init__(f"{type}: {message}" if message else type)
        self.type = type
        self.message = message
        self.details = details


class StepFailed(_FailureError):
    """A step failed for good (after Celery's retries).

    Attributes:
        type: the class name of the exception the step raised, e.g. ``"TransferFailed"``.
        message: ``str()`` of that exception.
        details: the formatted traceback, when one was recorded.
    """


class SignalTimeout(DurableError):
    """``ctx.wait_signal(name, timeout=...)`` waited ``timeout`` and no signal came.

    Raised inside the workflow at the ``await``; catch it to clean up (the seed's
    registration saga deletes the unverified user).
    """


class WorkflowFailed(_FailureError):
    """Raised by ``handle.result()`` when the workflow ended with an unhandled exception.

    Attributes:
        type: the class name of the workflow's exception.
        message: ``str()`` of that exception.
        details: the formatted traceback, when one was recorded.
    """


class WorkflowStuck(_FailureError):
    """Raised by ``handle.result()`` when the workflow is parked as ``stuck``.

    A stuck workflow keeps its journal; fix the code and retry it
    (``durable.retry(workflow_id)``).
    """


class NonDeterminismError(DurableError):
    """Replay met a command that differs from the one the journal holds at that point.

    The workflow's code changed in a way that does not match its journal. The instance is
    parked as ``stuck`` with this error kept; deploy code that replays the journal (or
    restore the old code, or branch with ``ctx.patched``) and retry the instance.

    Attributes:
        seq: the journal position of the first mismatch (``None`` if not about one seq).
        journaled: what the journal holds there, e.g. ``"step 'bank.debit'"`` (``None``
            past the journal's end).
        asked: what the code asked for there (``None`` when the code ended instead).
    """

    def __init__(
        self,
        message: str,
        *,
        seq: int | None = None,
        journaled: str | None = None,
        asked: str | None = None,
    ) -> None:
        super().__init__(message)
        self.seq = seq
        self.journaled = journaled
        self.asked = asked


class WorkflowNotFound(DurableError):
    """No workflow instance with the given id exists in the store."""


class WorkflowIdConflict(DurableError):
    """A workflow id that already belongs to an instance of another workflow, or to one
    started with other arguments.

    Raised by ``workflow.apply_async(..., workflow_id=...)``; nothing is stored. (Starting
    the same workflow with the same arguments under an existing id is idempotent: it
    returns the existing instance.) Inside a workflow, ``ctx.child(...)`` with an id that
    belongs to another instance fails with ``StepFailed`` of type ``"WorkflowIdConflict"``.
    """


class UnknownWorkflow(DurableError):
    """No workflow is registered under the given name in this process."""


class SerializationError(DurableError, TypeError):
    """A value could not be encoded with the configured serializer."""


class ConfigurationError(DurableError):
    """A ``durable_*`` setting or a store URL that cannot be used as given."""


class StoreError(DurableError):
    """The store failed or could not be reached."""


class SchemaVersionError(StoreError):
    """The store's schema was written by a newer celery_durable than this one."""


class WorkflowCancelled(BaseException):
    """Thrown into a workflow at the ``await`` it is blocked on when ``handle.cancel()``
    is called, so that it can compensate (``ctx.saga()`` blocks run their compensations).

    It derives from :class:`BaseException`, not :class:`Exception`, so that a bare
    ``except Exception`` does not swallow it. If it propagates out of the workflow, the
    instance ends ``cancelled``; a workflow that catches it and returns ends ``completed``.
    """
