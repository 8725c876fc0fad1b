"""A Django project using celery_durable: settings as ``CELERY_DURABLE_*``, the journal in
the project's own database, a workflow over an existing task and an exactly-once
database step, the console under ``/durable/``."""

from shop.celery import app as celery_app

__all__ = ["celery_app"]
