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
os.environ["USERS_DB"] = f"{WORKDIR}/users.json"

from celery.contrib.testing.worker import start_worker  # noqa: E402

from celery_durable import HistoryEvent, WorkflowFailed, WorkflowHandle  # noqa: E402
from celery_durable.runtime.deploys import check_store  # noqa: E402
from celery_durable.testing import Clock  # noqa: E402
from examples import bank, fulfilment, fulfilment_v1, mailbox, users  # noqa: E402
from examples.app import app, durable  # noqa: E402
from examples.money_transfer import money_transfer, money_transfer_saga  # noqa: E402
from examples.schedule import schedule  # noqa: E402
from examples.user_registration import user_registration  # noqa: E402


def show(handle: WorkflowHandle[object]) -> None:
    """Print an instance's journal."""
    print(f"  journal of {handle.id} ({handle.status()}):")
    for event in handle.history():
        if event.kind.value == "timer":
            fired = f"fired {event.completed_at:%Y-%m-%d %H:%M:%S}" if event.completed_at else ""
            print(f"    #{event.seq} timer until {event.args[0]:%Y-%m-%d %H:%M:%S} -> {fired}")
            continue
        if event.kind.value == "signal":
            got = event.error.type if event.error else f"received {event.result!r}"
            print(f"    #{event.seq} signal {event.name!r} -> {got}")
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


def wait_for_timer(handle: WorkflowHandle[object], kind: str = "timer") -> HistoryEvent | None:
    """Wait until the workflow waits on a timer (or a signal); return that journal record."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        history = handle.history()
        if history and history[-1].kind.value == kind and history[-1].completed_at is None:
            return history[-1]
        time.sleep(0.05)
    return None


def run_registration() -> bool:
    """The seed's UserRegistrationSaga: one user verifies, one never does."""
    print("\n== user registration: verified by a signal")
    carol = user_registration.delay("carol@example.com", "Carol")
    if not wait_for_mail("carol@example.com", 1) or not wait_for_timer(carol, "signal"):
        return False
    code = mailbox.received("carol@example.com")[0].split(":", 1)[1]
    print(f"  status: {carol.status().custom}")
    print("  a wrong code first, then the right one: carol.signal('verify', code)")
    carol.signal("verify", "not-the-code")
    carol.signal("verify", code)
    print(f"  result: {carol.result(timeout=60)}")
    show(carol)

    print("\n== user registration: never verified, cleaned up after 3 days")
    dave = user_registration.delay("dave@example.com", "Dave")
    if not wait_for_timer(dave, "signal"):
        return False
    durable.clock.advance(days=3)  # type: ignore[attr-defined]
    durable.recover()
    print(f"  result: {dave.result(timeout=60)}")
    user_id = dave.status().custom["user_id"]
    print(f"  user {user_id} in the directory: {users.get(user_id)}")
    return users.get(user_id) is None


def run_saga() -> bool:
    """The money transfer written with ctx.saga()."""
    print("\n== money transfer with ctx.saga(), alice -> nobody 25 (rollback by the saga)")
    handle = money_transfer_saga.delay("alice", "nobody", Decimal("25"))
    try:
        handle.result(timeout=60)
    except WorkflowFailed as e:
        print(f"  failed as expected: {e.type}: {e.message}")
    show(handle)
    return bank.balance("alice") == Decimal("400")


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


def run_deploy() -> bool:
    """A deploy under a running order: v1 running, v2 deployed with ctx.patched."""
    print("\n== a deploy under a running order: v1 running, then v2 with ctx.patched")
    name = fulfilment.fulfil.name
    # Playing both deploys in one process: each version's function registered under the
    # workflow's name, as restarting the workers on that code does.
    v1 = durable.workflow(name=name)(fulfilment_v1.fulfil)
    old = v1.apply_async(["order-1"], workflow_id="order-1")
    if wait_for_timer(old) is None:
        return False
    print(f"  order-1 started on v1 (code version {old.status().code_version}), sleeping")
    v2 = durable.workflow(name=name)(fulfilment.fulfil.fn)
    for check in check_store(durable, workflow=name):
        print(f"  replay-check of v2 before the rollout: {check.describe()}")
        if not check.ok:
            return False
    new = v2.apply_async(["order-2"], workflow_id="order-2")
    if wait_for_timer(new) is None:
        return False
    print(f"  order-2 started on v2 (code version {new.status().code_version}), sleeping")
    durable.clock.advance(days=1)  # type: ignore[attr-defined]
    durable.recover()
    print(f"  order-1 result: {old.result(timeout=60)}; its steps: {old.steps()}")
    print(f"  order-2 result: {new.result(timeout=60)}; its steps: {new.steps()}")
    return "check_fraud" not in old.steps() and "check_fraud" in new.steps()


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
        if not (run_saga() and run_schedule() and run_registration() and run_deploy()):
            print("  ERROR: a workflow did not reach the state it must")
            return 1
    print("\ndemo finished: every workflow reached the state it must")
    print(
        "\nSee these workflows in the web console (timelines, journals; Ctrl+C to stop):\n"
        f"  DURABLE_STORE={os.environ['DURABLE_STORE']} CELERY_BROKER_URL=memory:// "
        f"{sys.executable} -m celery -A examples.app durable web\n"
        "  then open http://127.0.0.1:8765/ (the demo's worker has stopped: the pages show "
        "everything; actions need a worker on a real broker)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
