"""``celery -A app durable ...`` run for real, as a subprocess, on a store filled by hand.

No broker or worker is needed: the app uses ``memory://`` and the journal is written
through the store API, so every case is exact and fast.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from celery_durable.engine.journal import Event, Failure, Instance, Kind, State, Status
from celery_durable.runtime.codec import KombuCodec
from celery_durable.stores.base import Commit, Store, open_store

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
WORKFLOW = "cliapp.total"
APP_MODULE = """
from celery import Celery
from celery_durable import Durable

app = Celery("cliapp", broker="memory://", set_as_current=False)
app.conf.durable_store = {store!r}
durable = Durable(app)

@durable.step
def add(a, b):
    return a + b

@durable.workflow
async def total(ctx, a, b):
    return await ctx.step(add, a, b)
"""
PLAIN_APP_MODULE = """
from celery import Celery

app = Celery("plainapp", broker="memory://", set_as_current=False)
"""

Celery = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/journal.sqlite3"


@pytest.fixture
def celery(tmp_path: Path, store_url: str) -> Celery:
    """Run ``python -m celery ARGS`` in ``tmp_path``, where the test apps live."""
    (tmp_path / "cliapp.py").write_text(APP_MODULE.format(store=store_url))
    (tmp_path / "plainapp.py").write_text(PLAIN_APP_MODULE)
    env = dict(os.environ, PYTHONPATH=str(tmp_path), PYTHONWARNINGS="")

    def run(*args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "celery", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == code, (
            f"{args}: exit {proc.returncode}\n{proc.stdout}{proc.stderr}"
        )
        assert "Traceback" not in proc.stderr
        return proc

    return run


def _instance(store: Store, id: str, minutes: int, workflow: str = WORKFLOW) -> Instance:  # noqa: A002
    at = T0 + timedelta(minutes=minutes)
    instance = Instance(id, workflow, Status.PENDING, "[[2, 3], {}]", "json", at, at)
    stored, created = store.create(instance)
    assert created
    return stored


def _step(
    seq: int, state: State, output: str | None = None, failure: Failure | None = None
) -> Event:
    done = T0 + timedelta(seconds=seq + 2) if state.is_final else None
    return Event(
        seq,
        Kind.STEP,
        "cliapp.add",
        '[[2, 3], {"note": "x"}]',
        state,
        T0,
        output=output,
        failure=failure,
        started_at=T0 + timedelta(seconds=1),
        completed_at=done,
        attempts=1,
    )


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    """One instance in each interesting status, oldest first: done, failed, stuck, other."""
    store = open_store(store_url)
    codec = KombuCodec("json")
    boom = Failure("ValueError", "boom", "Traceback (most recent call last):\nValueError: boom")
    drift = Failure("NonDeterminismError", "expected step cliapp.add at seq 1")
    outcomes = [
        ("done", Status.COMPLETED, codec.dumps(5), None, [_step(0, State.COMPLETED, "5")]),
        ("failed", Status.FAILED, None, boom, [_step(0, State.FAILED, failure=boom)]),
        (
            "stuck",
            Status.STUCK,
            None,
            drift,
            [_step(0, State.COMPLETED, "5"), _step(1, State.SCHEDULED)],
        ),
    ]
    for minutes, (id_, status, output, failure, events) in enumerate(outcomes):
        instance = _instance(store, id_, minutes)
        commit = Commit(id_, instance.version, status, instance.updated_at, output, failure, events)
        assert store.commit(commit)
    _instance(store, "other", 10, workflow="cliapp.other")
    yield store
    store.close()


def _rows(out: str) -> list[list[str]]:
    return [line.split() for line in out.splitlines()]


def test_celery_help_lists_durable_and_its_commands(celery: Celery) -> None:
    assert "durable" in celery("--help").stdout
    for out in (
        celery("-A", "cliapp", "durable").stdout,
        celery("-A", "cliapp", "durable", "--help").stdout,
    ):
        assert all(command in out for command in ("list", "show", "retry"))


def test_list_prints_aligned_columns_newest_first(celery: Celery, store: Store) -> None:
    out = celery("-A", "cliapp", "durable", "list").stdout
    lines = out.splitlines()
    assert _rows(out)[0] == ["ID", "WORKFLOW", "STATUS", "VERSION", "CREATED", "UPDATED", "ERROR"]
    assert [row[0] for row in _rows(out)[1:]] == ["other", "stuck", "failed", "done"]
    column = lines[0].index("STATUS")
    assert [line[column:].split()[0] for line in lines[1:]] == [
        "pending",
        "stuck",
        "failed",
        "completed",
    ]
    assert _rows(out)[1][3] == "-"  # unknown: written by hand, no code version
    assert _rows(out)[1][4:6] == ["2024-05-01", "12:10:00"]
    assert _rows(out)[2][-1] == "NonDeterminismError"


def test_list_filters_and_json(celery: Celery, store: Store) -> None:
    def ids(*args: str) -> list[str]:
        return [
            row[0] for row in _rows(celery("-A", "cliapp", "durable", "list", *args).stdout)[1:]
        ]

    assert ids("--status", "stuck") == ["stuck"]
    assert ids("--workflow", "cliapp.other") == ["other"]
    assert ids("--workflow", WORKFLOW, "--limit", "2") == ["stuck", "failed"]
    assert (
        celery("-A", "cliapp", "durable", "list", "--status", "running").stdout
        == "no workflow instances\n"
    )
    assert (
        "'nope' is not one of"
        in celery("-A", "cliapp", "durable", "list", "--status", "nope", code=2).stderr
    )

    data = json.loads(
        celery("-A", "cliapp", "durable", "list", "--json", "--status", "failed").stdout
    )
    assert data == [
        {
            "id": "failed",
            "workflow": WORKFLOW,
            "status": "failed",
            "created_at": "2024-05-01T12:01:00+00:00",
            "updated_at": "2024-05-01T12:01:00+00:00",
            "error": {
                "type": "ValueError",
                "message": "boom",
                "details": "Traceback (most recent call last):\nValueError: boom",
            },
            "args": [2, 3],
            "kwargs": {},
            "result": None,
            "custom_status": None,
            "wake_at": None,
            "parent_id": None,
            "run": 1,
            "note": None,
            "code_version": None,
            "patches": [],
            "waiting_at": None,
        }
    ]
    (done,) = json.loads(
        celery("-A", "cliapp", "durable", "list", "--json", "--status", "completed").stdout
    )
    assert (done["id"], done["args"], done["result"]) == ("done", [2, 3], 5)


def test_show_prints_the_instance_and_its_decoded_journal(celery: Celery, store: Store) -> None:
    out = celery("-A", "cliapp", "durable", "show", "stuck").stdout
    assert "workflow:      cliapp.total\n" in out  # registered: no warning
    assert "status:        stuck\n" in out
    assert "input:         2, 3\n" in out
    assert "error:         NonDeterminismError: expected step cliapp.add at seq 1\n" in out
    assert "journal (2 events):" in out
    journal = out.split("journal (2 events):\n")[1].splitlines()
    assert journal[0].split() == [
        "SEQ",
        "KIND",
        "NAME",
        "ARGS",
        "STATE",
        "RESULT",
        "/",
        "ERROR",
        "ATTEMPTS",
        "SCHEDULED",
        "STARTED",
        "COMPLETED",
    ]
    assert journal[1].split()[:9] == [
        "0",
        "step",
        "cliapp.add",
        "2,",
        "3,",
        "note='x'",
        "completed",
        "5",
        "1",
    ]
    assert journal[2].split()[:6] == ["1", "step", "cliapp.add", "2,", "3,", "note='x'"]
    assert journal[2].split()[6] == "scheduled"

    failed = celery("-A", "cliapp", "durable", "show", "failed").stdout
    assert "ValueError: boom" in failed.split("journal")[1]
    assert failed.endswith("traceback:\nTraceback (most recent call last):\nValueError: boom\n")
    assert "result:        5\n" in celery("-A", "cliapp", "durable", "show", "done").stdout
    assert "(not registered here)" in celery("-A", "cliapp", "durable", "show", "other").stdout


def test_show_json(celery: Celery, store: Store) -> None:
    data = json.loads(celery("-A", "cliapp", "durable", "show", "--json", "done").stdout)
    assert (data["id"], data["status"], data["args"], data["kwargs"], data["result"]) == (
        "done",
        "completed",
        [2, 3],
        {},
        5,
    )
    [event] = data["journal"]
    assert event["args"] == [2, 3]
    assert event["kwargs"] == {"note": "x"}
    assert (event["state"], event["result"], event["error"], event["attempts"]) == (
        "completed",
        5,
        None,
        1,
    )
    assert event["completed_at"] == "2024-05-01T12:00:02+00:00"


def test_unknown_id_is_a_one_line_error(celery: Celery, store: Store) -> None:
    for command in ("show", "retry"):
        proc = celery("-A", "cliapp", "durable", command, "nope", code=1)
        assert proc.stderr == "Error: no workflow instance with id 'nope' in the store\n"


def test_retry_resumes_a_stuck_instance_only(celery: Celery, store: Store) -> None:
    out = celery("-A", "cliapp", "durable", "retry", "stuck").stdout
    assert out == "workflow stuck: stuck -> running; a worker replays it\n"
    instance = store.get("stuck")
    assert instance is not None
    assert instance.status is Status.RUNNING

    again = celery("-A", "cliapp", "durable", "retry", "stuck", code=1).stderr
    assert (
        again == "Error: workflow stuck is running: only stuck instances (resumed) and failed "
        "ones (rewound to their failure point) are retried\n"
    )
    assert (
        "is completed: only stuck"
        in celery("-A", "cliapp", "durable", "retry", "done", code=1).stderr
    )


def test_app_without_durable_says_how_to_fix_it(celery: Celery) -> None:
    for args in (["list"], []):
        proc = celery("-A", "plainapp", "durable", *args, code=1)
        assert proc.stderr == (
            "Error: app 'plainapp' has no Durable(app); create one in the app module "
            "(durable = Durable(app))\n"
        )


def test_signal_cancel_and_terminate_commands(celery: Celery, store: Store) -> None:
    # "stuck" keeps signals and takes a cancellation request (no worker runs here: the
    # memory broker only queues the resume message).
    out = celery("-A", "cliapp", "durable", "signal", "stuck", "approved", '{"by": "ann"}')
    assert "signal 'approved' sent" in out.stdout
    (signal,) = store.signals("stuck")
    assert (signal.name, signal.payload) == ("approved", '{"by": "ann"}')
    celery("-A", "cliapp", "durable", "signal", "stuck", "note", "plain-word")
    assert store.signals("stuck")[-1].payload == '"plain-word"'

    out = celery("-A", "cliapp", "durable", "cancel", "stuck")
    assert out.stdout == (
        "workflow stuck is stuck: the cancellation applies when it is retried "
        "(celery -A cliapp durable retry stuck); its compensations run then\n"
    )
    stuck = store.get("stuck")
    assert stuck is not None
    assert stuck.cancel_requested
    assert stuck.status is Status.STUCK

    out = celery("-A", "cliapp", "durable", "cancel", "other", "--terminate")
    assert "terminated" in out.stdout
    other = store.get("other")
    assert other is not None
    assert other.status is Status.CANCELLED

    out = celery("-A", "cliapp", "durable", "cancel", "done")
    assert "already completed: nothing to do" in out.stdout
    err = celery("-A", "cliapp", "durable", "signal", "done", "x", code=1)
    assert "is completed: signal 'x' was not delivered" in err.stderr


def test_cancel_of_a_live_instance_says_a_worker_compensates(celery: Celery, store: Store) -> None:
    out = celery("-A", "cliapp", "durable", "cancel", "other")
    assert out.stdout == "workflow other: cancellation requested; a worker compensates\n"
    other = store.get("other")
    assert other is not None
    assert other.cancel_requested


@pytest.mark.parametrize(
    ("text", "sent"),
    [
        ('{"by": "cli"}', '{"by": "cli"}'),
        ("  [1, 2]", "[1, 2]"),
        ('"quoted {text"', '"quoted {text"'),
        ("42", "42"),
        ("true", "true"),
        ("plain-word", '"plain-word"'),
        ("two words", '"two words"'),
    ],
)
def test_signal_payload_is_json_and_a_bare_word_a_string(
    celery: Celery, store: Store, text: str, sent: str
) -> None:
    celery("-A", "cliapp", "durable", "signal", "stuck", "go", text)
    assert store.signals("stuck")[-1].payload == sent


@pytest.mark.parametrize("text", ['{"by": "cli"', "[1, 2", '"open', "  {oops}"])
def test_signal_refuses_text_that_looks_like_json_and_does_not_parse(
    celery: Celery, store: Store, text: str
) -> None:
    err = celery("-A", "cliapp", "durable", "signal", "stuck", "go", text, code=2).stderr
    assert f"Invalid value for PAYLOAD: {text!r} is not valid JSON (" in err
    assert "nothing was sent" in err
    assert "To send this text as a plain string, pass it as a JSON string: " in err
    assert store.signals("stuck") == []


def test_signal_json_flag_requires_valid_json(celery: Celery, store: Store) -> None:
    err = celery(
        "-A", "cliapp", "durable", "signal", "stuck", "go", "plain-word", "--json", code=2
    ).stderr
    assert "'plain-word' is not valid JSON (Expecting value: line 1 column 1 (char 0))" in err
    assert """pass it as a JSON string: '"plain-word"'""" in err
    assert store.signals("stuck") == []
    celery("-A", "cliapp", "durable", "signal", "stuck", "go", "--json", '{"n": 1}')
    assert store.signals("stuck")[-1].payload == '{"n": 1}'


def test_show_prints_run_note_and_pending_signals(celery: Celery, store: Store) -> None:
    other = store.get("other")
    assert other is not None
    note = "waiting for a worker that knows workflow cliapp.other"
    at = T0 + timedelta(minutes=11)
    assert store.commit(Commit("other", other.version, Status.RUNNING, at, note=note))
    sent = T0 + timedelta(minutes=12)
    store.send_signal("other", "aproved", '{"by": "ann"}', sent, sent)
    store.send_signal("other", "approved", None, sent + timedelta(seconds=1), sent)

    out = celery("-A", "cliapp", "durable", "show", "other").stdout
    assert "run:           1\n" in out
    assert f"note:          {note}\n" in out
    section = out.split("pending signals (2):\n")[1].split("\n\njournal")[0]
    assert _rows(section) == [
        ["NAME", "PAYLOAD", "SENT"],
        ["aproved", "{'by':", "'ann'}", "2024-05-01", "12:12:00"],
        ["approved", "None", "2024-05-01", "12:12:01"],
    ]

    data = json.loads(celery("-A", "cliapp", "durable", "show", "--json", "other").stdout)
    assert (data["run"], data["note"]) == (1, note)
    assert data["pending_signals"] == [
        {"name": "aproved", "payload": {"by": "ann"}, "sent_at": "2024-05-01T12:12:00+00:00"},
        {"name": "approved", "payload": None, "sent_at": "2024-05-01T12:12:01+00:00"},
    ]
    quiet = celery("-A", "cliapp", "durable", "show", "done").stdout
    assert "pending signals" not in quiet
    assert "note:" not in quiet
