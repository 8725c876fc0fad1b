"""The ASGI application: Django, with the celery_durable console under /durable/.

Serve it with ``uvicorn shop.asgi:application``.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")
django_application = get_asgi_application()

from celery_durable.contrib.django import asgi_with_console  # noqa: E402
from shop.celery import durable  # noqa: E402

application = asgi_with_console(django_application, durable, prefix="/durable")
