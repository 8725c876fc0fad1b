"""Traces of a workflow against a real prefork worker, next to Celery's instrumentation.

``order`` runs steps, a step that Celery retries once, a timer, a signal wait, a child
and a failing step that makes its saga compensate. The caller (its own process) starts it
under a span; every process exports through the SDK's in-memory exporter into one file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

from chaos.cluster import TESTS, Cluster

from telemetry.spans import Span, read_spans

RUN_ATTRIBUTES = ("durable.workflow_id", "durable.workflow", "durable.run")
ATTEMPT = ("durable.workflow_id", "durable.seq", "durable.attempt")
STEP_ATTRIBUTES = ("durable.seq", "durable.step", "durable.attempt", "durable.queue_delay_ms")


def _drive(env: dict[str, str], cwd: Path) -> dict[str, str]:
    full = {**os.environ, **env, "PYTHONWARNINGS": ""}
    full["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), full.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-m", "telemetry.driver"],
        env=full,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result: dict[str, str] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_one_trace_per_workflow_joined_to_the_caller(
    cluster: Cluster, tel_env: dict[str, str], tmp_path: Path
) -> None:
    spans_file = tmp_path / "spans.jsonl"
    env = {**tel_env, "TEL_SPANS": str(spans_file), "TEL_CELERY_OTEL": "1"}
    cluster.env.update(env)
    cluster.wait_ready(cluster.worker("w1", concurrency=2))

    run = _drive(env, tmp_path)
    assert run["ended"] == "Refused"
    cluster.stop_all()  # the workers' last spans are written by now
    spans = read_spans(spans_file)
    ours = [s for s in spans if "durable.workflow_id" in s.attributes]
    by_id = {s.span: s for s in spans}

    # Nothing repeated, nothing orphaned, Celery's spans included.
    assert len(by_id) == len(spans), "a span was exported twice"
    orphans = [s for s in spans if s.parent is not None and s.parent not in by_id]
    assert not orphans, [(s.name, s.parent) for s in orphans]
    assert any(s.name.startswith(("run/", "apply_async/")) for s in spans)  # Celery's

    # One trace: the caller's, every span of the workflow and its child in it.
    assert {s.trace for s in ours} == {run["trace"]}
    workflow_id = run["workflow_id"]
    runs = [s for s in ours if s.name.startswith("workflow ")]
    parent_run = [s for s in runs if s.attributes["durable.workflow_id"] == workflow_id]
    assert len(parent_run) == 1
    root = parent_run[0]
    assert root.parent == run["caller"]
    assert root.attributes["durable.status"] == "failed"
    assert root.status == "ERROR"
    children = [s for s in runs if s.attributes["durable.workflow_id"] != workflow_id]
    assert len(children) == 1
    assert children[0].parent == root.span

    for span in ours:
        for name in RUN_ATTRIBUTES:
            assert name in span.attributes, (span.name, name)
        own_run = root if span.attributes["durable.workflow_id"] == workflow_id else children[0]
        if span is not root and span is not children[0]:
            assert span.parent == own_run.span, span.name
        assert own_run.start <= span.start, span.name
        assert span.end <= own_run.end, span.name

    # A span per step attempt, never two for one attempt.
    steps = [s for s in ours if s.name.startswith("step ")]
    for span in steps:
        for name in STEP_ATTRIBUTES:
            assert name in span.attributes, (span.name, name)
    attempts = Counter(tuple(s.attributes[name] for name in ATTEMPT) for s in steps)
    assert max(attempts.values()) == 1, attempts
    names = Counter(s.attributes["durable.step"] for s in steps)
    assert names == {
        "telemetry.apps.reserve": 1,
        "telemetry.apps.charge": 2,  # the retry is an attempt of its own
        "telemetry.apps.pack": 1,
        "telemetry.apps.notify": 1,
        "telemetry.apps.unreserve": 1,
    }
    retried = [s for s in steps if s.attributes.get("durable.retry")]
    assert [s.attributes["durable.attempt"] for s in retried] == [1]
    failed = [s for s in steps if s.status == "ERROR"]
    assert [s.attributes["durable.step"] for s in failed] == ["telemetry.apps.notify"]

    # Timer, signal wait, child (linked to its run), compensation: once each.
    kinds = Counter(s.name for s in ours if not s.name.startswith(("step ", "workflow ")))
    assert kinds == {
        "timer": 1,
        "signal approve": 1,
        "child telemetry.apps.ship": 1,
        "compensation": 1,
    }
    child_span = next(s for s in ours if s.name.startswith("child "))
    assert child_span.links == [children[0].span]
    timer = next(s for s in ours if s.name == "timer")
    assert timer.end - timer.start >= 250_000_000  # the 0.3 s sleep

    # Celery's own spans are in the workflow's trace too, none left dangling.
    celery = [s for s in spans if s.scope and "celery" in s.scope and "durable" not in s.scope]
    assert celery
    assert all(_in_trace(s, by_id) for s in celery if s.trace == run["trace"])


def _in_trace(span: Span, by_id: dict[str, Span]) -> bool:
    while span.parent is not None:
        span = by_id[span.parent]
    return span.name == "caller" or span.name.startswith(("run/", "apply_async/"))
