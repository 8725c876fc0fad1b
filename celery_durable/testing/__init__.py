"""Tools for testing celery_durable and code built on it.

* :class:`DurableTestEnv`: your workflows run for real in the test process — Celery's
  in-memory broker, an in-memory SQLite journal, an in-process worker — with time
  skipping (``env.sleep(days=30)``; ``handle.result()`` skips to the next timer), step
  mocks (``env.mock_step(charge, raises=ConnectionError, fail_times=2)``) and signals.
* The pytest plugin :mod:`celery_durable.testing.plugin` (installed with the package):
  the ``durable_env`` fixture, configured with the ``durable_app`` ini option.
* :func:`replay`: replay journals exported by ``celery -A app durable export`` against
  the workflow's current code, in a unit test (``durable replay-check`` for one workflow).
* :class:`Clock`: a clock tests move forward (``clock.advance(days=30)``), so a workflow
  that sleeps for a year runs in seconds against a real worker.
* :mod:`celery_durable.testing.contract`: ``StoreContract``, the pytest suite every
  :class:`~celery_durable.stores.base.Store` implementation must pass. It and the plugin
  import pytest; this package does not, so importing ``celery_durable.testing`` never
  needs it.
"""

from celery_durable.testing.clock import Clock
from celery_durable.testing.env import DurableTestEnv
from celery_durable.testing.journals import replay
from celery_durable.testing.mocks import MockedStepError, StepCall, StepMock

__all__ = ["Clock", "DurableTestEnv", "MockedStepError", "StepCall", "StepMock", "replay"]
