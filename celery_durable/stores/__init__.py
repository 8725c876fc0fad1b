"""Stores keep the journal: instances and their events.

:func:`open_store` turns a URL into a store; the SQLAlchemy and Redis implementations
are imported only when a URL asks for them.
"""

from celery_durable.stores.base import Commit, Store, open_store

__all__ = ["Commit", "Store", "open_store"]
