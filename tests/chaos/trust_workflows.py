"""Workflows of the issue 9 prefork tests (``test_trust_prefork.py``), registered on the
trust app by :func:`register`.

Workers are separate processes, so what a test switches is a file in the flag directory
(``TRUST_DIR``), named after the token the test passes to the workflow: ``<token>.fixed``
(a fix is deployed), ``<token>.v2`` (v2 of the code), ``<token>.down`` (a service is
down: its step fails), ``<token>.release`` (a straggler step may end). Every step run is
a line of the record file: ``label <idempotency key>#<attempt> start|end pid time``.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import sqlalchemy

from celery_durable import Durable, StepFailed, WorkflowContext, current_step, faults
from chaos.mix import log_line

STRAGGLER = "trust.continue_with_straggler"
RETRIES = "trust.celery_retries"
PAY = "trust.pay_with_a_bug"
TRIP = "trust.trip"
TRIP_SAGA = "trust.trip_saga"
PAY_VERSIONED = "trust.pay_versioned"
ORDER = "trust.order"
INVOICE = "trust.invoice"
REFUND = "trust.refund"
CLAIMS_CHILD = "trust.claims_child"
CHILD = "trust.child_waits"
PARENT = "trust.parent"

BOOK_SEAT = "trust.book_a_seat"

EAGER_CHAIN = "trust.eager_chain"
EAGER_POISON = "trust.eager_poison"

#: How long an eager chain's ``sleep`` step runs: longer than the silence limit of the
#: eager tests (5 x 0.5 s heartbeats), so only its beats keep it from being sent again.
EAGER_SLEEP_SECONDS = 3.0

#: How long the straggler waits for its release file at most.
STRAGGLER_SECONDS = 30.0
#: The countdown of each Celery retry of the ``trust.flaky`` step.
RETRY_COUNTDOWN = 3


def register(durable: Durable, record: Path, flags: Path) -> None:
    """Declare the steps and workflows of the issue 9 prefork tests on ``durable``."""

    def note(label: str, event: str = "start") -> None:
        info = current_step()
        assert info is not None
        log_line(record, label, f"{info.idempotency_key}#{info.attempt}", event)

    def flag(token: str, name: str) -> bool:
        return (flags / f"{token}.{name}").exists()

    # ---------------------------------------------- 1: continue-as-new with a straggler
    @durable.step(name="trust.check")
    def check(token: str, n: int) -> str:
        note(f"check{n}")
        if n == 0:  # a straggler: loses the race, ends only after run 2 has its result
            deadline = time.monotonic() + STRAGGLER_SECONDS
            while not flag(token, "release") and time.monotonic() < deadline:
                time.sleep(0.05)
        note(f"check{n}", "end")
        return f"check {n}"

    @durable.workflow(name=STRAGGLER)
    async def continue_with_straggler(ctx: WorkflowContext, token: str, n: int) -> str:
        if n == 0:
            await ctx.first(ctx.step(check, token, 0), ctx.sleep(0.5))
            ctx.continue_as_new(token, 1)
        return str(await ctx.step(check, token, n))

    # ---------------------------------------------- 4: Celery retries past the step timeout
    @durable.step(name="trust.flaky", bind=True, max_retries=2)
    def flaky(self: Any) -> str:
        note("flaky")
        if self.request.retries < 2:  # Celery's own count, not the one under test
            raise self.retry(countdown=RETRY_COUNTDOWN)
        return "ok"

    @durable.workflow(name=RETRIES)
    async def celery_retries(ctx: WorkflowContext) -> str:
        return str(await ctx.step(flaky))

    # ---------------------------------------------- 8: a bug parks; retry and rewind
    @durable.step(name="trust.charge")
    def charge(account: str, amount: int = 0) -> str:
        note("charge")
        return f"tx-{account}" if not amount else f"tx-{account}-{amount}"

    @durable.workflow(name=PAY)
    async def pay_with_a_bug(ctx: WorkflowContext, token: str, account: str) -> str:
        tx = await ctx.step(charge, account)
        if not flag(token, "fixed"):
            raise ValueError(f"bad receipt for {tx}")  # a bug in workflow code
        return str(tx)

    @durable.step(name="trust.book")
    def book(token: str, item: str) -> str:
        note(f"book-{item}")
        if item == "flight" and flag(token, "down"):
            raise ConnectionRefusedError("the airline is down")  # fails for good
        return f"{item}-ok"

    @durable.step(name="trust.cancel_booking")
    def cancel_booking(item: str) -> None:
        note(f"cancel-{item}")

    @durable.workflow(name=TRIP)
    async def trip(ctx: WorkflowContext, token: str) -> list[str]:
        hotel = await ctx.step(book, token, "hotel")
        flight = await ctx.step(book, token, "flight")
        return [hotel, flight]

    @durable.workflow(name=TRIP_SAGA)
    async def trip_saga(ctx: WorkflowContext, token: str) -> list[str]:
        async with ctx.saga() as saga:
            hotel = await ctx.step(book, token, "hotel")
            saga.compensate(cancel_booking, "hotel")
            flight = await ctx.step(book, token, "flight")
            return [hotel, flight]

    # ---------------------------------------------- 9: changed step arguments
    @durable.workflow(name=PAY_VERSIONED)
    async def pay_versioned(ctx: WorkflowContext, token: str) -> str:
        if not flag(token, "v2"):
            tx = await ctx.step(charge, "alice", 100)
        else:  # a deploy that changed the arguments
            tx = await ctx.step(charge, "bob", 999)
        await ctx.wait_signal("go")
        return str(tx)

    # ---------------------------------------------- 10: cancel of a stuck instance
    @durable.step(name="trust.reserve")
    def reserve() -> str:
        note("reserve")
        return "r-1"

    @durable.step(name="trust.release")
    def release(reservation: str) -> None:
        note(f"release-{reservation}")

    @durable.step(name="trust.ship")
    def ship() -> None:
        note("ship")

    @durable.workflow(name=ORDER)
    async def order(ctx: WorkflowContext, token: str) -> str:
        async with ctx.saga() as saga:
            reservation = await ctx.step(reserve)
            saga.compensate(release, reservation)
            if not flag(token, "fixed"):
                raise KeyError("bug")
            await ctx.step(ship)
        return "shipped"

    # ---------------------------------------------- 6: a foreign child id
    @durable.workflow(name=INVOICE)
    async def invoice(ctx: WorkflowContext, who: str) -> str:
        return f"invoice for {who}"

    @durable.workflow(name=REFUND)
    async def refund(ctx: WorkflowContext, who: str) -> str:
        return f"refund for {who}"

    @durable.workflow(name=CLAIMS_CHILD)
    async def claims_child(ctx: WorkflowContext, child_id: str) -> str:
        try:
            return str(await ctx.child(refund, "bob", workflow_id=child_id))
        except StepFailed as failed:
            return f"{failed.type}: {failed.message}"

    # ---------------------------------------------- 12: parent-close policies
    @durable.workflow(name=CHILD)
    async def child_waits(ctx: WorkflowContext) -> Any:
        return await ctx.wait_signal("go")

    @durable.workflow(name=PARENT)
    async def parent(ctx: WorkflowContext, policy: str) -> Any:
        if policy == "default":
            return await ctx.child(child_waits)
        return await ctx.child(child_waits, on_parent_close=policy)

    # ------------------------------- transactional steps (test_transactional_steps.py)
    @durable.step(name="trust.book_seat", transactional=True)
    def book_seat(conn: Any, token: str, seat: str) -> int:
        note("book")
        conn.execute(sqlalchemy.text("CREATE TABLE IF NOT EXISTS bookings (token TEXT, seat TEXT)"))
        conn.execute(
            sqlalchemy.text("INSERT INTO bookings (token, seat) VALUES (:t, :s)"),
            {"t": token, "s": seat},
        )
        if flag(token, "crash") and not (flags / f"{token}.crashed").exists():
            # Die once, after the writes and before the commit that journals them.
            (flags / f"{token}.crashed").touch()
            (flags / f"{faults.STEP_EFFECT}.{os.getpid()}").touch()
        taken = conn.execute(
            sqlalchemy.text("SELECT count(*) FROM bookings WHERE token = :t"), {"t": token}
        ).scalar()
        return int(taken or 0)

    @durable.workflow(name=BOOK_SEAT)
    async def book_a_seat(ctx: WorkflowContext, token: str) -> int:
        return int(await ctx.step(book_seat, token, "12A"))

    # ---------------------------------------------- eager chains (test_eager_prefork.py)
    @durable.step(name="trust.eager_step")
    def eager_step(index: int, action: str) -> str:
        note(f"eager{index}")
        if action == "sleep":
            time.sleep(EAGER_SLEEP_SECONDS)
        elif action == "arm":
            # This process dies at the next commit it makes: this step's own, which
            # hands the next step over (see trust_app.install_crash_points).
            (flags / f"{faults.AFTER_COMMIT}.{os.getpid()}").touch()
        elif action == "poison":
            os.kill(os.getpid(), signal.SIGKILL)  # every run, as the OOM killer would
        note(f"eager{index}", "end")
        return f"{action}-{index}"

    @durable.step(name="trust.eager_undo")
    def eager_undo() -> str:
        note("eager_undo")
        return "undone"

    @durable.workflow(name=EAGER_CHAIN)
    async def eager_chain(ctx: WorkflowContext, actions: list[str]) -> list[str]:
        results = []
        for index, action in enumerate(actions):
            results.append(str(await ctx.step(eager_step, index, action)))
        return results

    @durable.workflow(name=EAGER_POISON)
    async def eager_poison(ctx: WorkflowContext) -> str:
        try:
            async with ctx.saga() as saga:
                await ctx.step(eager_step, 0, "quick")
                saga.compensate(eager_undo)  # runs when the lost step fails the block
                await ctx.step(eager_step, 1, "poison")  # handed over by step 0's commit
        except StepFailed as failed:
            if failed.type != "StepLost":
                raise
            return f"{failed.type}: {failed.message}"
        return "unreachable"
