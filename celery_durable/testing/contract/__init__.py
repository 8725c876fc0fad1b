"""The contract every journal store keeps, as a pytest suite.

Subclass :class:`StoreContract` in a test module and give it a ``store`` fixture that
yields a fresh, empty store (and closes it afterwards); pytest then runs every
``test_*`` method of the mixins it combines (see below) against that store::

    import pytest
    from celery_durable.stores.sqlalchemy import SQLAlchemyStore
    from celery_durable.testing.contract import StoreContract


    class TestSQLite(StoreContract):
        @pytest.fixture
        def store(self, tmp_path):
            store = SQLAlchemyStore(f"sqlite:///{tmp_path / 'journal.sqlite3'}")
            yield store
            store.close()

The store must be usable from several threads at once (the concurrency tests use
threads). This package imports pytest; nothing else in celery_durable imports it.

The tests are grouped by concern into mixins, one module each: :mod:`.journal`
(create, get, load, list, commit), :mod:`.recovery` (heartbeat, resent steps,
claim_due), :mod:`.signals`, :mod:`.lifecycle` (cancel, get_many, restart),
:mod:`.steps` (start_step, reschedule_step, run-checked heartbeats, resends) and
:mod:`.runs` (run numbers, notes, rewinds, children), :mod:`.workers` (the step
messages a worker holds, released when its beats stop) and :mod:`.versions` (code
versions, patch ids, where a workflow waits, and the listing reads);
:mod:`.builders` holds the helpers they share, re-exported here for store-specific tests.
"""

from __future__ import annotations

from celery_durable.testing.contract.builders import (
    ELSEWHERE,
    T0,
    assert_event_types,
    assert_instance_types,
    assert_utc,
    completed,
    failed,
    make_event,
    make_instance,
    run_together,
    send,
)
from celery_durable.testing.contract.journal import JournalContract
from celery_durable.testing.contract.lifecycle import LifecycleContract
from celery_durable.testing.contract.recovery import RecoveryContract
from celery_durable.testing.contract.runs import RunContract
from celery_durable.testing.contract.signals import SignalContract
from celery_durable.testing.contract.steps import StepContract
from celery_durable.testing.contract.versions import VersionContract
from celery_durable.testing.contract.workers import WorkerContract

__all__ = [
    "ELSEWHERE",
    "T0",
    "JournalContract",
    "LifecycleContract",
    "RecoveryContract",
    "RunContract",
    "SignalContract",
    "StepContract",
    "StoreContract",
    "VersionContract",
    "WorkerContract",
    "assert_event_types",
    "assert_instance_types",
    "assert_utc",
    "completed",
    "failed",
    "make_event",
    "make_instance",
    "run_together",
    "send",
]


class StoreContract(
    JournalContract,
    RecoveryContract,
    SignalContract,
    LifecycleContract,
    StepContract,
    RunContract,
    WorkerContract,
    VersionContract,
):
    """The store contract. Subclasses provide a ``store`` fixture (a fresh, empty store)."""
