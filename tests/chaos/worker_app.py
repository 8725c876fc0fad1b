"""``celery -A chaos.worker_app worker|beat``: the crash tests' app, set by ``CHAOS_*``."""

from chaos.apps import from_env

app = from_env().app
