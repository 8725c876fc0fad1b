"""OpenTelemetry spans for workflows (the ``[otel]`` extra; ``durable_tracing``).

A workflow run outlives every process that works on it, and each orchestrator pass
replays its code from the start, so spans are made from the *journal*, not from the code:

* **the run**: ``workflow <name>``, one span per run, from its start to its end. Its ids
  are chosen when the instance is created, as a child of the caller's current span at
  ``.delay()`` (a root otherwise), and stored with the instance
  (``Instance.trace_context``); every pass and step of the run continues that trace. The
  span itself is exported once, by the pass that commits the run's end, with the stored
  ids and start time (a tracer that cannot take given ids, i.e. not the OpenTelemetry
  SDK's, gets a short run span at the start instead). Each later run
  (``continue_as_new``) has a span of its own, a child of the run before.
* **a step attempt**: ``step <task name>``, a child of the run span around the step's
  code in the worker (current while it runs, so the spans of libraries it calls nest in
  it), with ``durable.seq``, ``durable.step``, ``durable.attempt`` and
  ``durable.queue_delay_ms``; a Celery retry ends one attempt's span, the next attempt
  gets its own.
* **timers** (``timer``), **signal waits** (``signal <name>``) and **children**
  (``child <workflow>``, linked to the child's own run span, which is in the same trace)
  are exported by the pass that journals their end, from their journaled times; a
  failed or cancelled run's rollback is one ``compensation`` span over its compensating
  steps.

Every span carries ``durable.workflow_id``, ``durable.workflow`` and ``durable.run``.
Spans are exported only by a pass whose commit won (never by a replay, never twice for one
record). ``opentelemetry-instrumentation-celery`` keeps its own ``apply_async`` / ``run``
spans; messages a pass publishes are sent inside the run's context, so they join the
workflow's trace instead of starting traces of their own.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
import sys
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from celery_durable.engine.journal import Event, Failure, Instance, Kind, State, Status
from celery_durable.engine.saga import compensations
from celery_durable.errors import ConfigurationError

if TYPE_CHECKING:
    from opentelemetry.trace import Span, SpanContext, Tracer

__all__ = ["INSTALL_HINT", "RunTrace", "Tracing", "load_tracing"]

INSTALL_HINT = "pip install 'celery-durable[otel]'"
SCOPE = "celery_durable"
"""The instrumentation scope name of every span."""

_SAMPLED = 0x01


def _derive(span_id: int, label: str) -> int:
    """A span id derived from another one: the same in every process, never 0."""
    digest = hashlib.blake2b(f"{span_id:016x}/{label}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") or 1


def ns(moment: datetime) -> int:
    """An aware ``datetime`` as nanoseconds since the epoch (OpenTelemetry's timestamps)."""
    return (int(moment.timestamp()) * 1_000_000 + moment.microsecond) * 1_000


@dataclass(frozen=True)
class RunTrace:
    """A workflow instance's trace, as stored with it (``Instance.trace_context``).

    Attributes:
        trace_id: the trace every span of the instance belongs to (the caller's).
        span_id: the span of run 1.
        flags: W3C trace flags (sampled or not), as the caller's span had them.
        parent_id: the caller's span at ``.delay()`` (run 1's parent), or ``None``.
        start_ns: when run 1 started.
        emitted: run 1's span was exported at the start already (a tracer that
            cannot take given ids), so its end exports nothing more.
    """

    trace_id: int
    span_id: int
    flags: int
    parent_id: int | None
    start_ns: int
    emitted: bool = False

    def dumps(self) -> str:
        """The stored text: compact JSON."""
        return json.dumps(
            {
                "trace": f"{self.trace_id:032x}",
                "span": f"{self.span_id:016x}",
                "flags": self.flags,
                "parent": None if self.parent_id is None else f"{self.parent_id:016x}",
                "start": self.start_ns,
                **({"emitted": True} if self.emitted else {}),
            },
            separators=(",", ":"),
        )

    @classmethod
    def loads(cls, text: str | None) -> RunTrace | None:
        """Parse a stored trace context; ``None`` for none or an unreadable one."""
        if not text:
            return None
        try:
            data = json.loads(text)
            parent = data.get("parent")
            return cls(
                trace_id=int(data["trace"], 16),
                span_id=int(data["span"], 16),
                flags=int(data.get("flags", _SAMPLED)),
                parent_id=None if parent is None else int(parent, 16),
                start_ns=int(data.get("start", 0)),
                emitted=bool(data.get("emitted", False)),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return None

    def run_span_id(self, run: int) -> int:
        """The span id of run ``run`` (run 1's is stored; later ones are derived)."""
        return self.span_id if run <= 1 else _derive(self.span_id, f"run{run}")

    def run_parent_id(self, run: int) -> int | None:
        """The parent of run ``run``'s span: the caller's span, then the run before."""
        return self.parent_id if run <= 1 else self.run_span_id(run - 1)

    def child(self, run: int, seq: int) -> RunTrace:
        """The trace of the child workflow started at ``seq`` of run ``run``: the same
        trace, its run span a child of this run's span."""
        parent = self.run_span_id(run)
        return RunTrace(
            trace_id=self.trace_id,
            span_id=_derive(parent, f"child{seq}"),
            flags=self.flags,
            parent_id=parent,
            start_ns=0,
        )


def load_tracing(enabled: bool | None) -> Tracing | None:
    """The tracing hooks for the ``durable_tracing`` setting, or ``None`` (tracing off).

    Args:
        enabled: ``True``: on (``opentelemetry-api`` must be installed); ``False``: off;
            ``None``: on if the process has an OpenTelemetry tracer provider set.

    Raises:
        ConfigurationError: ``True`` and ``opentelemetry-api`` is not installed.
    """
    if enabled is False:
        return None
    if enabled is None:
        # Never import OpenTelemetry just to find out: an app that set a provider has.
        if "opentelemetry.trace" not in sys.modules:
            return None
        from opentelemetry import trace

        provider = trace.get_tracer_provider()
        if isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
            return None
        return Tracing()
    try:
        import opentelemetry.trace  # noqa: F401
    except ImportError:
        raise ConfigurationError(
            f"durable_tracing = True needs opentelemetry-api: {INSTALL_HINT}"
        ) from None
    return Tracing()


class _FixedIds:
    """An SDK id generator that hands out the ids a run span was given at its start."""

    def __init__(self, trace_id: int, span_id: int) -> None:
        self.trace_id = trace_id
        self.span_id = span_id

    def generate_trace_id(self) -> int:
        return self.trace_id

    def generate_span_id(self) -> int:
        return self.span_id

    def is_trace_id_random(self) -> bool:
        return True


class Tracing:
    """The spans of workflows; the runtime calls these hooks (see the module docstring)."""

    def __init__(self) -> None:
        from opentelemetry import context, trace

        self._trace = trace
        self._context = context
        self.tracer: Tracer = trace.get_tracer(SCOPE)

    # -- contexts ---------------------------------------------------------------------
    def _sdk_tracer(self) -> Tracer | None:
        """The provider's tracer, if it takes given ids (the SDK's has ``id_generator``)."""
        tracer = self._trace.get_tracer_provider().get_tracer(SCOPE)
        return tracer if hasattr(tracer, "id_generator") else None

    def _remote(self, trace_id: int, span_id: int, flags: int) -> SpanContext:
        from opentelemetry.trace import SpanContext, TraceFlags

        return SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags))

    def _parent(self, trace_id: int, span_id: int | None, flags: int) -> Any:
        """An OpenTelemetry context whose current span is the given one (or empty)."""
        if span_id is None:
            return self._context.Context()
        span = self._trace.NonRecordingSpan(self._remote(trace_id, span_id, flags))
        return self._trace.set_span_in_context(span, self._context.Context())

    def run_context(self, instance: Instance) -> Any:
        """The context of the instance's current run span (``None``: no trace stored)."""
        stored = RunTrace.loads(instance.trace_context)
        if stored is None:
            return None
        return self._parent(stored.trace_id, stored.run_span_id(instance.run), stored.flags)

    def new_run(self, workflow: str, workflow_id: str | None, now: datetime) -> str | None:
        """The trace context of an instance about to be created by ``.delay()``: its run
        span joins the caller's current span (or starts a trace)."""
        caller = self._trace.get_current_span().get_span_context()
        if caller.is_valid:
            trace_id, parent, flags = caller.trace_id, caller.span_id, int(caller.trace_flags)
        else:
            trace_id, parent, flags = random.getrandbits(128) or 1, None, _SAMPLED
        stored = RunTrace(trace_id, random.getrandbits(64) or 1, flags, parent, ns(now))
        if self._sdk_tracer() is None:
            # Ids cannot be given to this tracer: export a short run span now instead.
            span = self.tracer.start_span(
                f"workflow {workflow}",
                context=self._parent(trace_id, parent, flags),
                attributes=_run_attributes(workflow_id or "", workflow, 1),
            )
            span.end()
            own = span.get_span_context()
            if own.is_valid:
                stored = replace(stored, span_id=own.span_id, emitted=True)
        return stored.dumps()

    def child_run(self, parent: Instance, seq: int, now: datetime) -> str | None:
        """The trace context of the child started at ``seq`` by ``parent``'s current run."""
        stored = RunTrace.loads(parent.trace_context)
        if stored is None:
            return None
        return replace(stored.child(parent.run, seq), start_ns=ns(now)).dumps()

    def attached(self, instance: Instance) -> AbstractContextManager[Any]:
        """Make the instance's run span current (messages published inside join it)."""
        run = self.run_context(instance)
        if run is None:
            return nullcontext()
        return _attached(self._context, run)

    # -- spans ------------------------------------------------------------------------
    @contextmanager
    def step(
        self,
        instance: Instance,
        event: Event,
        name: str,
        attempt: int,
        started_at: datetime,
        queued_from: datetime,
    ) -> Iterator[Span | None]:
        """A step attempt's span around its code, current while it runs; its queue delay
        counts from ``queued_from`` (scheduled, or a retry's due time) to ``started_at``."""
        run = self.run_context(instance)
        if run is None:
            yield None
            return
        queued = (started_at - queued_from).total_seconds() * 1000.0
        attributes = {
            **_run_attributes(instance.id, instance.workflow, instance.run),
            "durable.seq": event.seq,
            "durable.step": name,
            "durable.attempt": attempt,
            "durable.queue_delay_ms": max(queued, 0.0),
        }
        span = self.tracer.start_span(
            f"step {name}", context=run, attributes=attributes, start_time=ns(started_at)
        )
        # Exceptions are the caller's to report: a Celery retry is not a failure.
        with self._trace.use_span(
            span, end_on_exit=True, record_exception=False, set_status_on_exception=False
        ):
            yield span

    def retried(self, span: Span | None, exc: BaseException) -> None:
        """The attempt ends in a Celery retry (another attempt follows)."""
        if span is not None:
            span.set_attribute("durable.retry", True)
            span.add_event("retry", {"exception.type": type(exc).__name__})

    def failed(self, span: Span | None, exc: BaseException) -> None:
        """The attempt's code raised: the step fails (or Celery retries it)."""
        if span is not None:
            from opentelemetry.trace import Status as SpanStatus
            from opentelemetry.trace import StatusCode

            span.record_exception(exc)
            span.set_status(SpanStatus(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))

    def committed(
        self,
        instance: Instance,
        journal: Sequence[Event],
        written: Sequence[Event],
        status: Status,
        failure: Failure | None,
        restarted: bool,
        now: datetime,
    ) -> None:
        """Export the spans a won commit completes.

        Args:
            instance: the instance as the pass read it (its run, its trace).
            journal: the run's journal after the pass (the pass's new events included).
            written: the events the commit inserted or updated.
            status: the instance's status after the commit.
            failure: its failure, if it ended failed.
            restarted: the commit began the next run (``continue_as_new``).
            now: the commit's time.
        """
        stored = RunTrace.loads(instance.trace_context)
        if stored is None:
            return
        run = self._parent(stored.trace_id, stored.run_span_id(instance.run), stored.flags)
        base = _run_attributes(instance.id, instance.workflow, instance.run)
        for event in written:
            if event.state.is_final and event.kind in (Kind.TIMER, Kind.SIGNAL, Kind.CHILD):
                self._journaled(stored, instance, event, run, base)
        if not (status.is_terminal or restarted):
            return
        marked = compensations(journal, failure if status is Status.FAILED else None)
        rollback = [e for e in journal if e.seq in marked]
        if rollback:
            first, last = rollback[0], rollback[-1]
            span = self.tracer.start_span(
                "compensation",
                context=run,
                attributes={**base, "durable.seq": first.seq, "durable.steps": len(rollback)},
                start_time=ns(first.scheduled_at),
            )
            span.end(end_time=ns(last.completed_at or now))
        self._run_span(stored, instance, journal, status, failure, restarted, now)

    def _journaled(
        self, stored: RunTrace, instance: Instance, event: Event, run: Any, base: dict[str, Any]
    ) -> None:
        """The span of a timer, signal wait or child, from its journaled times."""
        attributes = {**base, "durable.seq": event.seq}
        links = []
        if event.kind is Kind.TIMER:
            name = "timer"
        elif event.kind is Kind.SIGNAL:
            name = f"signal {event.name}"
            attributes["durable.signal"] = event.name
        else:
            name = f"child {event.name}"
            child = stored.child(instance.run, event.seq)
            links.append(self._trace.Link(self._remote(child.trace_id, child.span_id, child.flags)))
        span = self.tracer.start_span(
            name, context=run, attributes=attributes, links=links, start_time=ns(event.scheduled_at)
        )
        if event.state is State.FAILED and event.failure is not None:
            from opentelemetry.trace import Status as SpanStatus
            from opentelemetry.trace import StatusCode

            message = f"{event.failure.type}: {event.failure.message}"
            span.set_status(SpanStatus(StatusCode.ERROR, message))
        span.end(end_time=ns(event.completed_at or event.scheduled_at))

    def _run_span(
        self,
        stored: RunTrace,
        instance: Instance,
        journal: Sequence[Event],
        status: Status,
        failure: Failure | None,
        restarted: bool,
        now: datetime,
    ) -> None:
        """Export the run's span with its stored ids, from its start to ``now``."""
        run = instance.run
        if run <= 1 and stored.emitted:
            return
        tracer = self._sdk_tracer()
        if tracer is None:
            return
        fixed = copy.copy(tracer)
        fixed.id_generator = _FixedIds(stored.trace_id, stored.run_span_id(run))  # type: ignore[attr-defined]
        if run <= 1 and stored.start_ns:
            start = stored.start_ns
        else:
            start = min((ns(e.scheduled_at) for e in journal), default=ns(instance.created_at))
        parent = self._parent(stored.trace_id, stored.run_parent_id(run), stored.flags)
        attributes = {
            **_run_attributes(instance.id, instance.workflow, run),
            "durable.status": "continued" if restarted else status.value,
        }
        span = fixed.start_span(
            f"workflow {instance.workflow}", context=parent, attributes=attributes, start_time=start
        )
        if status in (Status.FAILED, Status.STUCK, Status.CANCELLED) and not restarted:
            from opentelemetry.trace import Status as SpanStatus
            from opentelemetry.trace import StatusCode

            message = f"{failure.type}: {failure.message}" if failure else status.value
            span.set_status(SpanStatus(StatusCode.ERROR, message))
        span.end(end_time=max(ns(now), start))


@contextmanager
def _attached(context: Any, run: Any) -> Iterator[None]:
    token = context.attach(run)
    try:
        yield
    finally:
        context.detach(token)


def _run_attributes(workflow_id: str, workflow: str, run: int) -> dict[str, Any]:
    return {"durable.workflow_id": workflow_id, "durable.workflow": workflow, "durable.run": run}
