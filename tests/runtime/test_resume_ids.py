"""Resume messages carry the workflow id in their task id (so the worker's log lines about
them name the workflow) and the pass's time limits (``durable_resume_time_limit``)."""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import before_task_publish

from celery_durable import Durable


def test_resume_task_ids_name_the_workflow_and_carry_the_time_limits(tmp_path: Any) -> None:
    app = Celery("ids", broker="memory://", set_as_current=False)
    app.conf.update(durable_store=f"sqlite:///{tmp_path}/j.sqlite3", durable_resume_time_limit=30)
    durable = Durable(app)
    seen: list[dict[str, Any]] = []

    def capture(headers: dict[str, Any] | None = None, **_: Any) -> None:
        if headers and headers.get("task") == "celery_durable.resume":
            seen.append(headers)

    before_task_publish.connect(capture, weak=False)
    try:
        durable.send_resume("order-42")
    finally:
        before_task_publish.disconnect(capture)
        durable.store.close()
        app.close()
    (headers,) = seen
    assert headers["id"].startswith("order-42:resume:")
    assert list(headers["timelimit"]) == [45.0, 30.0]  # (hard, soft)
