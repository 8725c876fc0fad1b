"""``durable patches | export | replay-check`` as subprocesses, on a store filled by hand.

The journals are written through the store API as a patched workflow's runs leave them:
one from before the patch (old branch), one that journaled the marker, one that has not
reached the patch yet, and one finished (not open, so not counted).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from celery_durable.engine.journal import Event, Instance, Kind, State, Status
from celery_durable.stores.base import Store, open_store

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
APP = """
from celery import Celery
from celery_durable import Durable

app = Celery("patchapp", broker="memory://", set_as_current=False)
app.conf.durable_store = {store!r}
durable = Durable(app)

@durable.step
def a():
    return 1

@durable.step
def b():
    return 2

@durable.workflow(name="patchapp.flow")
async def flow(ctx):
    await ctx.step(a)
    if ctx.patched("use-b"):
        await ctx.step(b)
    await ctx.wait_signal("go")
    ctx.deprecate_patch("retired")
    return "done"
"""


def _step(seq: int, name: str, state: State = State.COMPLETED) -> Event:
    return Event(seq, Kind.STEP, f"patchapp.{name}", "[[], {}]", state, T0, output="1")


def _marker(seq: int, name: str) -> Event:
    return Event(seq, Kind.PATCH, name, None, State.COMPLETED, T0, completed_at=T0)


def _signal(seq: int) -> Event:
    return Event(seq, Kind.SIGNAL, "go", "[[null], {}]", State.SCHEDULED, T0)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    url = f"sqlite:///{tmp_path}/journal.sqlite3"
    (tmp_path / "patchapp.py").write_text(APP.format(store=url))
    store: Store = open_store(url)
    journals = {
        "old": [_step(0, "a"), _signal(1)],  # before the patch: a, then the wait
        "marked": [_step(0, "a"), _marker(1, "use-b"), _step(2, "b"), _signal(3)],
        "early": [_step(0, "a")],  # its next pass reaches the patch on new ground
        "done": [_step(0, "a"), _marker(1, "use-b"), _step(2, "b")],
        "drifted": [_step(0, "b")],  # does not replay at all
    }
    for minutes, (name, events) in enumerate(journals.items()):
        at = T0 + timedelta(minutes=minutes)
        status = Status.COMPLETED if name == "done" else Status.RUNNING
        store.create(Instance(name, "patchapp.flow", status, "[[], {}]", "json", at, at), events)
    store.close()
    return tmp_path


def _celery(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "patchapp", "durable", *args],
        cwd=folder,
        env=dict(os.environ, PYTHONPATH=str(folder), PYTHONWARNINGS=""),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def test_patches_counts_what_the_open_instances_need(folder: Path) -> None:
    proc = _celery(folder, "patches")
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line for line in proc.stdout.splitlines() if line.strip()}
    assert rows["use-b"].split()[1:4] == ["1", "1", "1"]  # old, marker, not reached
    assert "keep both branches: 1 open instance(s) replay the old one" in rows["use-b"]
    assert rows["retired"].split()[1:4] == ["0", "0", "0"]
    assert "the old branch can go: keep only the new code" in rows["retired"]
    assert "1 open instance(s) do not replay the current code at all" in proc.stdout

    data = json.loads(_celery(folder, "patches", "--json").stdout)
    assert data["not_replaying"] == 1
    by_id = {p["patch"]: p for p in data["patches"]}
    assert by_id["use-b"]["in_code"] is True
    assert (by_id["use-b"]["old_branch"], by_id["use-b"]["marker"]) == (1, 1)


def test_replay_check_reports_every_open_instance(folder: Path) -> None:
    proc = _celery(folder, "replay-check")
    assert proc.returncode == 1
    assert "OK        old (patchapp.flow): replays 2 event(s)" in proc.stdout
    assert "OK        marked (patchapp.flow): replays 4 event(s)" in proc.stdout
    assert (
        "MISMATCH  drifted (patchapp.flow): at seq 0 the journal holds step 'patchapp.b', "
        "the code asks for step 'patchapp.a'"
    ) in proc.stdout
    assert "done" not in proc.stdout.split("checked")[0]
    assert "checked 4 instance(s) with status pending,running,stuck: 3 ok, 1 not" in proc.stdout


def test_replay_check_filters_and_bad_status(folder: Path) -> None:
    proc = _celery(folder, "replay-check", "--status", "completed")
    assert proc.returncode == 0
    assert "OK        done" in proc.stdout
    none = _celery(folder, "replay-check", "--status", "failed")
    assert (none.returncode, none.stdout.strip()) == (0, "no instance with status failed to check")
    bad = _celery(folder, "replay-check", "--status", "running,sleeping")
    assert bad.returncode == 2
    assert "give statuses separated by commas" in bad.stderr


def test_export_writes_what_it_finds_and_names_what_it_does_not(folder: Path) -> None:
    out = folder / "exported"
    proc = _celery(folder, "export", "old", "nobody", "marked", "--to", str(out))
    assert proc.returncode == 1
    assert "no workflow instance with id 'nobody' in the store" in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["marked.json", "old.json"]
    data = json.loads((out / "marked.json").read_text())
    assert data["format"] == "celery_durable.journal"
    assert [e["kind"] for e in data["events"]] == ["step", "patch", "step", "signal"]

    (out / "junk.json").write_text("[1, 2]")
    check = _celery(folder, "replay-check", "--from-dir", str(out))
    assert check.returncode == 1
    assert "OK        old" in check.stdout
    assert "ERROR     junk.json (?): " in check.stdout

    every = _celery(folder, "export", "--status", "running", "--to", str(folder / "all"))
    assert every.returncode == 0, every.stderr
    assert len(list((folder / "all").glob("*.json"))) == 4
    assert _celery(folder, "export", "--to", str(out)).returncode == 2
