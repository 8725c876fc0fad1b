"""The app of the lost-step tests: ``celery -A chaos.trust_app worker|beat``.

Built from ``TRUST_*`` environment variables (broker, store, queue, record file) and run
with celery_durable's DEFAULT timing settings (step timeout 300 s, heartbeat 2 s, tick
5 s), except where a test sets ``TRUST_RESUME_TIME_LIMIT``: the promise that a step whose
worker died is sent again within 30 s must hold as shipped. The issue 9 prefork tests
(``test_trust_prefork.py``) set ``TRUST_STEP_TIMEOUT``, ``TRUST_HEARTBEAT_INTERVAL`` and
``TRUST_TICK_INTERVAL`` where the tick matters, and ``TRUST_DIR``, the directory of the
flag files their workflows read (see ``trust_workflows.py``, registered here too). The
eager-chain tests (``test_eager_prefork.py``) also set ``TRUST_MAX_RESENDS`` and
``TRUST_CRASH_POINTS`` (arm :func:`install_crash_points` in the workers).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from celery import Celery
from celery.signals import task_prerun
from kombu import Exchange, Queue

from celery_durable import Durable, StepFailed, WorkflowContext, current_step, faults
from chaos import trust_workflows
from chaos.mix import log_line

POISON = "trust.poison_workflow"
PLAIN_POISON = "trust.plain_poison_workflow"
NEVER_STARTS = "trust.never_starting_workflow"
QUICK = "trust.quick_workflow"
NAP = "trust.nap"
SHORT = "trust.short_steps"
OVER_TIME = "trust.over_time_workflow"
BLOCKS = "trust.blocking_workflow"
CRASHES = "trust.crashing_workflow"

#: How long each short step runs: shorter than one heartbeat interval (2 s).
SHORT_SECONDS = 0.3


def make_app(env: dict[str, str] | os._Environ[str] = os.environ) -> tuple[Celery, Durable]:
    app = Celery("trust", broker=env["TRUST_BROKER"], set_as_current=False)
    app.conf.update(
        task_default_queue=env["TRUST_QUEUE"],
        durable_store=env["TRUST_STORE"],
        # Celery's default (4) where a test sets it: a worker then holds unstarted steps.
        worker_prefetch_multiplier=int(env.get("TRUST_PREFETCH", "1")),
        broker_connection_retry_on_startup=True,
    )
    for setting in ("resume_time_limit", "step_timeout", "heartbeat_interval", "tick_interval"):
        if f"TRUST_{setting.upper()}" in env:
            app.conf[f"durable_{setting}"] = float(env[f"TRUST_{setting.upper()}"])
    if "TRUST_MAX_RESENDS" in env:
        app.conf.durable_max_resends = int(env["TRUST_MAX_RESENDS"])
    if "TRUST_EAGER_STEPS" in env:
        app.conf.durable_eager_steps = int(env["TRUST_EAGER_STEPS"])
    if "TRUST_START_IN_CALLER" in env:
        app.conf.durable_start_in_caller = env["TRUST_START_IN_CALLER"] == "1"
    if "TRUST_QUORUM_EXCHANGE" in env:
        # A RabbitMQ quorum queue on a direct or a topic exchange (Celery's native delayed
        # delivery needs a topic one) that, with TRUST_QUORUM_DELIVERY_LIMIT, drops a
        # message after that many deliveries (no dead-letter exchange).
        queue = env["TRUST_QUEUE"]
        arguments: dict[str, object] = {"x-queue-type": "quorum"}
        if "TRUST_QUORUM_DELIVERY_LIMIT" in env:
            arguments["x-delivery-limit"] = int(env["TRUST_QUORUM_DELIVERY_LIMIT"])
        app.conf.task_queues = [
            Queue(
                queue,
                Exchange(queue, type=env["TRUST_QUORUM_EXCHANGE"]),
                routing_key=queue,
                queue_arguments=arguments,
            )
        ]
    durable = Durable(app)
    record = Path(env["TRUST_RECORD"])
    trust_workflows.register(durable, record, Path(env.get("TRUST_DIR") or record.parent))

    def note(label: str, event: str) -> None:
        info = current_step()
        assert info is not None
        log_line(record, label, f"{info.idempotency_key}#{info.attempt}", event)

    @durable.step(name="trust.poison")
    def poison() -> None:
        note("poison", "start")
        os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer or a segfault would

    @app.task(name="trust.plain_poison", shared=False)
    def plain_poison() -> None:
        """An existing task (plain @app.task, early ack) that kills its process."""
        note("plain_poison", "start")
        os.kill(os.getpid(), signal.SIGKILL)

    @durable.step(name="trust.never_starts")
    def never_starts() -> None:
        note("never_starts", "start")  # never reached: its task_prerun handler kills it

    def kill_before_the_start_mark(**_: object) -> None:
        """A task_prerun handler that crashes the process (as a faulty instrumentation
        or a payload that crashes the interpreter would): before the step's start mark."""
        log_line(record, "never_starts", "-", "prerun")
        os.kill(os.getpid(), signal.SIGKILL)

    task_prerun.connect(kill_before_the_start_mark, sender=never_starts, weak=False)

    @durable.step(name="trust.over_time", time_limit=1)
    def over_time() -> None:
        note("over_time", "start")
        time.sleep(30)  # killed by its hard time limit every time

    @durable.step(name="trust.undo")
    def undo() -> str:
        note("undo", "start")
        return "undone"

    async def survive(ctx: WorkflowContext, step: object) -> str:
        try:
            async with ctx.saga() as saga:
                saga.compensate(undo)  # runs when the lost step fails the block
                await ctx.step(step)
        except StepFailed as failed:
            if failed.type != "StepLost":
                raise
            return f"{failed.type}: {failed.message}"
        return "unreachable"

    @durable.workflow(name=POISON)
    async def poison_workflow(ctx: WorkflowContext) -> str:
        return await survive(ctx, poison)

    @durable.workflow(name=NEVER_STARTS)
    async def never_starting_workflow(ctx: WorkflowContext) -> str:
        return await survive(ctx, never_starts)

    @durable.workflow(name=PLAIN_POISON)
    async def plain_poison_workflow(ctx: WorkflowContext) -> str:
        return await survive(ctx, plain_poison)

    @durable.step(name="trust.wake")
    def wake(label: str) -> str:
        note("wake", "start")
        return label

    @durable.workflow(name=NAP)
    async def nap(ctx: WorkflowContext, seconds: float) -> str:
        """A short timer: a resume message with an ETA that a worker holds unacked."""
        await ctx.step(wake, "before")
        await ctx.sleep(seconds)
        return str(await ctx.step(wake, "after"))

    @durable.step(name="trust.quick_retry", bind=True, max_retries=2)
    def quick_retry(self: Any) -> str:
        note("quick_retry", "start")
        if self.request.retries < 2:
            raise self.retry(countdown=0.2)  # shorter than a second
        return "retried"

    @durable.workflow(name=QUICK)
    async def quick_workflow(ctx: WorkflowContext) -> str:
        """Delays under a second: a 0.4 s timer, then Celery retries 0.2 s apart."""
        await ctx.sleep(0.4)
        return str(await ctx.step(quick_retry))

    @durable.workflow(name=OVER_TIME)
    async def over_time_workflow(ctx: WorkflowContext) -> str:
        return await survive(ctx, over_time)

    @durable.step(name="trust.short")
    def short(index: int) -> int:
        note("short", "start")
        time.sleep(SHORT_SECONDS)
        note("short", "end")
        return index

    @durable.workflow(name=SHORT)
    async def short_steps(ctx: WorkflowContext, count: int) -> int:
        total = 0
        for index in range(count):
            total += await ctx.step(short, index)
        return total

    @durable.workflow(name=BLOCKS)
    async def blocking_workflow(ctx: WorkflowContext) -> str:
        time.sleep(60)  # workflow code that blocks: a bug the resume time limit catches
        return "never"

    @durable.workflow(name=CRASHES)
    async def crashing_workflow(ctx: WorkflowContext) -> str:
        os.kill(os.getpid(), signal.SIGKILL)  # workflow code that kills its process
        return "never"

    return app, durable


def install_crash_points(record: Path, flags: Path) -> None:
    """Arm :mod:`celery_durable.faults` in this (worker) process: a pool process that
    reaches point ``P`` while the flag file ``<P>.<its pid>`` exists takes the file (an
    atomic rename), logs a ``fault`` line and SIGKILLs itself. A step arms its own
    process that way (``trust.eager_step`` with action ``"arm"``)."""

    def crash_if_armed(name: str) -> None:
        armed = flags / f"{name}.{os.getpid()}"
        try:
            os.rename(armed, flags / f"{name}.{os.getpid()}.fired")
        except FileNotFoundError:
            return
        log_line(record, "fault", name, "crash")
        os.kill(os.getpid(), signal.SIGKILL)

    faults.set_handler(crash_if_armed)


app = make_app()[0] if "TRUST_BROKER" in os.environ else None
if app is not None and os.environ.get("TRUST_CRASH_POINTS"):
    install_crash_points(
        Path(os.environ["TRUST_RECORD"]),
        Path(os.environ.get("TRUST_DIR") or Path(os.environ["TRUST_RECORD"]).parent),
    )
