"""Prometheus metrics of workflows, steps, re-sends and the tick (the ``[metrics]`` extra).

Every worker process records into ``prometheus_client``'s metrics; under a prefork pool
set ``PROMETHEUS_MULTIPROC_DIR`` (an empty directory, the same for the worker, beat and
whatever serves ``/metrics``) before the processes start, so that every pool process
writes its samples to files there and one scrape adds them up
(:mod:`celery_durable.telemetry.exposition`).

=========================================  =========  =========================================
metric                                     type       labels / meaning
=========================================  =========  =========================================
``durable_workflows_started_total``        counter    ``workflow``: instances whose first pass
                                                      committed
``durable_workflows_completed_total``      counter    ``workflow``
``durable_workflows_failed_total``         counter    ``workflow``
``durable_workflows_stuck_total``          counter    ``workflow``: parked (a bug, a changed
                                                      workflow, a blocking pass)
``durable_workflows_cancelled_total``      counter    ``workflow``
``durable_step_duration_seconds``          histogram  ``step``: one attempt's run time
``durable_step_queue_delay_seconds``       histogram  ``step``: from scheduled (or due, for a
                                                      retry) to started
``durable_resends_total``                  counter    ``cause``: ``lost_message`` (never
                                                      started), ``dead_worker`` (went silent
                                                      after it started), ``step_lost`` (failed
                                                      for good as ``StepLost``)
``durable_tick_lag_seconds``               gauge      now - the oldest due ``wake_at`` when a
                                                      tick ran (0: nothing was late)
``durable_tick_claimed_instances``         histogram  instances one tick claimed
=========================================  =========  =========================================

The scrape adds ``durable_instances`` (gauge, ``status``), counted in the store.
"""

from __future__ import annotations

import importlib.util
import threading
from typing import Any

from celery_durable.errors import ConfigurationError

__all__ = ["INSTALL_HINT", "RESEND_CAUSES", "Metrics", "load_metrics"]

INSTALL_HINT = "pip install 'celery-durable[metrics]'"

RESEND_CAUSES = ("lost_message", "dead_worker", "step_lost")
"""The ``cause`` label values of ``durable_resends_total``."""

ENDINGS = ("completed", "failed", "stuck", "cancelled")
"""The statuses with a ``durable_workflows_<status>_total`` counter."""

_STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
_CLAIM_BUCKETS = (0, 1, 5, 10, 50, 100, 500, 1000, 5000)

_lock = threading.Lock()
_shared: Metrics | None = None


def load_metrics(enabled: bool | None) -> Metrics | None:
    """The metrics hooks for the ``durable_metrics`` setting, or ``None`` (metrics off).

    Args:
        enabled: ``True``: on (``prometheus-client`` must be installed); ``False``:
            off; ``None``: on if ``prometheus-client`` is installed.

    Raises:
        ConfigurationError: ``True`` and ``prometheus-client`` is not installed.
    """
    global _shared
    if enabled is False:
        return None
    if importlib.util.find_spec("prometheus_client") is None:
        if enabled:
            raise ConfigurationError(
                f"durable_metrics = True needs prometheus-client: {INSTALL_HINT}"
            )
        return None
    with _lock:
        # One set per process: prometheus_client's registry refuses a second metric of a
        # name, and every Durable of the process records into the same series.
        if _shared is None:
            _shared = Metrics()
        return _shared


class Metrics:
    """The library's Prometheus metrics (see the module docstring); the runtime's hooks."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.started_total = Counter(
            "durable_workflows_started",
            "Workflow instances started (first pass committed), by workflow.",
            ["workflow"],
        )
        self.ended_total = {
            status: Counter(
                f"durable_workflows_{status}",
                f"Workflow runs that ended {status}, by workflow.",
                ["workflow"],
            )
            for status in ENDINGS
        }
        self.step_duration = Histogram(
            "durable_step_duration_seconds",
            "How long one attempt of a step ran, by step (task name).",
            ["step"],
            buckets=_STEP_BUCKETS,
        )
        self.step_queue_delay = Histogram(
            "durable_step_queue_delay_seconds",
            "How long a step waited from scheduled (or due) to started, by step.",
            ["step"],
            buckets=_STEP_BUCKETS,
        )
        self.resends_total = Counter(
            "durable_resends",
            "Steps sent again, by cause: lost_message, dead_worker, step_lost.",
            ["cause"],
        )
        for cause in RESEND_CAUSES:
            self.resends_total.labels(cause=cause)  # every cause shows, 0 included
        self.tick_lag = Gauge(
            "durable_tick_lag_seconds",
            "Now minus the oldest due wake_at when the last tick ran (0: none was late).",
            multiprocess_mode="mostrecent",
        )
        self.tick_claimed = Histogram(
            "durable_tick_claimed_instances",
            "Instances claimed by one tick.",
            buckets=_CLAIM_BUCKETS,
        )

    def started(self, workflow: str) -> None:
        """An instance's first pass committed."""
        self.started_total.labels(workflow=workflow).inc()

    def ended(self, workflow: str, status: str) -> None:
        """A run ended ``completed``, ``failed``, ``stuck`` or ``cancelled``."""
        counter = self.ended_total.get(status)
        if counter is not None:
            counter.labels(workflow=workflow).inc()

    def step(self, step: str, duration: float, queue_delay: float | None) -> None:
        """A step attempt ran for ``duration`` seconds after ``queue_delay`` in the queue."""
        self.step_duration.labels(step=step).observe(max(duration, 0.0))
        if queue_delay is not None:
            self.step_queue_delay.labels(step=step).observe(max(queue_delay, 0.0))

    def resent(self, cause: str, count: int = 1) -> None:
        """``count`` steps were sent again (or failed as lost) for ``cause``."""
        if count:
            self.resends_total.labels(cause=cause).inc(count)

    def tick(self, lag: float, claimed: int) -> None:
        """A tick ran ``lag`` seconds behind the oldest due instance and claimed some."""
        self.tick_lag.set(max(lag, 0.0))
        self.tick_claimed.observe(claimed)


def describe() -> dict[str, Any]:
    """Metric names and types, for documentation and tests."""
    return {
        "durable_workflows_started_total": "counter",
        **{f"durable_workflows_{status}_total": "counter" for status in ENDINGS},
        "durable_step_duration_seconds": "histogram",
        "durable_step_queue_delay_seconds": "histogram",
        "durable_resends_total": "counter",
        "durable_tick_lag_seconds": "gauge",
        "durable_tick_claimed_instances": "histogram",
        "durable_instances": "gauge",
    }
