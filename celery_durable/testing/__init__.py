"""Tools for testing celery_durable and code built on it.

* :mod:`celery_durable.testing.contract`: ``StoreContract``, the pytest suite every
  :class:`~celery_durable.stores.base.Store` implementation must pass. It imports pytest;
  this package does not, so importing ``celery_durable.testing`` never needs it.
"""
