"""``@durable.step(transactional=True)`` on a real worker, Redis, SQLite and PostgreSQL.

The step's writes (to a table in the store's own database) and its outcome commit
together: a step that succeeds leaves its row and its journaled result; one that fails
leaves neither row nor partial write, and its failure is journaled (the workflow's
compensation runs); a Celery retry (``autoretry_for`` or ``self.retry()``) rolls the
first run's writes back, so the rows are those of the run that succeeded; a copy of the
step delivered after its outcome runs nothing. (A kill between the writes and the commit:
``tests/chaos/test_transactional_steps.py``.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from celery import Celery
from sqlalchemy import Connection, text

from celery_durable import Durable, StepFailed, WorkflowContext

Worker = Callable[..., AbstractContextManager[Any]]


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/journal.sqlite3"
    url: str = request.getfixturevalue("postgres_db_url")
    return url


@pytest.fixture
def rows(store_url: str) -> Iterator[Callable[[], list[tuple[str, int]]]]:
    engine = sqlalchemy.create_engine(store_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE seats (who TEXT, n INTEGER)"))

    def read() -> list[tuple[str, int]]:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text("SELECT who, n FROM seats ORDER BY n"))]  # type: ignore[misc]

    yield read
    engine.dispose()


@pytest.fixture
def airline(durable: Durable) -> dict[str, Any]:
    runs: dict[str, int] = {"book": 0, "flaky": 0, "bound": 0}

    @durable.step(transactional=True)
    def book(conn: Connection, who: str, n: int) -> int:
        runs["book"] += 1
        conn.execute(text("INSERT INTO seats (who, n) VALUES (:w, :n)"), {"w": who, "n": n})
        if n < 0:
            raise ValueError(f"no seat {n}")
        return int(conn.execute(text("SELECT count(*) FROM seats")).scalar() or 0)

    @durable.step(
        transactional=True, autoretry_for=(ConnectionError,), max_retries=3, default_retry_delay=0.1
    )
    def flaky(conn: Connection, who: str) -> str:
        runs["flaky"] += 1
        conn.execute(
            text("INSERT INTO seats (who, n) VALUES (:w, :n)"), {"w": who, "n": runs["flaky"]}
        )
        if runs["flaky"] < 3:
            raise ConnectionError("the payment service is down")
        return "paid"

    @durable.step(transactional=True, bind=True, max_retries=2)
    def bound(self: Any, conn: Connection, who: str) -> str:
        runs["bound"] += 1
        conn.execute(
            text("INSERT INTO seats (who, n) VALUES (:w, :n)"), {"w": who, "n": 100 + runs["bound"]}
        )
        if runs["bound"] == 1:
            raise self.retry(countdown=0.1)
        return "done"

    @durable.step
    def release(who: str) -> str:
        return f"released {who}"

    @durable.workflow(name="tx.trip")
    async def trip(ctx: WorkflowContext, who: str, n: int) -> Any:
        try:
            async with ctx.saga() as saga:
                saga.compensate(release, who)
                return await ctx.step(book, who, n)
        except StepFailed as failed:
            return f"{failed.type}: {failed.message}"

    @durable.workflow(name="tx.retries")
    async def retries(ctx: WorkflowContext, who: str) -> list[str]:
        return [await ctx.step(flaky, who), await ctx.step(bound, who)]

    return {"runs": runs, "trip": trip, "retries": retries, "book": book}


def test_the_write_and_the_outcome_commit_together(
    airline: dict[str, Any], worker: Worker, rows: Callable[[], list[tuple[str, int]]]
) -> None:
    with worker():
        handle = airline["trip"].delay("ann", 7)
        assert handle.result(timeout=30) == 1
    assert rows() == [("ann", 7)]
    step = handle.history()[0]
    assert (step.state.value, step.result) == ("completed", 1)


def test_a_failing_step_leaves_no_write_and_its_failure_journaled(
    airline: dict[str, Any], worker: Worker, rows: Callable[[], list[tuple[str, int]]]
) -> None:
    with worker():
        handle = airline["trip"].delay("bob", -1)
        assert handle.result(timeout=30) == "ValueError: no seat -1"
    assert rows() == []
    assert handle.steps() == ["book", "release"]


def test_retries_roll_back_the_failed_runs_writes(
    airline: dict[str, Any], worker: Worker, rows: Callable[[], list[tuple[str, int]]]
) -> None:
    with worker():
        handle = airline["retries"].delay("cy")
        assert handle.result(timeout=30) == ["paid", "done"]
    assert airline["runs"]["flaky"] == 3
    assert airline["runs"]["bound"] == 2
    assert rows() == [("cy", 3), ("cy", 102)]  # only the runs that committed
    assert [e.attempts for e in handle.history()] == [3, 2]


def test_a_copy_after_the_outcome_runs_nothing(
    airline: dict[str, Any], worker: Worker, app: Celery, rows: Callable[[], list[tuple[str, int]]]
) -> None:
    with worker():
        handle = airline["trip"].delay("dee", 5)
        assert handle.result(timeout=30) == 1
        before = airline["runs"]["book"]
        # A copy of the journaled step, delivered again (run here through Celery's tracer).
        app.tasks[airline["book"].name].apply(("dee", 5), task_id=f"{handle.id}:0")
    assert airline["runs"]["book"] == before
    assert rows() == [("dee", 5)]


def test_the_readme_example_runs(durable: Durable, worker: Worker, store_url: str) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("### Exactly-once database steps") :]
    start = section.index("```python\n") + len("```python\n")
    code = section[start : section.index("\n```", start)]
    scope: dict[str, Any] = {"durable": durable}
    exec(compile(code, "README.md", "exec"), scope)  # the README's step, as shown
    engine = sqlalchemy.create_engine(store_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE bookings (flight TEXT, passenger TEXT)"))
    engine.dispose()

    @durable.workflow(name="tx.readme")
    async def fly(ctx: WorkflowContext) -> list[int]:
        return [
            await ctx.step(scope["book_seat"], "LH123", "ann"),
            await ctx.step(scope["book_seat"], "LH123", "bob"),
        ]

    with worker():
        assert fly.delay().result(timeout=30) == [1, 2]
