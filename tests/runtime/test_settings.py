"""The ``durable_*`` settings: defaults, values read from ``app.conf``, bad values refused."""

from __future__ import annotations

import logging

import pytest
from celery import Celery
from kombu import Exchange, Queue
from kombu.exceptions import OperationalError

from celery_durable import Durable
from celery_durable.errors import ConfigurationError
from celery_durable.runtime.settings import TIMERS_IN_STORE, Settings, without_held_etas
from celery_durable.runtime.unsent import broker_errors

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


def test_code_version_is_read_and_checked() -> None:
    assert Settings.from_conf(conf()).code_version is None
    assert Settings.from_conf(conf(code_version="v2.3.1")).code_version == "v2.3.1"
    for bad in ("", "x" * 65, 3, b"v1"):
        with pytest.raises(ConfigurationError, match="durable_code_version must be a string"):
            Settings.from_conf(conf(code_version=bad))


def test_the_default_code_version_is_a_hash_of_the_source() -> None:
    from celery_durable import Durable

    durable = Durable(Celery("versions", broker="memory://", set_as_current=False))

    async def wf(ctx: object) -> None:
        return None

    async def wf2(ctx: object) -> int:
        return 2

    workflow = durable.workflow(name="versions.wf")(wf)  # type: ignore[arg-type]
    changed = durable.workflow(name="versions.wf2")(wf2)  # type: ignore[arg-type]
    assert len(workflow.code_version) == 12
    assert int(workflow.code_version, 16) >= 0
    assert changed.code_version != workflow.code_version


def _amqp_conf(**values: object) -> object:
    app = Celery("settings", broker="amqp://guest@localhost//", set_as_current=False)
    app.conf.update(values)
    return app.conf


def test_eta_max_stays_below_rabbitmqs_consumer_timeout() -> None:
    assert Settings.from_conf(_amqp_conf()).eta_max == 300.0
    with pytest.raises(ConfigurationError, match=r"below RabbitMQ's consumer_timeout \(1800 s\)"):
        Settings.from_conf(_amqp_conf(durable_eta_max=1800))
    told = _amqp_conf(durable_eta_max=1800, broker_transport_options={"consumer_timeout": 7200})
    assert Settings.from_conf(told).eta_max == 1800.0
    redis_app = Celery("settings", broker="redis://localhost", set_as_current=False)
    redis_app.conf.durable_eta_max = 1800
    assert Settings.from_conf(redis_app.conf).eta_max == 1800.0


def _quorum_app(broker: str, exchange_type: str) -> Celery:
    app = Celery("settings", broker=broker, set_as_current=False)
    app.conf.task_queues = [
        Queue(
            "orders",
            Exchange("orders", type=exchange_type),
            routing_key="orders",
            queue_arguments={"x-queue-type": "quorum"},
        ),
        Queue("classic", Exchange("classic"), routing_key="classic"),
    ]
    return app


def test_a_quorum_queue_on_a_direct_exchange_keeps_every_timer_in_the_store(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A worker would hold an ETA message in a prefetch slot until due there (no global
    QoS, and Celery's native delayed delivery needs a topic exchange): none is sent."""
    app = _quorum_app("amqp://guest@localhost//", "direct")
    with caplog.at_level(logging.WARNING, logger="celery_durable"):
        settings = without_held_etas(app, Settings.from_conf(app.conf))
    assert settings.eta_max == TIMERS_IN_STORE
    assert "'orders' is a RabbitMQ quorum queue on a direct exchange" in caplog.text
    assert "Exchange(name, type='topic')" in caplog.text
    assert Durable(app).settings.eta_max == TIMERS_IN_STORE  # what the runtime uses
    for kept in (
        _quorum_app("amqp://guest@localhost//", "topic"),  # RabbitMQ delays them itself
        _quorum_app("redis://localhost", "direct"),  # not RabbitMQ: queue arguments unused
    ):
        assert without_held_etas(kept, Settings.from_conf(kept.conf)).eta_max == 300.0
    classic = Celery("settings", broker="amqp://guest@localhost//", set_as_current=False)
    assert without_held_etas(classic, Settings.from_conf(classic.conf)).eta_max == 300.0


@pytest.mark.parametrize("broker", ["redis://localhost", "amqp://guest@localhost//"])
def test_broker_errors_are_connection_errors_only(broker: str) -> None:
    """What a publish may raise for the journal to take a message as unsent: never a
    plain bug (kombu's Redis transport lists KeyError among its connection errors)."""
    app = Celery("settings", broker=broker, set_as_current=False)
    errors = broker_errors(app)
    assert OperationalError in errors
    assert OSError in errors
    assert not any(issubclass(KeyError, error) for error in errors)
    assert not any(issubclass(ValueError, error) for error in errors)


def test_countdowns_go_in_whole_seconds_where_rabbitmq_delays_them() -> None:
    """Celery's native delayed delivery (RabbitMQ with a quorum queue) routes a countdown
    by its whole seconds and raises ValueError below 1 s: rounded up there, only there."""
    quorum = Durable(_quorum_app("amqp://guest@localhost//", "topic"))
    assert [quorum.broker_countdown(s) for s in (0.2, 1.0, 1.2, 0.0, -1.0)] == [
        1.0,
        1.0,
        2.0,
        0.0,
        -1.0,
    ]
    classic = Durable(Celery("settings", broker="amqp://guest@localhost//", set_as_current=False))
    redis = Durable(_quorum_app("redis://localhost", "topic"))  # queue arguments unused
    assert classic.broker_countdown(0.2) == redis.broker_countdown(0.2) == 0.2
