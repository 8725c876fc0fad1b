"""The app the crash tests run: durable workflows, and a bare Celery chain as the baseline.

``make_app`` builds it; ``worker_app`` builds it from ``CHAOS_*`` environment variables for
``celery -A chaos.worker_app worker|beat``, and the test process builds the same app to
start workflows and chains. Every task records each start and end as a line of the record
file (``label key event pid time``), so a test counts executions across processes.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery import Celery

from celery_durable import Durable, WorkflowContext, current_step
from chaos.mix import log_line

# Workflow names, as the journal records them (the test process starts them by name).
KILL_WORKFLOW = "chaos.three_steps"
SLEEP_WORKFLOW = "chaos.step_sleep_step"

#: How long step B (and the chain's middle task) runs.
SLOW_SECONDS = 4.0


@dataclass(frozen=True)
class ChaosApp:
    """The app and what the tests call on it."""

    app: Celery
    durable: Durable
    chain_tasks: tuple[Any, Any, Any]


@dataclass(frozen=True)
class Record:
    """One line of the record file."""

    label: str
    key: str
    event: str
    pid: int
    at: float


def read_records(path: Path) -> list[Record]:
    """Every line written so far (a line being written is skipped)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 5:
            out.append(Record(parts[0], parts[1], parts[2], int(parts[3]), float(parts[4])))
    return out


def settings_env(
    *, broker: str, store: str, queue: str, record: Path, eta_max: float = 2.0
) -> dict[str, str]:
    """The ``CHAOS_*`` variables ``worker_app`` reads."""
    return {
        "CHAOS_BROKER": broker,
        "CHAOS_STORE": store,
        "CHAOS_QUEUE": queue,
        "CHAOS_RECORD": str(record),
        "CHAOS_ETA_MAX": str(eta_max),
    }


def from_env(env: dict[str, str] | os._Environ[str] = os.environ) -> ChaosApp:
    """The app described by ``CHAOS_*`` variables."""
    return make_app(
        broker=env["CHAOS_BROKER"],
        store=env["CHAOS_STORE"],
        queue=env["CHAOS_QUEUE"],
        record=Path(env["CHAOS_RECORD"]),
        eta_max=float(env["CHAOS_ETA_MAX"]),
    )


def make_app(*, broker: str, store: str, queue: str, record: Path, eta_max: float) -> ChaosApp:
    """A Celery app on ``broker`` (default visibility timeout), journal in ``store``.

    Its queue is the test's own, so tests never consume each other's messages (the beat
    tick goes there too).
    """
    app = Celery("chaos", broker=broker, set_as_current=False)
    app.conf.update(
        task_default_queue=queue,
        durable_store=store,
        durable_tick_interval=0.5,
        durable_heartbeat_interval=0.5,
        durable_step_timeout=5,
        durable_eta_max=eta_max,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        # No broker_transport_options: Redis keeps its default visibility timeout (3600 s).
    )
    durable = Durable(app)

    def write(label: str, key: str, event: str) -> None:
        log_line(record, label, key, event)

    def durable_key() -> str:
        info = current_step()
        assert info is not None
        return f"{info.idempotency_key}#attempt{info.attempt}"

    def traced(label: str, seconds: float) -> None:
        key = durable_key()
        write(label, key, "start")
        time.sleep(seconds)
        write(label, key, "end")

    @durable.step(name="chaos.a")
    def step_a() -> str:
        traced("A", 0)
        return "a"

    @durable.step(name="chaos.b")
    def step_b() -> str:
        traced("B", SLOW_SECONDS)
        return "b"

    @durable.step(name="chaos.c")
    def step_c() -> str:
        traced("C", 0)
        return "c"

    @durable.workflow(name=KILL_WORKFLOW)
    async def three_steps(ctx: WorkflowContext) -> list[str]:
        return [await ctx.step(step_a), await ctx.step(step_b), await ctx.step(step_c)]

    @durable.step(name="chaos.before")
    def before() -> None:
        traced("before", 0)

    @durable.step(name="chaos.after")
    def after() -> None:
        traced("after", 0)

    @durable.workflow(name=SLEEP_WORKFLOW)
    async def step_sleep_step(ctx: WorkflowContext, seconds: float) -> str:
        await ctx.step(before)
        await ctx.sleep(seconds)
        await ctx.step(after)
        return "woke"

    # The baseline: the same three tasks as a bare chain, with the options a careful
    # Celery user sets so a killed worker's task is redelivered.
    # Not shared: a shared task would be registered into every app made after it.
    bare = {
        "acks_late": True,
        "reject_on_worker_lost": True,
        "ignore_result": True,
        "shared": False,
    }

    def chain_traced(task: Any, label: str, seconds: float) -> None:
        key = str(task.request.id)
        write(label, key, "start")
        time.sleep(seconds)
        write(label, key, "end")

    @app.task(name="chaos.chain_a", bind=True, **bare)
    def chain_a(self: Any) -> None:
        chain_traced(self, "chain_A", 0)

    @app.task(name="chaos.chain_b", bind=True, **bare)
    def chain_b(self: Any) -> None:
        chain_traced(self, "chain_B", SLOW_SECONDS)

    @app.task(name="chaos.chain_c", bind=True, **bare)
    def chain_c(self: Any) -> None:
        chain_traced(self, "chain_C", 0)

    return ChaosApp(app=app, durable=durable, chain_tasks=(chain_a, chain_b, chain_c))
