"""The examples' Celery app.

Run it for real with a Redis broker::

    celery -A examples.app worker --loglevel=info

Settings come from the environment so the same app serves the demo, the tests and a
Docker Compose deployment:

* ``CELERY_BROKER_URL`` (default ``redis://localhost:6379/0``)
* ``DURABLE_STORE`` (default: a SQLite file, ``celery_durable.sqlite3``, in the working
  directory; e.g. ``postgresql+psycopg://postgres@localhost/durable``)
* ``BANK_DB`` (default ``bank.sqlite3``): the toy bank the money-transfer steps call.
"""

from __future__ import annotations

import os

from celery import Celery

from celery_durable import Durable

app = Celery(
    "examples",
    broker=os.environ.get("CELERY_BROKER_URL", "redis://localhost:6379/0"),
    include=[
        "examples.money_transfer",
        "examples.schedule",
        "examples.user_registration",
        "examples.fulfilment",
    ],
)
app.conf.update(
    durable_store=os.environ.get("DURABLE_STORE") or None,
    # One message at a time per worker process: a durable queue never hides work in
    # prefetch (see DESIGN: Redis visibility timeout).
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
)

durable = Durable(app)
