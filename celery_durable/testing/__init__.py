"""Tools for testing celery_durable and code built on it.

* :class:`Clock`: a clock tests move forward (``clock.advance(days=30)``), so a workflow
  that sleeps for a year runs in seconds against a real worker.
* :mod:`celery_durable.testing.contract`: ``StoreContract``, the pytest suite every
  :class:`~celery_durable.stores.base.Store` implementation must pass. It imports pytest;
  this package does not, so importing ``celery_durable.testing`` never needs it.
"""

from celery_durable.testing.clock import Clock

__all__ = ["Clock"]
