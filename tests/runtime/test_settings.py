"""The ``durable_*`` settings: defaults, values read from ``app.conf``, bad values refused."""

from __future__ import annotations

import pytest
from celery import Celery

from celery_durable.errors import ConfigurationError
from celery_durable.runtime.settings import Settings

NUMBERS = [
    "eta_max",
    "tick_interval",
    "step_timeout",
    "heartbeat_interval",
    "outcome_patience",
]


def conf(**values: object) -> object:
    app = Celery("settings", set_as_current=False)
    app.conf.update({f"durable_{name}": value for name, value in values.items()})
    return app.conf


def test_defaults() -> None:
    settings = Settings.from_conf(conf())
    assert (settings.step_timeout, settings.heartbeat_interval) == (300.0, 2.0)
    assert settings.outcome_patience == 60.0


@pytest.mark.parametrize("name", NUMBERS)
def test_each_number_is_read(name: str) -> None:
    assert getattr(Settings.from_conf(conf(**{name: 7})), name) == 7.0


@pytest.mark.parametrize("name", NUMBERS)
@pytest.mark.parametrize("bad", [0, -1, "10", True])
def test_a_bad_number_is_refused_by_name(name: str, bad: object) -> None:
    with pytest.raises(ConfigurationError, match=f"durable_{name} must be a positive number"):
        Settings.from_conf(conf(**{name: bad}))
