"""The public surface: what ``import celery_durable`` gives, and what it does not load."""

from __future__ import annotations

import subprocess
import sys

import celery_durable
from celery_durable import errors


def test_all_is_sorted_and_importable() -> None:
    assert celery_durable.__all__ == sorted(celery_durable.__all__)
    for name in celery_durable.__all__:
        assert getattr(celery_durable, name) is not None


def test_every_error_is_public_and_a_durable_error() -> None:
    public = {
        name
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, Exception) and not name.startswith("_")
    }
    assert public <= set(celery_durable.__all__)
    for name in public:
        assert issubclass(getattr(errors, name), errors.DurableError)


def test_import_does_not_load_store_drivers() -> None:
    # A web process that only starts workflows must not pay for drivers it does not use.
    code = (
        "import sys, celery_durable; "
        "print(sorted(m for m in ('sqlalchemy', 'redis', 'psycopg') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
