"""celery_durable: durable workflows and sagas for existing Celery deployments.

Write ordinary ``async def`` workflows that await Celery steps; every outcome is journaled
in a SQL database (SQLite by default, PostgreSQL in production), and a workflow resumes
exactly where it left off after any crash::

    from celery import Celery
    from celery_durable import Durable, StepFailed

    app = Celery("bank", broker="redis://localhost:6379/0")
    durable = Durable(app)

    @durable.step
    def debit(account: str, amount: int) -> str: ...

    @durable.workflow
    async def pay(ctx, account: str, amount: int) -> str:
        return await ctx.step(debit, account, amount)

    pay.delay("alice", 10).result(timeout=30)
"""

from celery_durable.client import (
    HistoryEvent,
    PendingSignal,
    WorkflowHandle,
    WorkflowInfo,
    WorkflowStatus,
)
from celery_durable.engine.context import WorkflowContext
from celery_durable.engine.journal import Failure, Status
from celery_durable.errors import (
    ConfigurationError,
    DurableError,
    NonDeterminismError,
    SchemaVersionError,
    SerializationError,
    SignalTimeout,
    StepFailed,
    StoreError,
    UnknownWorkflow,
    WorkflowCancelled,
    WorkflowFailed,
    WorkflowIdConflict,
    WorkflowNotFound,
    WorkflowStuck,
)
from celery_durable.runtime import Durable, StepInfo, Workflow, current_step

__all__ = [
    "ConfigurationError",
    "Durable",
    "DurableError",
    "Failure",
    "HistoryEvent",
    "NonDeterminismError",
    "PendingSignal",
    "SchemaVersionError",
    "SerializationError",
    "SignalTimeout",
    "Status",
    "StepFailed",
    "StepInfo",
    "StoreError",
    "UnknownWorkflow",
    "Workflow",
    "WorkflowCancelled",
    "WorkflowContext",
    "WorkflowFailed",
    "WorkflowHandle",
    "WorkflowIdConflict",
    "WorkflowInfo",
    "WorkflowNotFound",
    "WorkflowStatus",
    "WorkflowStuck",
    "current_step",
]
