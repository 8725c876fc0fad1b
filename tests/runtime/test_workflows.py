"""Workflows and steps end to end: a real worker on a real Redis broker, a real store."""

from __future__ import annotations

import threading
import time
from collections import Counter
from decimal import Decimal
from typing import Any

import pytest
from celery import Celery

from celery_durable import (
    Durable,
    SerializationError,
    Status,
    StepFailed,
    WorkflowContext,
    WorkflowFailed,
    WorkflowIdConflict,
    WorkflowStuck,
    current_step,
)
from runtime.waiting import wait_for


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/journal.sqlite3"
    url: str = request.getfixturevalue("postgres_db_url")
    return url


def test_steps_run_in_order_and_results_flow(durable: Durable, worker: Any) -> None:
    calls: list[tuple[str, Any]] = []

    @durable.step
    def add(a: int, b: int) -> int:
        calls.append(("add", (a, b)))
        return a + b

    @durable.step
    def price(amount: Decimal) -> Decimal:
        calls.append(("price", amount))
        return amount * 2

    @durable.workflow
    async def compute(ctx: WorkflowContext, a: int, b: int) -> dict[str, Any]:
        total = await ctx.step(add, a, b)
        doubled = await ctx.step(price, Decimal(total) / 4)
        return {"total": total, "doubled": doubled}

    with worker():
        handle = compute.delay(3, 4)
        assert handle.result(timeout=30) == {"total": 7, "doubled": Decimal("3.5")}
    assert calls == [("add", (3, 4)), ("price", Decimal("1.75"))]
    assert handle.status() == Status.COMPLETED
    history = handle.history()
    assert [(e.seq, e.name.rsplit(".", 1)[-1], e.state.value, e.result) for e in history] == [
        (0, "add", "completed", 7),
        (1, "price", "completed", Decimal("3.5")),
    ]
    assert all(e.attempts == 1 for e in history)


def test_failed_step_raises_step_failed_with_type_and_compensates(
    durable: Durable, worker: Any
) -> None:
    class TransferFailed(Exception):
        pass

    log: list[str] = []

    @durable.step
    def book(account: str, amount: int) -> str:
        if account == "nobody":
            raise TransferFailed(f"account {account!r} does not exist")
        log.append(f"book {account} {amount}")
        return f"t-{account}"

    @durable.step
    def undo(account: str, tran: str) -> None:
        log.append(f"undo {account} {tran}")

    @durable.workflow
    async def transfer(ctx: WorkflowContext, src: str, dst: str, amount: int) -> str:
        src_tran = None
        try:
            src_tran = await ctx.step(book, src, -amount)
            await ctx.step(book, dst, amount)
        except StepFailed as e:
            if e.type != "TransferFailed":
                raise
            if src_tran:
                await ctx.step(undo, src, src_tran)
            raise
        return "done"

    with worker():
        handle = transfer.delay("alice", "nobody", 10)
        with pytest.raises(WorkflowFailed) as info:
            handle.result(timeout=30)
    assert info.value.type == "TransferFailed"
    assert "does not exist" in info.value.message
    assert log == ["book alice -10", "undo alice t-alice"]
    assert handle.status() == Status.FAILED
    states = [(e.name.rsplit(".", 1)[-1], e.state.value) for e in handle.history()]
    assert states == [("book", "completed"), ("book", "failed"), ("undo", "completed")]


def test_celery_retry_options_are_honoured_and_key_is_stable(durable: Durable, worker: Any) -> None:
    keys: list[tuple[str, int]] = []

    @durable.step(autoretry_for=(ConnectionError,), max_retries=3, default_retry_delay=0)
    def flaky() -> str:
        step = current_step()
        assert step is not None
        keys.append((step.idempotency_key, step.attempt))
        if len(keys) < 3:
            raise ConnectionError("bank unreachable")
        return "ok"

    @durable.step(autoretry_for=(ConnectionError,), max_retries=1, default_retry_delay=0)
    def hopeless() -> None:
        raise ConnectionError("still unreachable")

    @durable.workflow
    async def wf(ctx: WorkflowContext) -> str:
        first = await ctx.step(flaky)
        try:
            await ctx.step(hopeless)
        except StepFailed as e:
            return f"{first}/{e.type}"
        return "unexpected"

    with worker():
        handle = wf.apply_async(workflow_id="retry-1")
        assert handle.result(timeout=30) == "ok/ConnectionError"
    assert keys == [("retry-1:0", 1), ("retry-1:0", 2), ("retry-1:0", 3)]
    history = handle.history()
    assert history[0].attempts == 3
    assert history[1].state.value == "failed"
    assert history[1].attempts == 2


def test_starting_twice_with_one_id_returns_the_first_run(durable: Durable, worker: Any) -> None:
    runs = Counter[str]()

    @durable.step
    def once(x: int) -> int:
        runs["once"] += 1
        return x

    @durable.workflow
    async def wf(ctx: WorkflowContext, x: int) -> int:
        value: int = await ctx.step(once, x)
        return value

    @durable.workflow
    async def other(ctx: WorkflowContext, x: int) -> int:
        return x

    with worker():
        first = wf.apply_async((1,), workflow_id="order-42")
        second = wf.apply_async((1,), workflow_id="order-42")
        assert first.id == second.id == "order-42"
        assert second.result(timeout=30) == 1
        third = wf.apply_async((1,), workflow_id="order-42")  # done: still the same run
        assert third.result(timeout=5) == 1
        with pytest.raises(WorkflowIdConflict, match="other arguments"):
            wf.apply_async((2,), workflow_id="order-42")
        with pytest.raises(WorkflowIdConflict, match="an instance of workflow"):
            other.apply_async((1,), workflow_id="order-42")
    assert runs["once"] == 1
    assert [i.id for i in durable.list()] == ["order-42"]


@pytest.mark.parametrize("eager", [0, 100], ids=["published", "eager"])
def test_duplicate_delivery_journals_one_outcome_and_schedules_next_once(
    durable: Durable, worker: Any, monkeypatch: pytest.MonkeyPatch, eager: int
) -> None:
    durable.app.conf.durable_eager_steps = eager
    executions = Counter[int]()
    dispatched = Counter[int]()

    @durable.step
    def work(n: int) -> int:
        executions[n] += 1
        return n * 10

    @durable.workflow
    async def wf(ctx: WorkflowContext) -> list[int]:
        return [await ctx.step(work, n) for n in range(5)]

    send_step = durable.send_step

    def send_twice(instance_id: str, step: Any, run: int = 1) -> bool:
        dispatched[step.seq] += 1
        send_step(instance_id, step, run)
        return send_step(instance_id, step, run)  # the broker delivers it twice

    monkeypatch.setattr(durable, "send_step", send_twice)
    with worker():
        handle = wf.delay()
        assert handle.result(timeout=30) == [0, 10, 20, 30, 40]
        time.sleep(0.5)  # let the duplicates drain
    # Eager: the first step's task ran the others (each journaled as started first).
    assert dispatched == dict.fromkeys(range(5) if not eager else [0], 1)
    history = handle.history()
    assert [e.result for e in history] == [0, 10, 20, 30, 40]
    assert len(history) == 5
    # At least once: a duplicate may run the user code again only while the first copy
    # has not journaled yet; it never journals a second outcome.
    assert all(1 <= executions[n] <= 2 for n in range(5))


@pytest.mark.parametrize("eager", [0, 100], ids=["published", "eager"])
def test_concurrent_resumes_never_double_schedule(
    durable: Durable, worker: Any, monkeypatch: pytest.MonkeyPatch, eager: int
) -> None:
    durable.app.conf.durable_eager_steps = eager
    executions = Counter[int]()
    dispatched = Counter[int]()

    @durable.step
    def work(n: int) -> int:
        executions[n] += 1
        time.sleep(0.01)
        return n

    @durable.workflow
    async def wf(ctx: WorkflowContext) -> int:
        total = 0
        for n in range(6):
            total += await ctx.step(work, n)
        return total

    send_step = durable.send_step

    def counting(instance_id: str, step: Any, run: int = 1) -> bool:
        dispatched[step.seq] += 1
        sent = send_step(instance_id, step, run)
        for _ in range(3):  # every pass is raced by three more orchestrators
            durable.send_resume(instance_id)
        return sent

    monkeypatch.setattr(durable, "send_step", counting)
    with worker(concurrency=6):
        handle = wf.delay()
        assert handle.result(timeout=30) == 15
    assert dispatched == dict.fromkeys(range(6) if not eager else [0], 1)
    assert executions == dict.fromkeys(range(6), 1)


def test_local_run_is_journaled_and_not_repeated(durable: Durable, worker: Any) -> None:
    generated: list[str] = []

    def make_secret() -> str:
        generated.append("x")
        return f"secret-{len(generated)}"

    @durable.step
    def echo(value: str) -> str:
        return value

    @durable.workflow
    async def wf(ctx: WorkflowContext) -> list[str]:
        secret = await ctx.run(make_secret)
        first = await ctx.step(echo, secret)
        second = await ctx.step(echo, str(ctx.uuid4()))
        return [first, second, ctx.workflow_id]

    with worker():
        handle = wf.apply_async(workflow_id="run-1")
        result = handle.result(timeout=30)
    assert result[0] == "secret-1"
    assert result[2] == "run-1"
    assert generated == ["x"]  # replayed twice, generated once
    kinds = [(e.kind.value, e.state.value) for e in handle.history()]
    assert kinds == [("run", "completed"), ("step", "completed"), ("step", "completed")]


def test_changed_workflow_parks_as_stuck_and_resumes_after_fix(
    durable: Durable, worker: Any
) -> None:
    gate = threading.Event()

    @durable.step
    def first() -> int:
        return 1

    @durable.step
    def second() -> int:
        assert gate.wait(20)
        return 2

    @durable.step
    def other() -> int:
        return 99

    @durable.workflow(name="versioned")
    async def v1(ctx: WorkflowContext) -> int:
        return int(await ctx.step(first)) + int(await ctx.step(second))

    async def v2(ctx: WorkflowContext) -> int:
        return int(await ctx.step(other))

    with worker():
        handle = v1.delay()
        wait_for(lambda: len(handle.history()) == 2)
        # A deploy replaces the code while step 1 runs.
        original = durable.workflows["versioned"]
        durable.workflows["versioned"] = type(original)(durable, v2, "versioned")
        gate.set()
        wait_for(lambda: handle.status() == Status.STUCK)
        instance = durable.store.get(handle.id)
        assert instance is not None
        assert instance.failure is not None
        assert instance.failure.type == "NonDeterminismError"
        assert "other" in instance.failure.message
        assert "first" in instance.failure.message
        # Nothing is lost: the running step's outcome was journaled all the same.
        assert [e.state.value for e in handle.history()] == ["completed", "completed"]
        with pytest.raises(WorkflowStuck):
            handle.result(timeout=1)
        # Roll the code back and retry: it finishes from the journal.
        durable.workflows["versioned"] = original
        durable.retry(handle.id)
        assert handle.result(timeout=30) == 3


def test_resume_of_unknown_workflow_waits_for_the_code(durable: Durable, worker: Any) -> None:
    from celery_durable.client import start

    @durable.step
    def hello(name: str) -> str:
        return f"hello {name}"

    async def greet(ctx: WorkflowContext, name: str) -> str:
        return str(await ctx.step(hello, name))

    with worker():
        handle = start(durable, "later.deployed", ("bob",), {})
        wait_for(lambda: handle.status().note is not None, timeout=10)
        status = handle.status()
        assert status == Status.PENDING  # waiting, not failed or dropped
        assert status.note == "waiting for a worker that knows workflow later.deployed"
        durable.workflow(name="later.deployed")(greet)
        # The tick (here called by hand) sends the one resume when the wait is due.
        wait_for(lambda: durable.recover() > 0 or handle.status() == Status.COMPLETED, 30)
        assert handle.result(timeout=30) == "hello bob"
        assert handle.status().note is None


def test_bad_inputs_are_clear_errors_that_store_nothing(durable: Durable, worker: Any) -> None:
    class Opaque:
        pass

    @durable.step
    def returns_opaque() -> Any:
        return Opaque()

    @durable.step
    def takes(value: Any) -> Any:
        return value

    def plain() -> None:  # a function, not a task
        return None

    @durable.workflow
    async def wf(ctx: WorkflowContext, mode: str, *extra: Any) -> str:
        if mode == "result":
            await ctx.step(returns_opaque)
        elif mode == "arg":
            try:
                await ctx.step(takes, Opaque())
            except SerializationError as e:
                return f"caught: {e}"
        elif mode == "plain":
            await ctx.step(plain)
        return "unreachable"

    with pytest.raises(SerializationError, match=r"argument 1 of workflow .*Opaque"):
        wf.delay("arg", Opaque())
    assert durable.list() == []

    with worker():
        with pytest.raises(WorkflowFailed) as info:
            wf.delay("result").result(timeout=30)
        assert info.value.type == "SerializationError"
        assert "cannot be journaled" in info.value.message

        assert wf.delay("arg").result(timeout=30).startswith("caught: ")

        # A function given to ctx.step is a bug in the workflow: it parks, not fails.
        with pytest.raises(WorkflowStuck) as stuck:
            wf.delay("plain").result(timeout=30)
        assert stuck.value.type == "TypeError"
        assert "for a local function use ctx.run()" in stuck.value.message

    with pytest.raises(TypeError, match=r"cannot start with these arguments"):
        wf.delay()  # type: ignore[call-arg]
    assert len(durable.list()) == 3


def test_workflow_must_be_async_and_steps_sync(durable: Durable) -> None:
    with pytest.raises(TypeError, match="async def"):

        @durable.workflow
        def not_async(ctx: WorkflowContext) -> None:  # type: ignore[arg-type]
            pass

    with pytest.raises(TypeError, match="plain def"):

        @durable.step
        async def not_sync() -> None:
            pass


def test_steps_stay_plain_tasks_outside_workflows(durable: Durable, worker: Any) -> None:
    @durable.step
    def double(x: int) -> int:
        return x * 2

    assert double(21) == 42
    assert double.acks_late is True
    assert double.reject_on_worker_lost is True


def test_unknown_store_url_is_a_clear_error(app: Celery) -> None:
    from celery_durable import ConfigurationError

    app.conf.durable_store = "nosuchdb://localhost/x"
    runtime = Durable(app)

    @runtime.workflow
    async def wf(ctx: WorkflowContext) -> None:
        return None

    with pytest.raises(ConfigurationError, match="nosuchdb"):
        wf.delay()
