"""The main job: run the examples end to end with no server to install.

The broker is Celery's in-memory transport, the store the embedded SQLite default (in a
temporary directory), and the worker a real Celery worker started in this process. Each
step prints a line as it runs; each workflow's journal is printed when it ends.

    python -m examples.demo
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from decimal import Decimal

WORKDIR = tempfile.mkdtemp(prefix="celery-durable-demo-")
os.environ["CELERY_BROKER_URL"] = "memory://"
os.environ["DURABLE_STORE"] = f"sqlite:///{WORKDIR}/journal.sqlite3"
os.environ["BANK_DB"] = f"{WORKDIR}/bank.sqlite3"
os.environ["MAILBOX"] = f"{WORKDIR}/mailbox.txt"

from celery.contrib.testing.worker import start_worker  # noqa: E402

from celery_durable import HistoryEvent, WorkflowFailed, WorkflowHandle  # noqa: E402
from celery_durable.testing import Clock  # noqa: E402
from examples import bank, mailbox  # noqa: E402
from examples.app import app, durable  # noqa: E402
from examples.money_transfer import money_transfer  # noqa: E402
from examples.schedule import schedule  # noqa: E402


def show(handle: WorkflowHandle[object]) -> None:
    """Print an instance's journal."""
    print(f"  journal of {handle.id} ({handle.status().value}):")
    for event in handle.history():
        if event.kind.value == "timer":
            fired = f"fired {event.completed_at:%Y-%m-%d %H:%M:%S}" if event.completed_at else ""
            print(f"    #{event.seq} timer until {event.args[0]:%Y-%m-%d %H:%M:%S} -> {fired}")
            continue
        outcome = event.error.type if event.error else repr(event.result)
        name = event.name.rsplit(".", 1)[-1]
        print(
            f"    #{event.seq} {event.kind.value} {name}{tuple(event.args)!r} -> "
            f"{event.state.value}: {outcome}"
        )


def wait_for_mail(to: str, count: int) -> bool:
    """Wait (real seconds) until ``to`` has ``count`` mails."""
    deadline = time.monotonic() + 60
    while len(mailbox.received(to)) < count:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def wait_for_timer(handle: WorkflowHandle[object]) -> HistoryEvent | None:
    """Wait until the workflow sleeps on a timer; return that timer's journal record."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        last = handle.history()[-1]
        if last.kind.value == "timer" and last.state.value == "scheduled":
            return last
        time.sleep(0.05)
    return None


def run_schedule() -> bool:
    """The seed's Schedule: a year of waiting, in seconds, with a testing clock."""
    print("\n== schedule: welcome, then +30 days, then +335 days")
    to = "ann@example.com"
    handle = schedule.delay(to)
    if not wait_for_mail(to, 1):
        return False
    for days in (30, 335):
        timer = wait_for_timer(handle)
        if timer is None:
            return False
        print(
            f"  sleeping until {timer.args[0]:%Y-%m-%d} (a row in the store, nothing in the "
            f"broker); the clock jumps {days} days"
        )
        durable.clock.advance(days=days)  # type: ignore[attr-defined]
        durable.recover()  # what beat's tick does every durable_tick_interval
        if not wait_for_mail(to, 2 if days == 30 else 3):
            return False
    print(f"  result: {handle.result(timeout=60)}")
    print(f"  mailbox: {mailbox.received(to)}")
    show(handle)
    return True


def main() -> int:
    """Run each example; return a process exit code."""
    # A step that fails on purpose is journaled and handled by the saga; keep Celery's
    # "raised unexpected" traceback for it out of the demo's output.
    logging.getLogger("celery.app.trace").setLevel(logging.CRITICAL)
    print(f"store: {os.environ['DURABLE_STORE']}")
    durable.clock = Clock()  # real time, plus the jumps run_schedule makes
    bank.open_account("alice", Decimal("500"))
    bank.open_account("bob", Decimal("0"))
    with start_worker(
        app,
        pool="threads",
        concurrency=4,
        perform_ping_check=False,
        loglevel="WARNING",
        shutdown_timeout=30,
    ):
        print("\n== money transfer, alice -> bob 100 (success path)")
        ok = money_transfer.delay("alice", "bob", Decimal("100"))
        print(f"  result: {ok.result(timeout=60)}")
        show(ok)

        print("\n== money transfer, alice -> nobody 50 (the second leg fails: rollback path)")
        failed = money_transfer.delay("alice", "nobody", Decimal("50"))
        try:
            failed.result(timeout=60)
        except WorkflowFailed as e:
            print(f"  failed as expected: {e.type}: {e.message}")
        else:
            print("  ERROR: the transfer to a missing account succeeded")
            return 1
        show(failed)
        print(f"\n  balances: alice={bank.balance('alice')} bob={bank.balance('bob')}")
        if bank.balance("alice") != Decimal("400") or bank.balance("bob") != Decimal("100"):
            print("  ERROR: balances do not add up")
            return 1
        if not run_schedule():
            return 1
    print("\ndemo finished: every workflow reached the state it must")
    return 0


if __name__ == "__main__":
    sys.exit(main())
