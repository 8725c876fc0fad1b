"""Telemetry fixtures: prefork worker subprocesses on the real Redis, a store per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from chaos.cluster import Cluster


@pytest.fixture
def tel_env(tmp_path: Path, redis_url: str) -> dict[str, str]:
    """The ``TEL_*`` variables of the test's processes (``telemetry.apps``)."""
    marks = tmp_path / "marks"
    marks.mkdir()
    return {
        "TEL_BROKER": redis_url,
        "TEL_STORE": f"sqlite:///{tmp_path / 'journal.sqlite3'}",
        "TEL_QUEUE": f"tel-{uuid.uuid4().hex[:8]}",
        "TEL_MARKS": str(marks),
    }


@pytest.fixture
def cluster(tmp_path: Path, tel_env: dict[str, str]) -> Iterator[Cluster]:
    """Worker and beat subprocesses of ``telemetry.apps``, all stopped at the end."""
    running = Cluster(root=tmp_path, env=tel_env, app_module="telemetry.apps")
    try:
        yield running
    except BaseException:
        print(running.logs())
        raise
    finally:
        running.stop_all()
