"""The project's Celery app, configured from Django's settings (``CELERY_*``), and its
Durable runtime."""

import os

from celery import Celery

from celery_durable import Durable

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")

app = Celery("shop")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()  # orders/tasks.py: the project's existing tasks
app.autodiscover_tasks(related_name="workflows")  # orders/workflows.py

durable = Durable(app)
