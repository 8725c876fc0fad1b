"""The seed's three programs through the testing kit (``durable_env``): each runs in a
few seconds, the 365-day Schedule included."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal

import pytest

from celery_durable import WorkflowFailed
from celery_durable.testing import DurableTestEnv
from examples import bank, mailbox, users
from examples.money_transfer import money_transfer, money_transfer_saga, start_transfer
from examples.schedule import schedule
from examples.user_registration import user_registration

#: Real seconds a seed program may take under the kit.
BUDGET = 5.0


@pytest.fixture
def timed() -> Iterator[None]:
    began = time.monotonic()
    yield
    took = time.monotonic() - began
    assert took < BUDGET, f"took {took:.1f} s"


@pytest.fixture
def accounts(durable_env: DurableTestEnv) -> None:
    bank.open_account("alice", Decimal("500"))
    bank.open_account("bob", Decimal("0"))


def test_money_transfer_moves_the_money(accounts: None, timed: None) -> None:
    handle = money_transfer.delay("alice", "bob", Decimal("100"))
    assert handle.result() == {"from": f"{handle.id}:0", "to": f"{handle.id}:1"}
    assert handle.steps() == [
        "start_transfer",
        "start_transfer",
        "complete_transfer",
        "complete_transfer",
    ]
    assert (bank.balance("alice"), bank.balance("bob")) == (Decimal("400"), Decimal("100"))


@pytest.mark.parametrize("workflow", [money_transfer, money_transfer_saga])
def test_money_transfer_saga_rolls_back_a_refused_leg(
    workflow: object, accounts: None, timed: None
) -> None:
    handle = workflow.delay("alice", "nobody", Decimal("25"))  # type: ignore[attr-defined]
    with pytest.raises(WorkflowFailed) as failed:
        handle.result()
    assert failed.value.type == "TransferFailed"
    assert handle.steps() == ["start_transfer", "start_transfer", "rollback_transfer"]
    assert bank.balance("alice") == Decimal("500")
    assert [state for _, _, state in bank.transfers("alice")] == ["rolled back"]


def test_money_transfer_rides_out_a_flaky_bank(
    durable_env: DurableTestEnv, accounts: None, timed: None
) -> None:
    # start_transfer retries ConnectionError with backoff: the kit does not wait it out.
    flaky = durable_env.mock_step(
        start_transfer, raises=ConnectionError("bank down"), fail_times=2, returns="tx"
    )
    durable_env.mock_step("examples.money_transfer.complete_transfer")
    handle = money_transfer.delay("alice", "bob", Decimal("10"))
    assert handle.result() == {"from": "tx", "to": "tx"}
    assert [call.attempt for call in flaky.calls] == [1, 2, 3, 1]
    assert [call.args for call in flaky.calls][-1] == ("bob", Decimal("10"))


def test_schedule_runs_its_year(durable_env: DurableTestEnv, timed: None) -> None:
    began = durable_env.now()
    handle = schedule.delay("ann@example.com")
    durable_env.sleep(days=30)
    assert mailbox.received("ann@example.com") == [
        "Welcome!",
        "Congratulations: 30 days with us",
    ]
    # result() skips the 335 days left by itself.
    assert handle.result() == f"ann@example.com: done at {began + timedelta(days=365):%Y-%m-%d}"
    assert handle.steps() == ["send_mail"] * 3
    assert mailbox.received("ann@example.com")[-1] == "Congratulations: a year with us"
    assert durable_env.now() - began >= timedelta(days=365)


def test_user_registration_activates_a_verified_user(
    durable_env: DurableTestEnv, timed: None
) -> None:
    handle = user_registration.delay("carol@example.com", "Carol")
    durable_env.settle()
    code = mailbox.received("carol@example.com")[0].split(":", 1)[1]
    durable_env.signal(handle, "verify", "not-the-code")  # ignored: it waits on
    durable_env.sleep(days=1)
    durable_env.signal(handle, "verify", code)
    assert handle.result() == "activated"
    assert handle.steps() == ["RegisterUser", "SendVerificationEmail", "ActivateUser"]
    user_id = handle.status().custom["user_id"]
    assert users.get(user_id) == {"email": "carol@example.com", "name": "Carol", "active": True}


def test_user_registration_deletes_an_unverified_user_after_three_days(
    durable_env: DurableTestEnv, timed: None
) -> None:
    handle = user_registration.delay("dave@example.com", "Dave")
    durable_env.sleep(days=2, hours=23)
    assert handle.status() == "running"
    assert handle.result() == "expired"  # the last hour skipped by result()
    assert handle.steps() == ["RegisterUser", "SendVerificationEmail", "DeleteUser"]
    assert users.get(handle.status().custom["user_id"]) is None
