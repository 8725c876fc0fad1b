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
from decimal import Decimal

WORKDIR = tempfile.mkdtemp(prefix="celery-durable-demo-")
os.environ["CELERY_BROKER_URL"] = "memory://"
os.environ["DURABLE_STORE"] = f"sqlite:///{WORKDIR}/journal.sqlite3"
os.environ["BANK_DB"] = f"{WORKDIR}/bank.sqlite3"

from celery.contrib.testing.worker import start_worker  # noqa: E402

from celery_durable import WorkflowFailed, WorkflowHandle  # noqa: E402
from examples import bank  # noqa: E402
from examples.app import app  # noqa: E402
from examples.money_transfer import money_transfer  # noqa: E402


def show(handle: WorkflowHandle[object]) -> None:
    """Print an instance's journal."""
    print(f"  journal of {handle.id} ({handle.status().value}):")
    for event in handle.history():
        outcome = event.error.type if event.error else repr(event.result)
        print(
            f"    #{event.seq} {event.kind.value} {event.name.rsplit('.', 1)[-1]}"
            f"{tuple(event.args)!r} -> {event.state.value}: {outcome}"
        )


def main() -> int:
    """Run each example; return a process exit code."""
    # A step that fails on purpose is journaled and handled by the saga; keep Celery's
    # "raised unexpected" traceback for it out of the demo's output.
    logging.getLogger("celery.app.trace").setLevel(logging.CRITICAL)
    print(f"store: {os.environ['DURABLE_STORE']}")
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
    print("\ndemo finished: every workflow reached the state it must")
    return 0


if __name__ == "__main__":
    sys.exit(main())
