"""A step retried because the store was out of reach must not change the retry limit of
its later runs (Celery keeps an explicit ``max_retries`` on the task object, and
``autoretry_for`` applies it to every later request of the process)."""

from __future__ import annotations

import pytest
from celery import Celery
from celery.exceptions import Retry

from celery_durable import Durable
from celery_durable.errors import StoreError


class Flaky(Exception):
    pass


def test_a_store_retry_leaves_no_retry_limit_behind(tmp_path: object) -> None:
    app = Celery("limits", broker="memory://", set_as_current=False)
    app.conf.update(durable_store=f"sqlite:///{tmp_path}/journal.sqlite3")
    durable = Durable(app)

    @durable.step(autoretry_for=(Flaky,), max_retries=20, default_retry_delay=0)
    def flaky() -> None:
        raise Flaky("not yet")

    flaky.push_request(id="wf-1:0", retries=0, called_directly=False)
    try:
        with pytest.raises(Retry):
            raise flaky._retry_later(StoreError("the store is down"))
        assert "override_max_retries" not in flaky.__dict__
    finally:
        flaky.pop_request()
    # A later request at its 3rd retry is still within its own limit of 20.
    flaky.push_request(id="wf-2:0", retries=3, called_directly=False)
    try:
        with pytest.raises(Retry):
            flaky.run()
    finally:
        flaky.pop_request()
    durable.store.close()
    app.close()
