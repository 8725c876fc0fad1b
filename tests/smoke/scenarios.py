"""The examples' smoke scenarios, written once and run on every deployment of the
examples app: a ``celery -A examples.app worker`` subprocess on the test servers
(``test_local.py``) and a worker container built from the repository's Dockerfile
(``test_containers.py``).

A scenario reaches the deployment only through a :class:`Deployment`: it starts the
examples' workflows by name, signals them and waits for them through the journal store,
and calls the examples' stand-in services (the toy bank, the mailbox, the user
directory) where the worker runs, since their files live there. Every scenario uses
accounts and addresses of its own, so scenarios share one deployment in any order. They
finish in real time, with no clock jumps: a few seconds on any worker.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any, Protocol

import pytest
from celery import Celery

from celery_durable import Durable, WorkflowFailed
from celery_durable.client import start

#: Seconds a scenario waits for a workflow (the first one also waits for the worker to boot).
RESULT_TIMEOUT = 60.0

#: ``python -c`` program calling one of the examples' services, e.g. ``examples.bank.balance``
#: with JSON arguments, and printing its result as JSON (decimals as strings). It needs
#: nothing but the ``examples`` package, so it runs in the worker's image as it is.
SERVICE_CALL = (
    "import importlib, json, sys; "
    "module, name = sys.argv[1].rsplit('.', 1); "
    "result = getattr(importlib.import_module(module), name)(*json.loads(sys.argv[2])); "
    "print(json.dumps(result, default=str))"
)

TRANSFER = "examples.money_transfer.money_transfer"
TRANSFER_SAGA = "examples.money_transfer.money_transfer_saga"
REGISTRATION = "examples.user_registration.user_registration"


class Deployment(Protocol):
    """What a scenario needs of a running examples app."""

    def start(self, workflow: str, *args: Any) -> str:
        """Start the workflow registered as ``workflow``; return the instance id."""

    def result(self, workflow_id: str) -> Any:
        """Wait for the instance's result (``WorkflowFailed`` if it failed)."""

    def custom_status(self, workflow_id: str) -> Any:
        """The instance's ``ctx.set_status`` value."""

    def signal(self, workflow_id: str, name: str, payload: Any) -> None:
        """Send the instance a signal."""

    def call(self, service: str, *args: Any) -> Any:
        """Call ``service`` (``examples.<module>.<function>``) where the worker runs;
        arguments and result pass as JSON (decimals as strings)."""


class ClientDeployment:
    """A :class:`Deployment` reached as a client reaches it: a Celery app of its own on
    the deployment's broker and journal store. It registers no workflow, so the
    deployment's worker runs every orchestrator pass.

    Args:
        broker_url: the broker as this process reaches it.
        store_url: the journal store as this process reaches it.
        on_worker: runs ``python ARGS...`` where the worker runs and returns its stdout.
    """

    def __init__(
        self, broker_url: str, store_url: str, on_worker: Callable[[Sequence[str]], str]
    ) -> None:
        self.app = Celery(f"smoke-client-{uuid.uuid4().hex[:8]}", set_as_current=False)
        self.app.conf.update(
            broker_url=broker_url,
            durable_store=store_url,
            broker_connection_retry_on_startup=True,
        )
        self.durable = Durable(self.app)
        self._on_worker = on_worker

    def start(self, workflow: str, *args: Any) -> str:
        return start(self.durable, workflow, args, {}).id

    def result(self, workflow_id: str) -> Any:
        return self.durable.handle(workflow_id).result(timeout=RESULT_TIMEOUT)

    def custom_status(self, workflow_id: str) -> Any:
        return self.durable.handle(workflow_id).status().custom

    def signal(self, workflow_id: str, name: str, payload: Any) -> None:
        self.durable.signal(workflow_id, name, payload)

    def call(self, service: str, *args: Any) -> Any:
        out = self._on_worker(["-c", SERVICE_CALL, service, json.dumps(args, default=str)])
        return json.loads(out)

    def close(self) -> None:
        """Close the store's connections and the app's broker connections."""
        self.durable.store.close()
        self.app.close()


# --------------------------------------------------------------------------- scenarios


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _open(deployment: Deployment, balance: str) -> str:
    account = _name("acct")
    deployment.call("examples.bank.open_account", account, balance)
    return account


def _states(deployment: Deployment, account: str) -> list[str]:
    return [state for _, _, state in deployment.call("examples.bank.transfers", account)]


def money_transfer_completes(deployment: Deployment) -> None:
    """Both legs booked, then both completed; the balances moved."""
    src, dst = _open(deployment, "500"), _open(deployment, "0")
    legs = deployment.result(deployment.start(TRANSFER, src, dst, Decimal("100")))
    assert set(legs) == {"from", "to"}
    assert deployment.call("examples.bank.balance", src) == "400"
    assert deployment.call("examples.bank.balance", dst) == "100"
    assert _states(deployment, src) == _states(deployment, dst) == ["completed"]


def money_transfer_rolls_back(deployment: Deployment) -> None:
    """The bank refuses the second leg: the first is rolled back by its own step and the
    workflow fails with the bank's exception type."""
    src = _open(deployment, "500")
    workflow_id = deployment.start(TRANSFER, src, _name("nobody"), Decimal("50"))
    with pytest.raises(WorkflowFailed) as failed:
        deployment.result(workflow_id)
    assert failed.value.type == "TransferFailed"
    assert deployment.call("examples.bank.balance", src) == "500"
    assert _states(deployment, src) == ["rolled back"]


def saga_completes_or_rolls_back(deployment: Deployment) -> None:
    """The ``ctx.saga()`` version, two at once: one transfer completes, the other (to a
    missing account) runs its registered compensation and fails."""
    src, dst = _open(deployment, "300"), _open(deployment, "0")
    completing = deployment.start(TRANSFER_SAGA, src, dst, Decimal("100"))
    failing = deployment.start(TRANSFER_SAGA, src, _name("nobody"), Decimal("50"))
    assert set(deployment.result(completing)) == {"from", "to"}
    with pytest.raises(WorkflowFailed) as failed:
        deployment.result(failing)
    assert failed.value.type == "TransferFailed"
    assert deployment.call("examples.bank.balance", src) == "200"
    assert deployment.call("examples.bank.balance", dst) == "100"
    assert sorted(_states(deployment, src)) == ["completed", "rolled back"]


def registration_verified_by_signal(deployment: Deployment) -> None:
    """The user registration waits for the code it mailed: a wrong code is ignored, the
    right one (sent as a signal, as the verification link's web request does) activates
    the user."""
    email = f"{_name('ann')}@example.com"
    workflow_id = deployment.start(REGISTRATION, email, "Ann")
    deadline = time.monotonic() + RESULT_TIMEOUT
    while not (mails := deployment.call("examples.mailbox.received", email)):
        assert time.monotonic() < deadline, f"no verification mail to {email}"
        time.sleep(0.1)
    [mail] = mails
    code = mail.removeprefix("verify:")
    deployment.signal(workflow_id, "verify", "not-the-code")
    deployment.signal(workflow_id, "verify", code)
    assert deployment.result(workflow_id) == "activated"
    status = deployment.custom_status(workflow_id)
    assert status["verified"] is True
    user = deployment.call("examples.users.get", status["user_id"])
    assert user == {"email": email, "name": "Ann", "active": True}


SCENARIOS: list[Callable[[Deployment], None]] = [
    money_transfer_completes,
    money_transfer_rolls_back,
    saga_completes_or_rolls_back,
    registration_verified_by_signal,
]
