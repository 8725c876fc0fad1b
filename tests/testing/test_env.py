"""DurableTestEnv, the plain API: step mocks, retries, compensation, signals, time
skipping, and the app left as it was."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from itertools import pairwise

import pytest
import shop_app as shop

from celery_durable import WorkflowFailed
from celery_durable.testing import Clock, DurableTestEnv, MockedStepError, StepCall


def test_fail_times_with_retries_succeeds_on_the_third_run(env: DurableTestEnv) -> None:
    # charge retries ConnectionError with a 60 s backoff: not waited for in the env.
    began = time.monotonic()
    mock = env.mock_step(shop.charge, raises=ConnectionError, fail_times=2, returns="paid")
    handle = shop.checkout.delay("book", "visa", 12)
    assert handle.result(timeout=10) == "paid"
    assert time.monotonic() - began < 5
    assert [call.attempt for call in mock.calls] == [1, 2, 3]
    assert mock.calls[0] == StepCall(("visa", 12), {}, 1, f"{handle.id}:1")
    assert handle.steps() == ["reserve", "charge"]
    assert handle.history()[1].attempts == 3
    assert shop.LEDGER == ["reserve book"]  # charge's real body never ran


def test_failures_past_max_retries_run_the_compensation(env: DurableTestEnv) -> None:
    mock = env.mock_step(shop.charge, raises=ConnectionError("card network down"), fail_times=9)
    handle = shop.checkout.delay("book", "visa", 12)
    with pytest.raises(WorkflowFailed) as failed:
        handle.result(timeout=10)
    assert failed.value.type == "ConnectionError"
    assert mock.call_count == 4  # the first run and max_retries=3 retries
    assert handle.steps() == ["reserve", "charge", "release"]
    assert shop.LEDGER == ["reserve book", "release reservation-book"]


def test_raises_fails_the_step_and_the_saga_rolls_back(env: DurableTestEnv) -> None:
    env.mock_step(shop.charge, raises=shop.CardDeclined("insufficient funds"))
    handle = shop.checkout.delay("lamp", "amex", 80)
    with pytest.raises(WorkflowFailed) as failed:
        handle.result(timeout=10)
    assert (failed.value.type, failed.value.message) == ("CardDeclined", "insufficient funds")
    assert handle.steps() == ["reserve", "charge", "release"]


def test_fail_times_without_raises_raises_mocked_step_error(env: DurableTestEnv) -> None:
    mock = env.mock_step(shop.reserve, fail_times=1)
    handle = shop.checkout.delay("pen", "visa", 1)
    with pytest.raises(WorkflowFailed) as failed:
        handle.result(timeout=10)
    assert failed.value.type == MockedStepError.__name__
    assert "mocked failure 1 of 1" in failed.value.message
    assert mock.call_count == 1


def test_a_mock_used_as_a_context_manager_restores_the_body(env: DurableTestEnv) -> None:
    with env.mock_step(shop.charge, returns="mocked") as mock:
        assert shop.checkout.delay("a", "visa", 1).result(timeout=10) == "mocked"
    assert shop.checkout.delay("b", "visa", 2).result(timeout=10) == "payment-visa-2"
    assert mock.call_count == 1
    assert shop.LEDGER[-1] == "charge visa 2"


def test_mocks_end_with_the_environment() -> None:
    real = shop.charge.__dict__.get("_orig_run")
    with DurableTestEnv(shop.durable) as env:
        env.mock_step(shop.charge, returns="mocked")
        assert shop.charge.__dict__.get("_orig_run") is not real
    assert shop.charge.__dict__.get("_orig_run") is real


def test_a_signal_before_the_deadline(env: DurableTestEnv) -> None:
    handle = shop.approval.delay("laptop")
    env.sleep(days=1)
    assert handle.status() == "running"
    env.signal(handle, "answer", "yes")
    assert handle.status() == "completed"
    assert handle.result() == "laptop: yes"


def test_result_skips_to_the_signal_deadline(env: DurableTestEnv) -> None:
    began = env.now()
    handle = shop.approval.delay("laptop")
    with pytest.raises(WorkflowFailed) as failed:
        handle.result(timeout=5)
    assert failed.value.type == "SignalTimeout"
    assert env.now() - began >= timedelta(days=2)


def test_result_skips_from_timer_to_timer(env: DurableTestEnv) -> None:
    began = env.now()
    handle = shop.reminders.delay("ann", 12)
    assert handle.result(timeout=10) == [f"ann:{month}" for month in range(1, 13)]
    assert timedelta(days=360) <= env.now() - began < timedelta(days=361)


def test_without_time_skipping_result_waits_in_real_time() -> None:
    with DurableTestEnv(shop.durable, time_skipping=False) as env:
        handle = shop.reminders.delay("bob", 1)
        with pytest.raises(TimeoutError):
            handle.result(timeout=0.3)
        assert env.result(handle, timeout=5) == ["bob:1"]  # env.result() skips anyway


def test_sleep_fires_each_timer_at_its_own_time(env: DurableTestEnv) -> None:
    handle = shop.reminders.delay("cid", 3)
    env.sleep(days=95)
    assert handle.status() == "completed"
    fired = [e.completed_at for e in handle.history() if e.kind.value == "timer"]
    assert len(fired) == 3
    gaps = [later - earlier for earlier, later in pairwise(fired) if earlier and later]
    assert len(gaps) == 2
    assert all(timedelta(days=30) <= gap < timedelta(days=30, minutes=1) for gap in gaps)


def test_sleep_takes_a_timedelta_or_seconds(env: DurableTestEnv) -> None:
    began = env.now()
    env.sleep(timedelta(hours=1))
    env.sleep(60)
    assert env.now() - began >= timedelta(hours=1, minutes=1)


def test_a_deferred_start_waits_for_its_time(env: DurableTestEnv) -> None:
    handle = shop.checkout.apply_async(("mug", "visa", 5), countdown=3600)
    env.sleep(minutes=59)
    assert handle.status() == "pending"
    env.sleep(minutes=1)
    assert handle.status() == "completed"


def test_settle_says_what_is_still_running(env: DurableTestEnv) -> None:
    shop.GATE.clear()
    try:
        shop.checkout.delay("slow", "visa", 1)
        with pytest.raises(TimeoutError, match=r"step .*reserve \(seq 0\) started"):
            env.settle(timeout=0.3)
    finally:
        shop.GATE.set()
    env.settle()
    assert shop.LEDGER == ["reserve slow", "charge visa 1"]


def test_the_app_and_the_runtime_are_left_as_they_were() -> None:
    conf = shop.app.conf
    before = {key: conf.get(key) for key in ("broker_url", "durable_store", "durable_eta_max")}
    store, clock = shop.durable._store, shop.durable.clock
    os.environ["CELERY_BROKER_URL"] = "redis://127.0.0.1:2/0"
    try:
        with DurableTestEnv(shop.durable, clock=Clock()) as env:
            assert conf.broker_url == "memory://localhost/"
            assert shop.durable.store is env.store
            assert shop.durable.clock is env.clock
            assert shop.checkout.delay("x", "visa", 1).result(timeout=10)
        assert {key: conf.get(key) for key in before} == before
        assert "durable_eta_max" not in conf.changes
        assert os.environ["CELERY_BROKER_URL"] == "redis://127.0.0.1:2/0"
        assert shop.durable._store is store
        assert shop.durable.clock is clock
    finally:
        del os.environ["CELERY_BROKER_URL"]


def test_each_environment_starts_empty() -> None:
    with DurableTestEnv(shop.durable):
        first = shop.checkout.apply_async(("x", "visa", 1), workflow_id="order-1")
        assert first.result(timeout=10)
    with DurableTestEnv(shop.durable):
        assert shop.durable.list() == []
        again = shop.checkout.apply_async(("y", "visa", 2), workflow_id="order-1")
        assert again.result(timeout=10) == "payment-visa-2"


def test_a_journal_file_works_too(tmp_path: object) -> None:
    with DurableTestEnv(shop.durable, store=f"sqlite:///{tmp_path}/journal.sqlite3") as env:
        handle = shop.reminders.delay("dan", 2)
        assert handle.result(timeout=10) == ["dan:1", "dan:2"]
        assert env.store.get(handle.id) is not None


def test_bad_use_is_a_clear_error(env: DurableTestEnv) -> None:
    with pytest.raises(TypeError, match=r"@durable\.step task of this environment's app"):
        env.mock_step(print)
    with pytest.raises(ValueError, match="fail_times"):
        env.mock_step(shop.charge, fail_times=-1)
    with pytest.raises(TypeError, match="raises must be an exception"):
        env.mock_step(shop.charge, raises="boom")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="forward"):
        env.sleep(days=-1)
    with pytest.raises(RuntimeError, match="running already"):
        env.start()
    with pytest.raises(TypeError, match="takes a Durable"):
        DurableTestEnv(object())  # type: ignore[arg-type]
    idle = DurableTestEnv(shop.app)  # a Celery app with a Durable is fine
    with pytest.raises(RuntimeError, match="not running"):
        idle.sleep(days=1)
