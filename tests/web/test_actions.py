"""The console's actions over HTTP: signal, cancel, terminate and retry through the JSON
API and the pages' forms (CSRF, confirmation, bulk), bad input refused with a 4xx and
nothing changed, auth, and the log of who did what from where."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest

from celery_durable import Durable
from web.conftest import Serve
from web.helpers import csrf_token, version, wait_status, wait_waiting
from web.workflows import Workflows

BOTH = pytest.mark.parametrize("store", ["sqlite", "postgresql"], indirect=True)


@BOTH
def test_api_signal_validated_then_delivered(
    durable: Durable, workflows: Workflows, worker: Any, http: httpx.Client
) -> None:
    handle = workflows.approval.apply_async(("laptop",), workflow_id="a-1")
    wait_waiting(durable, "a-1", "signal")
    before = version(durable, "a-1")
    refused = [
        (http.post("/api/workflows/a-1/signal", content=b"{bad json", headers=_json), 400),
        (http.post("/api/workflows/a-1/signal", json={"payload": 1}), 400),
        (http.post("/api/workflows/a-1/signal", json={"name": ""}), 400),
        (http.post("/api/workflows/a-1/signal", json={"name": 7}), 400),
        (http.post("/api/workflows/a-1/signal", json=["approve"]), 400),
        (http.post("/api/workflows/a-1/signal", json={"name": "approve", "extra": 1}), 400),
        (http.post("/api/workflows/a-1/signal", data={"name": "approve"}), 415),
        (http.post("/api/workflows/a-1/signal", content=b'{"name": "approve"}'), 415),
        (http.post("/api/workflows/nope/signal", json={"name": "approve"}), 404),
        (http.get("/api/workflows/a-1/signal"), 404),
    ]
    for answer, status in refused:
        assert answer.status_code == status, answer.text
    assert version(durable, "a-1") == before
    assert durable.store.signals("a-1") == []

    sent = http.post("/api/workflows/a-1/signal", json={"name": "approve", "payload": {"ok": 1}})
    assert sent.status_code == 200
    assert sent.json() | {} == {
        "ok": True,
        "id": "a-1",
        "action": "signal",
        "status": sent.json()["status"],
        "message": "signal 'approve' sent",
    }
    assert handle.result(timeout=30) == {"item": "laptop", "decision": {"ok": 1}}
    finished = version(durable, "a-1")
    late = http.post("/api/workflows/a-1/signal", json={"name": "approve", "payload": 2})
    assert late.status_code == 409
    assert "completed" in late.json()["error"]
    assert version(durable, "a-1") == finished
    assert durable.store.signals("a-1") == []


_json = {"content-type": "application/json"}


@BOTH
def test_api_cancel_terminate_retry(
    durable: Durable, workflows: Workflows, worker: Any, http: httpx.Client
) -> None:
    workflows.sleeper.apply_async((), workflow_id="s-1")
    workflows.sleeper.apply_async((), workflow_id="s-2")
    workflows.buggy.apply_async((3,), workflow_id="b-1")
    wait_waiting(durable, "s-1", "timer")
    wait_waiting(durable, "s-2", "timer")
    wait_status(durable, "b-1", "stuck")

    for action in ("cancel", "terminate", "retry"):
        assert http.post(f"/api/workflows/nope/{action}", json={}).status_code == 404
        assert http.post(f"/api/workflows/s-1/{action}", data={"x": "1"}).status_code == 415
    before = version(durable, "s-1")
    assert http.post("/api/workflows/s-1/retry", json={}).status_code == 409  # not stuck
    assert http.post("/api/workflows/s-1/cancel", content=b"[", headers=_json).status_code == 400
    assert version(durable, "s-1") == before

    cancelled = http.post("/api/workflows/s-1/cancel", headers=_json)  # an empty body is {}
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["action"] == "cancel"
    wait_status(durable, "s-1", "cancelled")
    assert http.get("/api/workflows/s-1").json()["events"][-1]["kind"] == "cancel"
    ended = version(durable, "s-1")
    again = http.post("/api/workflows/s-1/cancel", json={})
    assert again.status_code == 409
    assert "already cancelled" in again.json()["error"]
    assert http.post("/api/workflows/s-1/terminate", json={}).status_code == 409
    assert http.post("/api/workflows/s-1/retry", json={}).status_code == 409
    assert version(durable, "s-1") == ended

    terminated = http.post("/api/workflows/s-2/terminate", json={})
    assert terminated.status_code == 200
    assert terminated.json()["status"] == "cancelled"
    error = http.get("/api/workflows/s-2").json()["error"]
    assert error["type"] == "WorkflowTerminated"
    assert "from the console" in error["message"]

    workflows.broken["yes"] = False  # the fix is deployed
    retried = http.post("/api/workflows/b-1/retry", json={})
    assert retried.status_code == 200, retried.text
    assert durable.handle("b-1").result(timeout=30) == len("took 3 from alice")
    assert http.post("/api/workflows/b-1/retry", json={}).status_code == 409


def test_forms_need_csrf_and_confirmation(
    durable: Durable, workflows: Workflows, worker: Any, http: httpx.Client
) -> None:
    workflows.sleeper.apply_async((), workflow_id="s-1")
    handle = workflows.approval.apply_async(("desk",), workflow_id="a-1")
    wait_waiting(durable, "s-1", "timer")
    wait_waiting(durable, "a-1", "signal")
    before = version(durable, "s-1")

    # No token (a fresh client has no cookie either), a wrong one, another site: 403.
    with httpx.Client(base_url=str(http.base_url)) as stranger:
        answer = stranger.post("/workflows/s-1/cancel", data={"confirm": "yes"})
        assert answer.status_code == 403
    token = csrf_token(http, "/workflows/s-1")
    assert (
        http.post("/workflows/s-1/cancel", data={"csrf_token": "x", "confirm": "yes"}).status_code
        == 403
    )
    evil = http.post(
        "/workflows/s-1/cancel",
        data={"csrf_token": token, "confirm": "yes"},
        headers={"origin": "http://evil.example"},
    )
    assert evil.status_code == 403
    assert http.post("/workflows/s-1/cancel", json={"csrf_token": token}).status_code == 415
    # Not confirmed yet: a page asks, nothing happens.
    asked = http.post("/workflows/s-1/cancel", data={"csrf_token": token})
    assert asked.status_code == 200
    assert "Confirm" in asked.text
    assert 'value="yes"' in asked.text
    assert http.post("/workflows/s-1/explode", data={"csrf_token": token}).status_code == 404
    assert version(durable, "s-1") == before

    done = http.post("/workflows/s-1/cancel", data={"csrf_token": token, "confirm": "yes"})
    assert done.status_code == 303
    assert done.headers["location"].startswith("/workflows/s-1?msg=cancel")
    wait_status(durable, "s-1", "cancelled")
    assert "cancellation requested" in http.get(done.headers["location"]).text

    # The signal form: the payload must be JSON; then it is delivered.
    bad = http.post(
        "/workflows/a-1/signal",
        data={"csrf_token": token, "confirm": "yes", "name": "approve", "payload": "{yes"},
    )
    assert bad.status_code == 400
    assert "not valid JSON" in bad.text
    nameless = http.post(
        "/workflows/a-1/signal", data={"csrf_token": token, "confirm": "yes", "payload": "1"}
    )
    assert nameless.status_code == 400
    assert durable.store.signals("a-1") == []
    sent = http.post(
        "/workflows/a-1/signal",
        data={"csrf_token": token, "confirm": "yes", "name": "approve", "payload": '"yes"'},
    )
    assert sent.status_code == 303
    assert handle.result(timeout=30) == {"item": "desk", "decision": "yes"}
    finished = http.post("/workflows/a-1/cancel", data={"csrf_token": token, "confirm": "yes"})
    assert finished.status_code == 409
    assert "already completed" in finished.text


def test_bulk_actions_from_the_list(
    durable: Durable, workflows: Workflows, worker: Any, http: httpx.Client
) -> None:
    for i in range(3):
        workflows.sleeper.apply_async((), workflow_id=f"s-{i}")
        wait_waiting(durable, f"s-{i}", "timer")
    token = csrf_token(http)
    ids = [("ids", "s-0"), ("ids", "s-1"), ("ids", "gone")]
    form = [("csrf_token", token), ("action", "terminate"), *ids]
    asked = http.post("/bulk", data=dict(form[:2]) | {"ids": ["s-0", "s-1", "gone"]})
    assert asked.status_code == 200
    assert "3 workflow(s)" in asked.text
    assert http.post("/bulk", data={"csrf_token": token, "action": "terminate"}).status_code == 400
    assert (
        http.post(
            "/bulk", data={"csrf_token": token, "action": "explode", "ids": "s-0"}
        ).status_code
        == 400
    )
    assert durable.store.get("s-0").status.value == "running"  # type: ignore[union-attr]
    done = http.post(
        "/bulk",
        data={
            "csrf_token": token,
            "action": "terminate",
            "confirm": "yes",
            "back": "status=running",
            "ids": ["s-0", "s-1", "gone"],
        },
    )
    assert done.status_code == 303
    assert done.headers["location"].startswith("/?status=running&msg=")
    page = http.get(done.headers["location"]).text
    assert "terminate: 2 of 3 done" in page
    assert "gone" in page
    for workflow_id, status in (("s-0", "cancelled"), ("s-1", "cancelled"), ("s-2", "running")):
        assert durable.store.get(workflow_id).status.value == status  # type: ignore[union-attr]


def test_auth_user_password_and_token(
    durable: Durable,
    workflows: Workflows,
    worker: Any,
    serve: Serve,
    caplog: pytest.LogCaptureFixture,
) -> None:
    workflows.sleeper.apply_async((), workflow_id="s-1")
    wait_waiting(durable, "s-1", "timer")
    with serve(auth="ops:s3cret") as url:
        assert httpx.get(f"{url}/").status_code == 401
        assert "Basic" in httpx.get(f"{url}/api/workflows").headers["www-authenticate"]
        assert httpx.get(f"{url}/", auth=("ops", "wrong")).status_code == 401
        assert httpx.get(f"{url}/", auth=("eve", "s3cret")).status_code == 401
        assert httpx.post(f"{url}/api/workflows/s-1/cancel", json={}).status_code == 401
        assert durable.store.get("s-1").status.value == "running"  # type: ignore[union-attr]
        assert httpx.get(f"{url}/", auth=("ops", "s3cret")).status_code == 200
        with caplog.at_level(logging.INFO, logger="celery_durable.web"):
            done = httpx.post(f"{url}/api/workflows/s-1/cancel", json={}, auth=("ops", "s3cret"))
        assert done.status_code == 200
    (record,) = [r for r in caplog.records if r.name == "celery_durable.web"]
    line = record.getMessage()
    assert "cancel on workflow s-1 by ops from 127.0.0.1:" in line
    assert " at 20" in line  # when, as an ISO time

    with serve(auth="t0ken") as url:
        assert httpx.get(f"{url}/api/workflows").status_code == 401
        bearer = {"authorization": "Bearer t0ken"}
        assert httpx.get(f"{url}/api/workflows", headers=bearer).status_code == 200
        wrong = {"authorization": "Bearer nope"}
        assert httpx.get(f"{url}/api/workflows", headers=wrong).status_code == 401
        assert httpx.get(f"{url}/", auth=("anyone", "t0ken")).status_code == 200


def test_bad_auth_settings_are_refused(durable: Durable) -> None:
    from celery_durable.web import create_app

    for bad in ("", "user:", ":password"):
        with pytest.raises(ValueError, match="--auth"):
            create_app(durable, auth=bad)
