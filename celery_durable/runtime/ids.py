"""The deterministic Celery task ids of workflow steps."""

from __future__ import annotations


def step_task_id(workflow_id: str, seq: int, run: int = 1) -> str:
    """The deterministic Celery task id (and idempotency key) of a workflow's step."""
    return f"{workflow_id}:{seq}" if run == 1 else f"{workflow_id}:{seq}~{run}"


def parse_step_task_id(task_id: str | None) -> tuple[str, int, int] | None:
    """Inverse of :func:`step_task_id`: ``(workflow_id, run, seq)``, or ``None`` for an
    ordinary task id."""
    if not task_id:
        return None
    workflow_id, sep, last = task_id.rpartition(":")
    seq, tilde, run = last.partition("~")
    if not sep or not workflow_id or not seq.isdigit() or (tilde and not run.isdigit()):
        return None
    return workflow_id, int(run) if tilde else 1, int(seq)


RESUME_TASK = "celery_durable.resume"
"""The orchestrator task's name; its task ids are ``"<workflow_id>:resume:<random>"``."""
