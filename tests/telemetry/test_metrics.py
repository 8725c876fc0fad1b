"""Metrics scraped from ``celery -A app durable metrics`` after real runs on prefork
workers, one of them killed in the middle of a step (its step is sent again), all
processes writing to one ``PROMETHEUS_MULTIPROC_DIR``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

from chaos.cluster import TESTS, Cluster, wait_for
from prometheus_client.parser import text_string_to_metric_families

from celery_durable.stores.base import open_store


def _start(env: dict[str, str], workflow: str, count: int) -> list[str]:
    full = {**os.environ, **env, "PYTHONWARNINGS": ""}
    full["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), full.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-m", "telemetry.starter", workflow, str(count)],
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout.split()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_metrics_after_real_runs_and_a_killed_worker(
    cluster: Cluster, tel_env: dict[str, str], tmp_path: Path
) -> None:
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    env = {**tel_env, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    cluster.env.update(env)
    first = cluster.worker("w1", concurrency=2)
    cluster.wait_ready(first)
    cluster.beat("beat")
    store = open_store(env["TEL_STORE"])
    try:
        plain = _start(env, "plain", 3)
        killed = _start(env, "killed", 1)[0]
        marks = Path(env["TEL_MARKS"])
        wait_for(lambda: (marks / f"{killed}:0.1").exists(), 30, "the slow step started")
        cluster.kill(first)
        cluster.wait_ready(cluster.worker("w2", concurrency=2))

        def ended() -> bool:
            return all(
                (i := store.get(wid)) is not None and i.status.value == "completed"
                for wid in [*plain, killed]
            )

        wait_for(ended, 60, "every workflow completed")
        server = cluster._spawn(
            "metrics", ["durable", "metrics", "--host", "127.0.0.1", "--port", "0"]
        )
        port: list[int] = []

        def listening() -> bool:
            found = re.search(r"http://127\.0\.0\.1:(\d+)/metrics", server.log_text())
            if found:
                port.append(int(found.group(1)))
            return bool(found)

        wait_for(listening, 30, "durable metrics listening")
        with urllib.request.urlopen(f"http://127.0.0.1:{port[0]}/metrics", timeout=10) as r:
            text = r.read().decode()
    finally:
        store.close()
    samples = _samples(text)

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    plain_wf, killed_wf = "telemetry.apps.plain", "telemetry.apps.killed"
    assert value("durable_workflows_started_total", workflow=plain_wf) == 3
    assert value("durable_workflows_completed_total", workflow=plain_wf) == 3
    assert value("durable_workflows_started_total", workflow=killed_wf) == 1
    assert value("durable_workflows_completed_total", workflow=killed_wf) == 1
    assert value("durable_workflows_failed_total", workflow=plain_wf) == 0
    # Two quick steps per plain workflow and one after the slow step: each ran once.
    assert value("durable_step_duration_seconds_count", step="telemetry.apps.quick") == 7
    assert value("durable_step_queue_delay_seconds_count", step="telemetry.apps.quick") == 7
    # The slow step's first attempt died with its worker: only the second one reported.
    assert value("durable_step_duration_seconds_count", step="telemetry.apps.slow") == 1
    assert value("durable_resends_total", cause="dead_worker") == 1
    assert value("durable_resends_total", cause="lost_message") == 0
    assert value("durable_resends_total", cause="step_lost") == 0
    assert value("durable_tick_claimed_instances_count") >= 1
    assert value("durable_tick_claimed_instances_sum") >= 1
    assert ("durable_tick_lag_seconds", ()) in samples
    assert value("durable_instances", status="completed") == 4
    assert value("durable_instances", status="running") == 0
