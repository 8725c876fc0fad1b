"""Settings of the shop example.

``SHOP_DATABASE`` (environment) picks the database: a SQLite file path (the default,
``shop.sqlite3`` here) or a ``postgresql://user:password@host:port/name`` URL.
"""

import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

from celery_durable.contrib.django import database_url

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-a-secret")
DEBUG = True
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["django.contrib.contenttypes", "orders"]
ROOT_URLCONF = "shop.urls"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"


def _database(where: str) -> dict[str, object]:
    if not where.startswith("postgresql://"):
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": where}
    url = urlsplit(where)
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": url.path.lstrip("/"),
        "USER": unquote(url.username or ""),
        "PASSWORD": unquote(url.password or ""),
        "HOST": url.hostname or "localhost",
        "PORT": str(url.port or ""),
    }


DATABASES = {"default": _database(os.environ.get("SHOP_DATABASE", str(BASE_DIR / "shop.sqlite3")))}

# Celery, read by shop/celery.py with namespace="CELERY".
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "redis://localhost:6379/0")
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

# celery_durable, read the same way: CELERY_DURABLE_<setting>.
CELERY_DURABLE_STORE = database_url(DATABASES["default"])  # the journal next to the orders
CELERY_DURABLE_ETA_MAX = 60
