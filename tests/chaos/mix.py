"""The fault soak's app: a mix of durable workflows whose every outcome can be predicted.

``make_mix_app`` builds it from a :class:`MixConfig`; ``mix_worker`` builds it from the
``MIX_*`` environment for ``celery -A chaos.mix_worker worker|beat``, and the harness
builds the same app in its own process to start workflows and send signals.

The mix covers what the library promises to carry through a crash: steps with Celery
retries (``autoretry_for``), local runs (``ctx.run``), short timers (ETA messages) and
long ones (store only, woken by the tick), signals, ``ctx.gather`` with a child
workflow, a saga whose compensation runs, a saga cancelled from outside, and what issue 9
promised:

* ``mix.renewed``: run 1 races a slow step against a short timer (``ctx.first``), the
  timer wins, and it continues as new while the step still runs (a straggler); run 2
  calls the same step with other arguments. Its result must be run 2's own, under run 2's
  idempotency key, and nothing of the straggler may be journaled into run 2;
* ``mix.poisoned``: a saga around a poison step that SIGKILLs its own pool process every
  run: it must fail with ``StepLost`` after ``durable_max_resends`` re-sends, and
  compensate;
* ``mix.short_steps``: a chain of steps shorter than the heartbeat interval, the steps
  the worker-kill faults aim at: a killed one must run again within
  ``durable_heartbeat_interval`` x 5 plus the tick.

Every step writes its life to the run log (a file of ``label key event pid time`` lines,
one ``O_APPEND`` write each, so lines from many processes never mix): ``start``, then
``effect`` or ``dedup``, then ``end`` (or ``raise``). Its side effect goes through an
idempotent "external service": a file named after the step's idempotency key, created with
``O_EXCL``; the first run of a key applies the effect, a later run of the same key is
deduplicated. So the log shows how many times a step ran, and whether it took effect
exactly once.

Test plumbing, none of it in the library:

* every task message is published twice while the file ``<root>/duplicate`` exists
  (``app.amqp.send_task_message`` wrapped), the copy up to 3 s late: duplicate delivery
  on demand, both racing the first copy and long after it;
* a crash point of :mod:`celery_durable.faults` is armed by creating
  ``<root>/armed/<point>``; the first pool process to reach it takes the file (an atomic
  rename, so exactly one does), logs it and SIGKILLs itself. A worker's main process
  reaches ``store.mid_commit`` too since it journals the loss of a pool process's step;
  it never fires there: a main process killed is the ``worker_group_kill`` fault.
"""

from __future__ import annotations

import os
import random
import signal
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from celery import Celery
from kombu import Exchange, Queue

from celery_durable import Durable, WorkflowContext, current_step, faults
from celery_durable.stores.base import Store

#: The second copy of a duplicated message arrives up to this many seconds after the first.
LATE_COPY = 3.0

#: The idempotency key's attempt number is appended to a log key as ``#attemptN``.
ATTEMPT_SEP = "#attempt"

#: ``mix.renewed``: the timer its run 1 races the slow step against (seconds).
RACE_TIMER = 0.3

#: ``mix.renewed``: what its step returns (run 1's straggler gives ``probe 0 <key>``).
PROBE = "probe"

#: Label of the poison step's runs in the run log.
POISON = "poison"

#: Labels of ``mix.short_steps``'s steps start with this (``short0``, ``short1``, ...).
SHORT = "short"


class CreditRefused(Exception):
    """The destination bank refuses the credit (a business failure: not retried)."""


class Flaky(Exception):
    """A transient failure; the step's Celery retry options retry it."""


#: The quorum queue's delivery limit in the soak: below ``durable_max_resends`` + 1, so
#: a broker redelivery that counted would drop a poison step before the journal's bound.
QUORUM_DELIVERY_LIMIT = 3


@dataclass(frozen=True)
class MixConfig:
    """Where the mix runs and writes; ``env()`` carries it to worker subprocesses."""

    broker: str
    store: str
    queue: str
    root: Path
    generic_store: bool = False
    """On PostgreSQL, use the generic SQLAlchemy store (multi-statement transactions)
    instead of the single-statement fast path."""
    changed_code: bool = False
    """A bad deploy: ``mix.long_steps`` changed so that its journals no longer replay,
    and ``mix.timers`` missing (see :func:`make_mix_app`)."""
    quorum: bool = False
    """On RabbitMQ: the queue is a quorum queue on a topic exchange (Celery's native
    delayed delivery) with a low ``x-delivery-limit`` (:data:`QUORUM_DELIVERY_LIMIT`)."""

    @property
    def log(self) -> Path:
        return self.root / "runs.log"

    @property
    def effects(self) -> Path:
        return self.root / "effects"

    @property
    def armed(self) -> Path:
        return self.root / "armed"

    @property
    def duplicate_flag(self) -> Path:
        return self.root / "duplicate"

    def env(self) -> dict[str, str]:
        return {
            "MIX_BROKER": self.broker,
            "MIX_STORE": self.store,
            "MIX_QUEUE": self.queue,
            "MIX_ROOT": str(self.root),
            "MIX_GENERIC_STORE": "1" if self.generic_store else "",
            "MIX_CHANGED_CODE": "1" if self.changed_code else "",
            "MIX_QUORUM": "1" if self.quorum else "",
        }

    @classmethod
    def from_env(cls, env: dict[str, str] | os._Environ[str] = os.environ) -> MixConfig:
        return cls(
            broker=env["MIX_BROKER"],
            store=env["MIX_STORE"],
            queue=env["MIX_QUEUE"],
            root=Path(env["MIX_ROOT"]),
            generic_store=bool(env.get("MIX_GENERIC_STORE")),
            changed_code=bool(env.get("MIX_CHANGED_CODE")),
            quorum=bool(env.get("MIX_QUORUM")),
        )


@dataclass(frozen=True)
class MixApp:
    """The app and the workflows the harness starts."""

    app: Celery
    durable: Durable
    config: MixConfig


def log_line(path: Path, label: str, key: str, event: str) -> None:
    """Append one run-log line (one ``write``: atomic with ``O_APPEND``)."""
    line = f"{label} {key} {event} {os.getpid()} {time.time():.6f}\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _open_store(config: MixConfig) -> Store | str:
    if not config.generic_store:
        return config.store
    from celery_durable.stores.sqlalchemy import SQLAlchemyStore

    return SQLAlchemyStore(config.store)


def _duplicate_messages(app: Celery, flag: Path) -> None:
    """While ``flag`` exists, publish every task message twice (same id, same body): once
    as asked, and again up to :data:`LATE_COPY` seconds later (an ETA), so copies arrive
    both alongside the first and well after it was handled, as a redelivery does."""
    amqp = app.amqp
    send = amqp.send_task_message

    def send_twice(producer: Any, name: str, message: Any, **kwargs: Any) -> Any:
        sent = send(producer, name, message, **kwargs)
        if flag.exists():
            headers = dict(message.headers)
            eta = datetime.now(timezone.utc)
            if headers.get("eta"):
                eta = max(eta, datetime.fromisoformat(headers["eta"]))
            headers["eta"] = (eta + timedelta(seconds=random.uniform(0, LATE_COPY))).isoformat()
            send(producer, name, message._replace(headers=headers), **kwargs)
        return sent

    amqp.send_task_message = send_twice


def install_crash_points(config: MixConfig) -> None:
    """Arm :mod:`celery_durable.faults` in this process: a point crashes the first
    process that reaches it after ``<root>/armed/<point>`` was created."""
    config.armed.mkdir(parents=True, exist_ok=True)
    main = os.getpid()  # a worker's main process imports this before it forks its pool

    def crash_if_armed(name: str) -> None:
        if os.getpid() == main:
            return
        armed = config.armed / name
        try:
            os.rename(armed, config.armed / f"{name}.fired")
        except FileNotFoundError:
            return
        log_line(config.log, "fault", name, "crash")
        os.kill(os.getpid(), signal.SIGKILL)

    faults.set_handler(crash_if_armed)


def make_mix_app(config: MixConfig) -> MixApp:
    """The Celery app with the mix's steps and workflows (short timeouts: a soak round
    lasts seconds)."""
    config.root.mkdir(parents=True, exist_ok=True)
    config.effects.mkdir(exist_ok=True)
    app = Celery("mix", broker=config.broker, set_as_current=False)
    app.conf.update(
        task_default_queue=config.queue,
        durable_tick_interval=0.5,
        durable_heartbeat_interval=0.5,
        durable_step_timeout=5,
        durable_eta_max=2.0,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
    )
    if config.quorum:
        exchange = Exchange(config.queue, type="topic")
        arguments = {"x-queue-type": "quorum", "x-delivery-limit": QUORUM_DELIVERY_LIMIT}
        app.conf.task_queues = [
            Queue(config.queue, exchange, routing_key=config.queue, queue_arguments=arguments)
        ]
    durable = Durable(app, store=_open_store(config))
    _duplicate_messages(app, config.duplicate_flag)

    def key() -> tuple[str, str]:
        """``(idempotency key, log key)`` of the running step."""
        info = current_step()
        assert info is not None, "a mix step runs inside a workflow"
        return info.idempotency_key, f"{info.idempotency_key}{ATTEMPT_SEP}{info.attempt}"

    def effect(label: str, seconds: float = 0.0) -> None:
        """Run for ``seconds``, then apply this step's effect once per idempotency key."""
        idem, log_key = key()
        log_line(config.log, label, log_key, "start")
        time.sleep(seconds)
        marker = config.effects / idem.replace("/", "_")
        try:
            os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            log_line(config.log, label, log_key, "effect")
        except FileExistsError:
            log_line(config.log, label, log_key, "dedup")
        log_line(config.log, label, log_key, "end")

    @durable.step(name="mix.work")
    def work(label: str, seconds: float = 0.0) -> str:
        effect(label, seconds)
        return label

    @durable.step(name="mix.debit")
    def debit(account: str, amount: int) -> str:
        effect("debit")
        return f"debit-{account}-{amount}"

    @durable.step(name="mix.credit")
    def credit(account: str, amount: int, refuse: bool) -> str:
        if refuse:
            _idem, log_key = key()
            log_line(config.log, "credit", log_key, "start")
            log_line(config.log, "credit", log_key, "raise")
            raise CreditRefused(f"account {account} refuses {amount}")
        effect("credit")
        return f"credit-{account}-{amount}"

    @durable.step(name="mix.refund")
    def refund(account: str, amount: int) -> str:
        effect("refund")
        return f"refund-{account}-{amount}"

    @durable.step(name="mix.hold")
    def hold() -> None:
        effect("hold")

    @durable.step(name="mix.unhold")
    def unhold() -> None:
        effect("unhold")

    @durable.step(
        name="mix.flaky",
        autoretry_for=(Flaky,),
        max_retries=20,
        default_retry_delay=0.2,
        retry_backoff=False,
        retry_jitter=False,
    )
    def flaky(failures: int) -> str:
        info = current_step()
        assert info is not None
        if info.attempt <= failures:
            log_key = f"{info.idempotency_key}{ATTEMPT_SEP}{info.attempt}"
            log_line(config.log, "flaky", log_key, "start")
            log_line(config.log, "flaky", log_key, "raise")
            raise Flaky(f"attempt {info.attempt} of {failures} planned failures")
        effect("flaky")
        return "flaky-ok"

    @durable.step(name="mix.probe")
    def probe(n: int, seconds: float) -> str:
        idem, _log_key = key()
        effect(f"{PROBE}{n}", seconds)
        return f"{PROBE} {n} {idem}"

    @durable.step(name="mix.poison")
    def poison() -> None:
        _idem, log_key = key()
        log_line(config.log, POISON, log_key, "start")
        os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer or a segfault would

    @durable.step(name="mix.reserve")
    def reserve(account: str) -> str:
        effect("reserve")
        return f"reserved-{account}"

    @durable.step(name="mix.release")
    def release(account: str) -> str:
        effect("release")
        return f"released-{account}"

    def new_token() -> str:
        return uuid.uuid4().hex

    @durable.workflow(name="mix.transfer")
    async def transfer(ctx: WorkflowContext, account: str, amount: int, refuse: bool) -> str:
        async with ctx.saga() as saga:
            await ctx.step(debit, account, amount)
            saga.compensate(refund, account, amount)
            await ctx.step(credit, "dst", amount, refuse)
        return "transferred"

    @durable.workflow(name="mix.retry_and_run")
    async def retry_and_run(ctx: WorkflowContext, failures: int) -> list[str]:
        token = await ctx.run(new_token)
        done = await ctx.step(flaky, failures)
        return [token, done]

    if not config.changed_code:  # the bad deploy lacks it: its passes wait for the code

        @durable.workflow(name="mix.timers")
        async def timers(ctx: WorkflowContext, short: float, long: float) -> str:
            await ctx.sleep(short)  # within durable_eta_max: an ETA message
            await ctx.step(work, "tick")
            await ctx.sleep(long)  # beyond it: only the store knows, the tick wakes it
            await ctx.step(work, "tock")
            return "slept"

    @durable.workflow(name="mix.signals")
    async def signals(ctx: WorkflowContext) -> list[Any]:
        first = await ctx.wait_signal("go", timeout=600)
        second = await ctx.wait_signal("go", timeout=600)
        await ctx.step(work, "signalled")
        return [first, second]

    @durable.workflow(name="mix.child")
    async def child(ctx: WorkflowContext, n: int) -> int:
        await ctx.step(work, "child", 0.2)
        await ctx.sleep(0.3)
        return n * 10

    @durable.workflow(name="mix.fanout")
    async def fanout(ctx: WorkflowContext, seconds: float) -> list[Any]:
        return await ctx.gather(
            ctx.step(work, "fan0", seconds),
            ctx.step(work, "fan1", seconds),
            ctx.child(child, 3),
        )

    @durable.workflow(name="mix.cancelled")
    async def cancelled(ctx: WorkflowContext, seconds: float) -> str:
        async with ctx.saga() as saga:
            await ctx.step(hold)
            saga.compensate(unhold)
            await ctx.step(work, "held", seconds)  # the soak cancels it about here
        return "not cancelled"

    @durable.workflow(name="mix.renewed")
    async def renewed(
        ctx: WorkflowContext, slow: float, earlier: list[Any] | None = None
    ) -> list[Any]:
        if earlier is None:  # run 1: the timer wins, the step goes on as a straggler
            winner, _ = await ctx.first(ctx.step(probe, 0, slow), ctx.sleep(RACE_TIMER))
            ctx.continue_as_new(slow, [ctx.run_number, winner, str(ctx.uuid4())])
        mine = await ctx.step(probe, 1, 0.2)  # the same step (and seq) as run 1's
        return [earlier, [ctx.run_number, str(ctx.uuid4()), mine]]

    @durable.workflow(name="mix.poisoned")
    async def poisoned(ctx: WorkflowContext, account: str) -> str:
        async with ctx.saga() as saga:
            await ctx.step(reserve, account)
            saga.compensate(release, account)
            await ctx.step(poison)  # fails StepLost after durable_max_resends re-sends
        return "not lost"

    @durable.workflow(name="mix.short_steps")
    async def short_steps(ctx: WorkflowContext, count: int, seconds: float) -> list[str]:
        done = []
        for i in range(count):
            done.append(await ctx.step(work, f"{SHORT}{i}", seconds))
        return done

    if config.changed_code:
        # The bad deploy: the first command is now another step, so a journal written by
        # the real code parks as stuck at its next pass (and nothing new is committed).
        @durable.workflow(name="mix.long_steps")
        async def long_steps_changed(ctx: WorkflowContext, seconds: float) -> list[str]:
            return [await ctx.step(debit, "changed", 1), await ctx.step(work, "long2", seconds)]

    else:

        @durable.workflow(name="mix.long_steps")
        async def long_steps(ctx: WorkflowContext, seconds: float) -> list[str]:
            return [await ctx.step(work, "long1", seconds), await ctx.step(work, "long2", seconds)]

    return MixApp(app=app, durable=durable, config=config)
