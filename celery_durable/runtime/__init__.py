"""The Celery runtime: the only layer of celery_durable that imports celery."""

from celery_durable.runtime.durable import Durable, Workflow
from celery_durable.runtime.steps import StepInfo, current_step

__all__ = ["Durable", "StepInfo", "Workflow", "current_step"]
