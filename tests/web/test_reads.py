"""The console's reads over HTTP: the list (filters, counts, paging, waiting on) and one
workflow (header, timeline, compensations, waiting at, inbox, journal), pages and JSON
API alike, against a real worker, real Redis, and SQLite and PostgreSQL stores."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest

from celery_durable import Durable
from web.helpers import wait_status, wait_waiting
from web.workflows import Workflows

BOTH = pytest.mark.parametrize("store", ["sqlite", "postgresql"], indirect=True)


def _start_mix(durable: Durable, workflows: Workflows) -> None:
    """q-1 completed, t-1 failed (rolled back), a-0..a-2 waiting for a signal."""
    assert workflows.quick.apply_async((1,), workflow_id="q-1").result(timeout=30) == 2
    workflows.transfer.apply_async(("alice", "nobody", 5), workflow_id="t-1")
    wait_status(durable, "t-1", "failed")
    for i in range(3):
        workflows.approval.apply_async((f"item{i}",), workflow_id=f"a-{i}")
        wait_waiting(durable, f"a-{i}", "signal")


@BOTH
def test_list_filters_counts_paging_and_waiting_on(
    durable: Durable, workflows: Workflows, worker: Any, http: httpx.Client
) -> None:
    _start_mix(durable, workflows)
    page = http.get("/api/workflows").json()
    assert [w["id"] for w in page["workflows"]] == ["a-2", "a-1", "a-0", "t-1", "q-1"]
    assert page["counts"] | {} == {
        "pending": 0,
        "running": 3,
        "completed": 1,
        "failed": 1,
        "stuck": 0,
        "cancelled": 0,
    }
    assert page["total"] == 5
    assert page["next_cursor"] is None
    row = {w["id"]: w for w in page["workflows"]}
    (waits,) = row["a-0"]["waiting_on"]
    assert (waits["kind"], waits["name"]) == ("signal", "approve")
    assert row["a-0"]["custom_status"] == {"waiting for": "approve"}
    assert row["t-1"]["error"]["type"] == "TransferFailed"
    assert row["q-1"]["waiting_on"] == []

    def ids(**params: Any) -> list[str]:
        answer = http.get("/api/workflows", params=params)
        assert answer.status_code == 200, answer.text
        return [w["id"] for w in answer.json()["workflows"]]

    assert ids(status="running") == ["a-2", "a-1", "a-0"]
    assert ids(status=["failed", "completed"]) == ["t-1", "q-1"]
    assert ids(status="failed,completed") == ["t-1", "q-1"]
    assert ids(workflow=workflows.transfer.name) == ["t-1"]
    assert ids(id_prefix="a-") == ["a-2", "a-1", "a-0"]
    a1 = durable.store.get("a-1")
    assert a1 is not None
    assert ids(since=a1.created_at.isoformat()) == ["a-2", "a-1"]
    assert ids(until=a1.created_at.isoformat()) == ["a-0", "t-1", "q-1"]
    later = (a1.created_at + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert ids(since=later) == []
    # Counts follow the filters (but not the status filter: they are its links).
    counts = http.get("/api/workflows", params={"id_prefix": "a-", "status": "failed"}).json()
    assert counts["counts"]["running"] == 3
    assert counts["counts"]["failed"] == 0

    # Pages of two, by cursor: every instance once, newest first.
    seen, cursor = [], None
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        answer = http.get("/api/workflows", params=params).json()
        seen += [w["id"] for w in answer["workflows"]]
        cursor = answer["next_cursor"]
        if cursor is None:
            break
    assert seen == ["a-2", "a-1", "a-0", "t-1", "q-1"]

    # The HTML list shows the same, and links the next page.
    html = http.get("/").text
    for workflow_id in seen:
        assert f'data-id="{workflow_id}"' in html
    assert "signal &#39;approve&#39;" in html
    failed_only = http.get("/", params={"status": "failed"}).text
    assert 'data-id="t-1"' in failed_only
    assert 'data-id="a-0"' not in failed_only
    paged = http.get("/", params={"limit": 2}).text
    assert 'id="next-page"' in paged


@pytest.mark.parametrize(
    "params",
    [
        {"status": "bogus"},
        {"limit": "0"},
        {"limit": "1001"},
        {"limit": "many"},
        {"since": "yesterday"},
        {"until": "2024-13-01"},
        {"cursor": "not-a-cursor"},
        {"workflow": ["a", "b"]},
    ],
)
def test_bad_list_parameters_are_400(http: httpx.Client, params: dict[str, Any]) -> None:
    api = http.get("/api/workflows", params=params)
    assert api.status_code == 400
    assert api.json()["status"] == 400
    assert api.json()["error"]
    page = http.get("/", params=params)
    assert page.status_code == 400
    assert 'id="error-message"' in page.text


@BOTH
def test_workflow_detail_timeline_compensation_inbox_and_journal(
    durable: Durable, workflows: Workflows, worker: Any, http: httpx.Client
) -> None:
    _start_mix(durable, workflows)
    saga = http.get("/api/workflows/t-1").json()
    assert saga["status"] == "failed"
    assert saga["workflow"] == workflows.transfer.name
    assert saga["args"] == ["alice", "nobody", 5]
    assert saga["kwargs"] == {}
    assert saga["input"] == {"args": ["alice", "nobody", 5], "kwargs": {}}
    assert saga["error"]["type"] == "TransferFailed"
    assert "cannot book +5 on 'nobody'" in saga["error"]["message"]
    assert saga["custom_status"] == {"stage": "booking"}
    assert saga["run"] == 1
    assert saga["result"] is None
    assert saga["waiting_at"] is None  # it ended
    events = saga["events"]
    assert [(e["seq"], e["kind"], e["name"].rsplit(".", 1)[-1], e["state"]) for e in events] == [
        (0, "step", "withdraw", "completed"),
        (1, "step", "deposit", "failed"),
        (2, "step", "refund", "completed"),
    ]
    for key in ("scheduled_at", "started_at", "completed_at", "attempts", "args", "result"):
        assert key in events[0]
    assert events[0]["args"] == ["alice", 5]
    assert events[0]["result"] == "took 5 from alice"
    assert events[1]["error"]["type"] == "TransferFailed"
    assert events[1]["attempts"] == 2  # Celery retried it once
    assert events[2]["compensation_of"] == 1
    assert events[0]["compensation_of"] is None

    page = http.get("/workflows/t-1")
    assert page.status_code == 200
    assert "compensation of #1" in page.text
    assert "TransferFailed" in page.text
    assert "queued " in page.text
    assert "ran " in page.text
    assert "2 attempts" in page.text

    download = http.get("/workflows/t-1/journal.json")
    assert download.status_code == 200
    assert download.headers["content-type"] == "application/json"
    assert "attachment" in download.headers["content-disposition"]
    assert download.json()["events"] == events

    # A workflow waiting: where its code waits, its inbox, its parent and children.
    assert http.post(
        "/api/workflows/a-0/signal", json={"name": "misspelt", "payload": [1]}
    ).is_success
    waiting = http.get("/api/workflows/a-0").json()
    assert waiting["status"] == "running"
    assert "workflows.py:" in waiting["waiting_at"]
    assert "approval" in waiting["waiting_at"]
    assert len(waiting["code_version"]) == 12  # a hash of the workflow's source
    assert waiting["patches"] == []
    (signal,) = waiting["signals"]
    assert (signal["name"], signal["payload"]) == ("misspelt", [1])
    assert waiting["events"][0]["kind"] == "signal"
    assert waiting["events"][0]["state"] == "scheduled"
    html = http.get("/workflows/a-0").text
    assert "misspelt" in html
    assert 'id="waiting-at"' in html

    parent = workflows.parent.apply_async((), workflow_id="p-1")
    wait_waiting(durable, "p-1", "child")
    child_id = http.get("/api/workflows/p-1").json()["children"][0]
    assert http.get(f"/api/workflows/{child_id}").json()["parent_id"] == "p-1"
    assert f'href="/workflows/{child_id}"' in http.get("/workflows/p-1").text
    assert 'href="/workflows/p-1"' in http.get(f"/workflows/{child_id}").text
    listed = http.get("/api/workflows", params={"id_prefix": "p-1"}).json()["workflows"]
    assert any(w["waiting_on"] and w["waiting_on"][0]["kind"] == "child" for w in listed)
    parent.cancel()


def test_unknown_workflow_is_404(http: httpx.Client) -> None:
    for path in ("/api/workflows/nope", "/workflows/nope", "/workflows/nope/journal.json"):
        answer = http.get(path)
        assert answer.status_code == 404, path
        assert "no workflow instance with id" in answer.text
        assert "nope" in answer.text
    assert http.get("/api/workflows/nope").json()["status"] == 404
    assert http.get("/no/such/page").status_code == 404
    assert http.get("/static/console.css").status_code == 200
