"""The ``durable_*`` settings read from ``app.conf``, with their defaults."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

from celery.utils.quorum_queues import detect_quorum_queues

from celery_durable.errors import ConfigurationError
from celery_durable.runtime.codec import content_type
from celery_durable.stores.base import DEFAULT_URL

logger = logging.getLogger("celery_durable")

#: The ``eta_max`` under which no timer is sent as an ETA message: every timer is kept in
#: the store and the tick fires it.
TIMERS_IN_STORE = 0.001


@dataclass(frozen=True)
class Settings:
    """celery_durable's configuration.

    Attributes:
        store: the journal's URL (``durable_store``); a SQLite file in the working
            directory by default.
        queue: the queue the orchestrator (resume) tasks are sent to (``durable_queue``);
            ``None`` means Celery's default queue.
        serializer: the kombu serializer for journal payloads (``durable_serializer``);
            defaults to the app's ``task_serializer``.
        eta_max: the longest wait, in seconds, sent to the broker as a message with an
            ETA (``durable_eta_max``, default 300). Longer timers are kept only in the
            store and fired by the tick. Must stay below the broker's visibility timeout,
            or Redis/SQS would deliver those messages again and again, and below
            RabbitMQ's ``consumer_timeout`` (30 minutes by default; checked), or RabbitMQ
            would close the channel holding them.
        tick_interval: seconds between two ticks (``durable_tick_interval``, default 5),
            the beat-driven task that fires due timers and recovers lost messages.
        step_timeout: seconds a step (or a resume) message may wait unstarted before it is
            presumed lost and sent again (``durable_step_timeout``, default 300).
        heartbeat_interval: seconds between two heartbeats of a running step
            (``durable_heartbeat_interval``, default 2); a step that misses five is
            presumed dead with its worker and sent again.
        outcome_patience: seconds a step that has run keeps trying to journal its outcome
            while the store is out of reach (``durable_outcome_patience``, default 60),
            still beating, so a database restart or failover does not run the step
            again. Past it, the step is retried by Celery, which runs it again.
        resume_time_limit: seconds one orchestrator pass may run
            (``durable_resume_time_limit``, default 120): Celery's soft time limit of the
            resume task (the hard one comes 15 s later; prefork pools only). Workflow code
            that blocks past it parks the instance as ``stuck`` instead of holding a
            worker slot for ever.
        max_resends: how many times a step presumed lost after it started (its worker
            died, or a hard ``time_limit`` killed it) is sent again
            (``durable_max_resends``, default 3); one more loss fails it with
            ``StepFailed`` of type ``"StepLost"``, so the workflow's ``except`` blocks and
            compensations run instead of a poison step looping for ever.
        accept_content: the serializers journal payloads may be decoded with
            (``durable_accept_content``; kombu names such as ``"json"`` or content types
            such as ``"application/json"``, as Celery's ``accept_content``). Defaults to
            ``serializer`` and ``"json"``; a payload recorded with any other serializer is
            refused with :class:`~celery_durable.SerializationError`, never decoded.
        eager_steps: how many steps one step task may run in a row in its own process
            (``durable_eager_steps``, default 100; 0 turns it off). When a step's commit
            schedules exactly one next step that this worker would take from the same
            queue (no rate limit, no time limit), it is journaled as started in that
            commit and run right away, without a broker round trip; everything else is
            published as usual.
        eager_seconds: a step task stops running further steps in a row once it has run
            this long (``durable_eager_seconds``, default 1.0), so that messages queued
            behind it are not held back by a long chain.
        live_cache: how many suspended workflows each worker process keeps in memory
            between passes (``durable_live_cache``, default 1000; 0 turns it off). A pass
            that finds its workflow here (and the journal as that process left it)
            continues it instead of replaying the journal.
        start_in_caller: whether ``.delay()`` / ``.apply_async()`` runs the new instance's
            first orchestrator pass in the calling process when that process has the
            workflow registered (``durable_start_in_caller``, default ``True``): the
            workflow's code up to its first wait runs there and its first steps are
            published from there, saving the round trip of a resume message. ``False``
            leaves every pass to the workers.
        code_version: the version stamped on every instance started (and every run
            begun by ``continue_as_new``) by this code (``durable_code_version``, e.g. a
            release tag or git sha; at most 64 characters). ``None`` (the default) stamps
            each workflow's own version: a hash of its function's source. Shown by
            ``durable list`` / ``show``; ``durable list --version V`` filters on it.
            Recovery never skips an instance for its version.
        tracing: OpenTelemetry spans for workflow runs, steps, timers, signal waits,
            children and compensations (``durable_tracing``; needs the ``[otel]``
            extra). ``None`` (the default): on in a process that has set an
            OpenTelemetry tracer provider; ``True``: on; ``False``: off, at no cost.
        metrics: Prometheus metrics (``durable_metrics``; the ``[metrics]`` extra).
            ``None`` (the default): on when ``prometheus-client`` is installed.
    """

    store: str
    queue: str | None
    serializer: str
    accept_content: tuple[str, ...] = ()
    eta_max: float = 300.0
    tick_interval: float = 5.0
    step_timeout: float = 300.0
    heartbeat_interval: float = 2.0
    outcome_patience: float = 60.0
    resume_time_limit: float = 120.0
    max_resends: int = 3
    eager_steps: int = 100
    eager_seconds: float = 1.0
    live_cache: int = 1000
    start_in_caller: bool = True
    code_version: str | None = None
    tracing: bool | None = None
    metrics: bool | None = None

    @classmethod
    def from_conf(cls, conf: Any) -> Settings:
        """Read the settings from a Celery app's ``conf``.

        Raises:
            ConfigurationError: a value is not a positive number, or ``durable_eta_max``
                is not below the broker's ``visibility_timeout``, or a serializer is
                unknown to kombu, or ``durable_accept_content`` leaves out the configured
                serializer.
        """
        numbers: dict[str, Any] = {}
        for name, default in (
            ("eta_max", cls.eta_max),
            ("tick_interval", cls.tick_interval),
            ("step_timeout", cls.step_timeout),
            ("heartbeat_interval", cls.heartbeat_interval),
            ("outcome_patience", cls.outcome_patience),
            ("resume_time_limit", cls.resume_time_limit),
            ("eager_seconds", cls.eager_seconds),
        ):
            value = conf.get(f"durable_{name}")
            value = default if value is None else value
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigurationError(
                    f"durable_{name} must be a positive number of seconds, not {value!r}"
                )
            numbers[name] = float(value)
        counts: dict[str, Any] = {}
        for name, default in (
            ("max_resends", cls.max_resends),
            ("eager_steps", cls.eager_steps),
            ("live_cache", cls.live_cache),
        ):
            count = conf.get(f"durable_{name}")
            count = default if count is None else count
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise ConfigurationError(
                    f"durable_{name} must be a whole number >= 0, not {count!r}"
                )
            counts[name] = count
        options = conf.get("broker_transport_options") or {}
        visibility = options.get("visibility_timeout")
        if visibility is not None and numbers["eta_max"] >= float(visibility):
            raise ConfigurationError(
                f"durable_eta_max ({numbers['eta_max']:g} s) must be below the broker's "
                f"visibility_timeout ({visibility} s): a message with a longer ETA is "
                "delivered again every visibility timeout. Lower durable_eta_max (longer "
                "timers then live in the store and the tick fires them) or raise "
                "broker_transport_options['visibility_timeout']"
            )
        _check_consumer_timeout(conf, numbers["eta_max"])
        start_in_caller = conf.get("durable_start_in_caller")
        if start_in_caller is not None and not isinstance(start_in_caller, bool):
            raise ConfigurationError(
                f"durable_start_in_caller must be True or False, not {start_in_caller!r}"
            )
        serializer = conf.get("durable_serializer") or conf.get("task_serializer") or "json"
        code_version = conf.get("durable_code_version")
        if code_version is not None and (
            not isinstance(code_version, str) or not 0 < len(code_version) <= 64
        ):
            raise ConfigurationError(
                "durable_code_version must be a string of 1 to 64 characters (a release "
                f"tag or git sha), not {code_version!r}; leave it unset to stamp a hash of "
                "each workflow's source"
            )
        switches: dict[str, bool | None] = {}
        for name in ("tracing", "metrics"):
            switch = conf.get(f"durable_{name}")
            if switch is not None and not isinstance(switch, bool):
                raise ConfigurationError(
                    f"durable_{name} must be True, False or None (automatic), not {switch!r}"
                )
            switches[name] = switch
        return cls(
            code_version=code_version,
            tracing=switches["tracing"],
            metrics=switches["metrics"],
            store=conf.get("durable_store") or DEFAULT_URL,
            queue=conf.get("durable_queue") or None,
            serializer=serializer,
            accept_content=_accept_content(conf.get("durable_accept_content"), serializer),
            start_in_caller=cls.start_in_caller if start_in_caller is None else start_in_caller,
            **counts,
            **numbers,
        )


RABBITMQ_CONSUMER_TIMEOUT = 1800.0
"""RabbitMQ's default ``consumer_timeout`` (30 minutes, since 3.8.15)."""

_AMQP_SCHEMES = ("amqp", "amqps", "pyamqp", "librabbitmq")


def _check_consumer_timeout(conf: Any, eta_max: float) -> None:
    """On RabbitMQ, ``durable_eta_max`` must stay below the server's ``consumer_timeout``.

    A worker holds an ETA message unacked until it is due; RabbitMQ closes the channel of
    a consumer that holds a delivery longer than ``consumer_timeout`` (the worker then
    reconnects and every message it held is delivered again). The server's value is not
    visible to the client: it is taken as RabbitMQ's default, 30 minutes, unless
    ``broker_transport_options["consumer_timeout"]`` (seconds) says otherwise.
    """
    if not _on_rabbitmq(conf):
        return
    options = conf.get("broker_transport_options") or {}
    timeout = options.get("consumer_timeout", RABBITMQ_CONSUMER_TIMEOUT)
    if eta_max >= float(timeout):
        raise ConfigurationError(
            f"durable_eta_max ({eta_max:g} s) must be well below RabbitMQ's consumer_timeout "
            f"({float(timeout):g} s): a worker holds an ETA message unacked until it is due, "
            "and RabbitMQ closes the channel of a consumer that holds one longer, so every "
            "message it held is delivered again. Lower durable_eta_max (longer timers then "
            "live in the store and the tick fires them), or, if the server's consumer_timeout "
            "is higher, say so in broker_transport_options['consumer_timeout'] (seconds)"
        )


def _on_rabbitmq(conf: Any) -> bool:
    url = str(conf.get("broker_url") or conf.get("broker_write_url") or "")
    return url.split("://", 1)[0].split("+")[0].lower() in _AMQP_SCHEMES


def without_held_etas(app: Any, settings: Settings) -> Settings:
    """``settings`` with every timer kept in the store if an ETA message would block a
    worker: on RabbitMQ, a quorum queue bound to a direct exchange.

    A quorum queue has no global QoS, so Celery cannot raise a consumer's prefetch for
    the ETA messages it holds; its native delayed delivery (RabbitMQ's own delay
    exchanges) needs a topic exchange. On a direct one, a worker would hold each timer's
    message in one of its prefetch slots until due: two 5-minute ``ctx.sleep`` calls
    would stop a worker of concurrency 2 taking anything for five minutes. So none is
    sent; the tick fires every timer (within ``durable_tick_interval``), and a warning
    names the fix.
    """
    if settings.eta_max <= TIMERS_IN_STORE or not whole_second_delays(app):
        return settings
    held = sorted(
        name
        for name, queue in app.amqp.queues.items()
        if (queue.queue_arguments or {}).get("x-queue-type") == "quorum"
        and (queue.exchange is None or queue.exchange.type == "direct")
    )
    if not held:
        return settings
    logger.warning(
        "celery_durable: %s %s a RabbitMQ quorum queue on a direct exchange, where a worker "
        "holds a message with an ETA in one of its prefetch slots until it is due (Celery's "
        "native delayed delivery needs a topic exchange): no timer is sent as an ETA "
        "message, the tick fires each (within durable_tick_interval, %g s). Declare the "
        "queue's exchange as Exchange(name, type='topic') to have RabbitMQ delay them; "
        "Celery's own retry countdowns on that queue still hold a slot",
        ", ".join(repr(name) for name in held),
        "is" if len(held) == 1 else "are",
        settings.tick_interval,
    )
    return replace(settings, eta_max=TIMERS_IN_STORE)


def whole_second_delays(app: Any) -> bool:
    """Whether the broker carries delays in whole seconds: where Celery finds a quorum
    queue on RabbitMQ (its own ``detect_quorum_queues``), its native delayed delivery
    routes a countdown through RabbitMQ's delay exchanges by its whole seconds, and
    raises ``ValueError`` for one below 1 s."""
    with app.connection_for_write() as connection:
        driver_type = connection.transport.driver_type
    return bool(detect_quorum_queues(app, driver_type)[0])


def _accept_content(value: Any, serializer: str) -> tuple[str, ...]:
    """``durable_accept_content`` checked: every entry known to kombu, ``serializer`` in it."""
    if value is None:
        entries = [serializer, "json"]
    elif isinstance(value, str):
        entries = [part.strip() for part in value.split(",") if part.strip()]
    elif isinstance(value, (list, tuple, set, frozenset)) and all(
        isinstance(v, str) for v in value
    ):
        entries = list(value)
    else:
        raise ConfigurationError(
            "durable_accept_content must be a list of serializer names or content types "
            f"(e.g. ['json'] or ['application/json']), not {value!r}"
        )
    accepted = tuple(dict.fromkeys(entries))  # without repeats, in the given order
    try:
        types = {content_type(entry) for entry in accepted}
    except ConfigurationError as exc:
        raise ConfigurationError(f"durable_accept_content: {exc}") from None
    try:
        own = content_type(serializer)
    except ConfigurationError as exc:
        raise ConfigurationError(f"durable_serializer: {exc}") from None
    if own not in types:
        raise ConfigurationError(
            f"durable_serializer {serializer!r} is not in durable_accept_content "
            f"{list(accepted)!r}: the app could not read the payloads it writes; add "
            f"{serializer!r} to app.conf.durable_accept_content"
        )
    return accepted
