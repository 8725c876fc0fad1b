"""The pure replay engine: journal in, commands out.

Nothing under this package imports celery, kombu, sqlalchemy or redis; it is driven by the
runtime and tested alone with hand-built journals.
"""

from celery_durable.engine.context import WorkflowContext
from celery_durable.engine.replay import replay, task_name

__all__ = ["WorkflowContext", "replay", "task_name"]
