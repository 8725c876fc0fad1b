"""One orchestrator pass: load the journal, replay, commit with compare-and-set, publish.

The commit happens before any message is published (the outbox rule). A pass that loses
the compare-and-set re-reads the journal and replays again, so an outcome that raced
with another pass is never left un-resumed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from celery_durable import faults
from celery_durable.client import close_children, terminate
from celery_durable.engine.commands import Decision, ScheduleStep, StartChild
from celery_durable.engine.journal import Event, Failure, Instance, Kind, State, Status
from celery_durable.engine.live import LiveRun, replay_live
from celery_durable.errors import (
    SerializationError,
    StoreError,
    WorkflowNotFound,
)
from celery_durable.runtime import observe
from celery_durable.runtime.children import start_children, waiting_children
from celery_durable.runtime.ids import step_task_id
from celery_durable.runtime.live import LiveEntry, journal_after
from celery_durable.runtime.recovery import Wake, lost_for_good, plan
from celery_durable.stores.base import Commit

if TYPE_CHECKING:
    from celery_durable.runtime.durable import Durable, Workflow
    from celery_durable.runtime.eager import EagerChain

logger = logging.getLogger("celery_durable")

#: An instance and its events, as :meth:`Store.load` returns them.
Loaded = tuple[Instance, list[Event]]

#: How many times one pass re-reads after losing the compare-and-set before giving up
#: (the caller then retries the message); losing means another pass made progress.
MAX_CAS_ROUNDS = 100


@dataclass(frozen=True)
class StepOutcome:
    """What a step worker reports: the step's position and its result or failure."""

    seq: int
    result: Any = None
    failure: Failure | None = None
    attempts: int = 1
    started_at: datetime | None = None
    run: int | None = None
    """The run the step belongs to; ``None`` (the runtime's own outcomes) means this run."""
    name: str | None = None
    """The step's task name; the journal record at ``seq`` must be a step of that name."""


def _belongs(instance: Instance, events: list[Event], outcome: StepOutcome) -> Event | None:
    """The pending-or-final journal record ``outcome`` is for, or ``None`` if it is for
    another run, a record that does not exist or one that is not that step."""
    if outcome.run is not None and outcome.run != instance.run:
        logger.info(
            "workflow %s is on run %d: dropping an outcome of run %d (seq %d)",
            instance.id,
            instance.run,
            outcome.run,
            outcome.seq,
        )
        return None
    event = events[outcome.seq] if outcome.seq < len(events) else None
    if (
        event is None
        or event.seq != outcome.seq
        or event.kind is not Kind.STEP
        or (outcome.name is not None and event.name != outcome.name)
    ):
        logger.error(
            "workflow %s has no step %s at seq %d; dropping its outcome",
            instance.id,
            outcome.name or "",
            outcome.seq,
        )
        return None
    return event


def commit_beside(
    durable: Durable,
    instance: Instance,
    *,
    outcomes: list[Event] | tuple[Event, ...] = (),
    resent: list[int] | tuple[int, ...] = (),
    wake_at: datetime | None,
    note: str | None = None,
    updated_at: datetime | None = None,
) -> bool:
    """Commit journal changes without a replay (outcomes, steps sent again, a note),
    leaving the instance's status, result and custom status as they are.

    Returns:
        ``False`` if the compare-and-set lost (read again and decide again).
    """
    return durable.store.commit(
        Commit(
            instance_id=instance.id,
            expected_version=instance.version,
            status=instance.status,
            updated_at=updated_at or durable.now(),
            output=instance.output,
            failure=instance.failure,
            outcomes=outcomes,
            resent=resent,
            wake_at=wake_at,
            custom_status=instance.custom_status,
            note=note,
            waiting_at=instance.waiting_at,
        )
    )


def _journal_outcome(
    durable: Durable, event: Event, outcome: StepOutcome, codec_name: str
) -> Event:
    """The event with ``outcome`` written in; a result the codec refuses becomes a failure."""
    failure = outcome.failure
    output = None
    if failure is None:
        try:
            output = durable.codec(codec_name).dumps(outcome.result)
        except SerializationError as exc:
            failure = Failure(
                "SerializationError",
                f"the result of step {event.name!r} cannot be journaled ({exc}); "
                "return plain data from steps",
            )
    return replace(
        event,
        state=State.FAILED if failure else State.COMPLETED,
        output=output,
        failure=failure,
        completed_at=durable.now(),
        attempts=max(event.attempts, outcome.attempts),
        started_at=outcome.started_at or event.started_at,
    )


def advance(
    durable: Durable,
    instance_id: str,
    outcome: StepOutcome | None = None,
    journal: Loaded | None = None,
    eager: EagerChain | None = None,
    keep: bool = True,
) -> None:
    """Run the orchestrator of ``instance_id`` once, journaling ``outcome`` in the same commit.

    Args:
        durable: the runtime.
        instance_id: the instance to advance.
        outcome: a step's result or failure to journal. If the journal already holds an
            outcome for that step, this one is dropped (first writer wins) and the pass
            only makes sure the workflow moved on.
        journal: the instance and events as the caller already read them; the first
            round uses it instead of reading again (the compare-and-set catches a
            journal that moved since).
        eager: the step task's chain, when the caller may run the next step itself: a
            single next step it accepts is journaled as started in the commit and
            handed to it instead of being published.
        keep: keep the workflow suspended in this process's live cache after the pass
            (``False`` where no later pass is expected to run, such as a client).

    Raises:
        WorkflowNotFound: no such instance.
        StoreError: the store failed, or the compare-and-set kept losing.

    An instance whose workflow is not registered in this process is not an error: the
    outcome (if any) is journaled, the instance notes that it waits for a worker that
    knows its workflow, and the tick sends it one resume at a time until one does.
    """
    # The pass takes the kept workflow out of the box once it uses it (or drops it).
    held: list[LiveEntry | None] = [durable.live.take(instance_id)]
    try:
        with observe.log_context(instance_id):
            _advance(durable, instance_id, outcome, journal, eager, held, keep)
    finally:
        if held[0] is not None:
            held[0].run.close()


def _advance(
    durable: Durable,
    instance_id: str,
    outcome: StepOutcome | None,
    journal: Loaded | None,
    eager: EagerChain | None,
    held: list[LiveEntry | None],
    keep: bool,
) -> None:
    store = durable.store
    for _ in range(MAX_CAS_ROUNDS):
        loaded, journal = journal or store.load(instance_id), None
        if loaded is None:
            raise WorkflowNotFound(f"no workflow instance with id {instance_id!r} in the store")
        instance, events = loaded
        if not instance.status.is_terminal and instance.status is not Status.STUCK:
            refused = _refused_serializer(durable, instance)
            if refused is not None:
                parked = replace(instance, status=Status.STUCK, failure=refused)
                if commit_beside(durable, parked, wake_at=None):
                    logger.error("workflow %s is stuck: %s", instance_id, refused.message)
                    return
                continue
        outcomes: list[Event] = []
        if outcome is not None:
            journaled = _belongs(instance, events, outcome)
            if journaled is None or journaled.state.is_final:
                outcome = None  # another run's, or a duplicate that lost: first writer wins
            else:
                merged = _journal_outcome(durable, journaled, outcome, instance.serializer)
                events[outcome.seq] = merged
                outcomes.append(merged)

        workflow = durable.workflows.get(instance.workflow)
        if instance.status.is_terminal or instance.status is Status.STUCK:
            # Nothing to replay, but an outcome is journaled all the same (a stuck
            # instance's retry then finds it).
            if outcomes and not commit_beside(
                durable, instance, outcomes=outcomes, wake_at=instance.wake_at
            ):
                continue
            return
        if workflow is None:
            if not _wait_for_worker(durable, instance, outcomes):
                continue
            return
        closing = _parent_closed(durable, instance)
        if closing == "terminate":
            if terminate(durable, instance.id, f"its parent {instance.parent_id} ended"):
                return
            continue

        # A kept workflow whose journal this is goes on from where it waits; the events
        # before its first pending one are final, and the scans below skip them.
        live, held[0] = held[0], None
        if live is not None and not live.fits(workflow.fn, instance, events):
            live.run.close()
            durable.live.misses += 1
            live = None
        start = live.pending_from if live is not None else 0
        tail = events[start:]
        now = durable.now()
        for event in lost_for_good(durable, now, tail):
            # Lost more often than durable_max_resends: a poison step, failed for good.
            failed = _step_lost(durable, event, now)
            events[event.seq] = failed
            outcomes.append(failed)
        codec = durable.codec(instance.serializer)
        waiting = waiting_children(tail, codec)
        children = {child.id: child for child in store.get_many(list(waiting))}
        signals = store.signals(instance_id) if instance.inbox else ()
        cancel_requested = instance.cancel_requested or closing == "cancel"
        decision: Decision | None = None
        kept: LiveRun | None = None
        if live is not None:
            decision = live.run.resume(
                instance,
                events,
                now=now,
                signals=signals,
                children=children,
                cancel_requested=cancel_requested,
                pending_from=start,
            )
            kept = live.run if live.run.waiting else None
            durable.live.hits += decision is not None
        if decision is None:
            decision, kept = replay_live(
                workflow.fn,
                instance,
                events,
                codec=codec,
                now=now,
                resolve_step=durable.resolve_step,
                signals=signals,
                children=children,
                cancel_requested=cancel_requested,
                failure_exceptions=workflow.failure_exceptions,
            )
        if decision.status is Status.STUCK:
            decision.failure = _explain_stuck(durable, decision.failure)
        outcomes.extend(decision.fired)
        wake = Wake(at=None)
        new_events = decision.new_events
        handed: ScheduleStep | None = None
        if decision.status is Status.RUNNING and decision.restart_input is None:
            pending = [e for e in events[start:] if e.kind is Kind.STEP and not e.state.is_final]
            children_wait = bool(waiting or decision.children)
            wake = plan(durable, now, pending, new_events, decision.wake_at, children=children_wait)
            if (
                eager is not None
                and len(decision.steps) == 1
                and not decision.children
                and not wake.resend  # (a pass that sends steps again publishes its own)
            ):
                handed = eager.accepts(decision.steps[0])
            if handed is not None:
                # Run here next: journaled as started by this commit (recovery then
                # counts its silence from now, as for a step whose worker marked it).
                new_events, started = _started(new_events, handed.seq, now)
                wake = plan(
                    durable,
                    now,
                    [*pending, started],
                    [e for e in new_events if e.seq != handed.seq],
                    decision.wake_at,
                    children=children_wait,
                )
        if decision.restart_input is not None:
            outcomes = []  # a new run: the old journal goes
            wake = Wake(at=durable.redrive_at())  # its first pass, if the message is lost
            # The children this run still waits on are closed before the journal that
            # names them goes (a crash after the commit would forget them).
            close_children(durable, instance.id, "continued as new", list(waiting))
        if (
            not outcomes
            and not decision.new_events
            and not wake.resend
            and not decision.consumed
            and decision.restart_input is None
            and decision.status is instance.status
            and wake.at == instance.wake_at
            and instance.note is None  # a note of why it waited: cleared by this commit
            and decision.waiting_at == instance.waiting_at
            and (
                not decision.sets_custom_status or decision.custom_status == instance.custom_status
            )
        ):
            # Already up to date: e.g. a duplicate message after the first copy won. A
            # kept workflow still waits where it did, on the journal as read.
            if kept is not None:
                durable.live.put(LiveEntry(kept, workflow.fn, instance, events, start))
            return
        commit = Commit(
            instance_id=instance_id,
            expected_version=instance.version,
            status=decision.status,
            updated_at=now,
            output=decision.output,
            failure=decision.failure,
            new_events=new_events,
            outcomes=outcomes,
            wake_at=wake.at,
            custom_status=(
                decision.custom_status if decision.sets_custom_status else instance.custom_status
            ),
            resent=[event.seq for event in wake.resend],
            consumed=decision.consumed,
            restart_input=decision.restart_input,
            waiting_at=decision.waiting_at,
            patches=patches_after(instance, decision),
            code_version=_stamp(workflow, instance, decision),
        )
        if not store.commit(commit):
            if kept is not None:
                kept.close()  # it has moved on past the journal the store holds
            continue
        faults.point(faults.AFTER_COMMIT)
        observe.committed(durable, instance, events, commit, decision, wake.resend, now)
        after = journal_after(instance, events, commit) if kept or handed else None
        if kept is not None and after is not None and keep:
            durable.live.put(LiveEntry(kept, workflow.fn, *after, pending_from=start))
        elif kept is not None:
            kept.close()
        if handed is not None:
            assert eager is not None
            eager.hand(step_task_id(instance_id, handed.seq, instance.run), handed, after)
            decision.steps = [step for step in decision.steps if step is not handed]
        # Children whose creation a crash may have cut off are created (idempotently).
        lost = [s for s in decision.awaited_children if s.workflow_id not in children]
        with observe.publishing(durable, instance):
            _publish(durable, instance, decision, wake, now, [*decision.children, *lost])
        if decision.status.is_terminal and any(
            event.kind is Kind.CHILD for event in (*events, *new_events)
        ):
            # Only a run with CHILD events has children (of this run: a restart closed
            # the earlier runs' ones); a lookup for none would cost a query per ending.
            close_children(durable, instance.id, decision.status.value)
        return
    raise StoreError(
        f"workflow {instance_id}: gave up after {MAX_CAS_ROUNDS} lost compare-and-set rounds"
    )


@dataclass(frozen=True)
class FirstPass:
    """A new instance's first pass, run before it is stored: the instance as its first
    commit would leave it, that commit's events, and what to publish once stored."""

    instance: Instance
    events: list[Event]
    decision: Decision
    wake: Wake
    now: datetime

    def publish(self, durable: Durable) -> None:
        """Send the first pass's messages (the instance and its events are stored)."""
        faults.point(faults.AFTER_COMMIT)
        observe.first_committed(durable, self.instance)
        with observe.publishing(durable, self.instance):
            _publish(durable, self.instance, self.decision, self.wake, self.now, [])


def first_pass(durable: Durable, instance: Instance) -> FirstPass | None:
    """Replay a new instance's empty journal before it is stored, so that it is created
    with its first commit's events in one statement and its first steps are published
    by the caller: no resume message, no extra round trip.

    Returns ``None`` (create it, and send a resume message) unless the workflow is
    registered here and its first pass leaves it simply running: steps, timers and
    local runs; children, an end, a restart or a stuck pass go the usual way.
    """
    workflow = durable.workflows.get(instance.workflow)
    if workflow is None or instance.inbox or instance.cancel_requested:
        return None
    try:
        codec = durable.codec(instance.serializer)
    except SerializationError:
        return None
    now = durable.now()
    decision, _ = replay_live(
        workflow.fn,
        instance,
        [],
        codec=codec,
        now=now,
        resolve_step=durable.resolve_step,
        failure_exceptions=workflow.failure_exceptions,
        keep=False,
    )
    if (
        decision.status is not Status.RUNNING
        or decision.restart_input is not None
        or decision.children
        or decision.consumed
        or decision.fired
    ):
        return None
    wake = plan(durable, now, [], decision.new_events, decision.wake_at)
    first = replace(
        instance,
        status=Status.RUNNING,
        updated_at=now,
        wake_at=wake.at,
        custom_status=decision.custom_status,
        waiting_at=decision.waiting_at,
        patches=patches_after(instance, decision) or (),
        code_version=instance.code_version or workflow.code_version,
    )
    return FirstPass(first, list(decision.new_events), decision, wake, now)


def patches_after(instance: Instance, decision: Decision) -> tuple[str, ...] | None:
    """The instance's patch ids once ``decision`` is committed, or ``None`` if unchanged:
    a restart empties them (a new journal), new PATCH markers add theirs."""
    if decision.restart_input is not None:
        return () if instance.patches else None
    added = [e.name for e in decision.new_events if e.kind is Kind.PATCH]
    fresh = [name for name in dict.fromkeys(added) if name not in instance.patches]
    return (*instance.patches, *fresh) if fresh else None


def _stamp(workflow: Workflow[..., Any], instance: Instance, decision: Decision) -> str | None:
    """The code version to stamp with this commit: the current code's for a new run
    (``continue_as_new``) and for a new instance created without one (a child started
    by a process that lacked its workflow); ``None`` keeps the stored one (instances
    from before versions were stamped stay unknown)."""
    unstamped = instance.code_version is None and instance.status is Status.PENDING
    if decision.restart_input is not None or unstamped:
        version = workflow.code_version
        return version if version != instance.code_version else None
    return None


def _started(events: list[Event], seq: int, now: datetime) -> tuple[list[Event], Event]:
    """``events`` with the new step at ``seq`` marked started now (attempt 1)."""
    marked = []
    started: Event | None = None
    for event in events:
        if event.seq == seq:
            event = started = replace(
                event, state=State.STARTED, started_at=now, heartbeat_at=now, attempts=1
            )
        marked.append(event)
    assert started is not None
    return marked, started


def _wait_for_worker(durable: Durable, instance: Instance, outcomes: list[Event]) -> bool:
    """No workflow of that name here: journal the outcomes, note why the instance waits,
    and let the tick look again (one resume at a time, later and later, up to a step
    timeout), since a rolling deploy may bring a worker that knows it.

    Returns:
        ``False`` if the compare-and-set lost.
    """
    now = durable.now()
    note = f"waiting for a worker that knows workflow {instance.workflow}"
    since = instance.updated_at if instance.note == note else now
    settings = durable.settings
    pause = min(max((now - since).total_seconds(), settings.tick_interval), settings.step_timeout)
    if not commit_beside(
        durable,
        instance,
        outcomes=outcomes,
        wake_at=now + timedelta(seconds=pause),
        note=note,
        updated_at=since,
    ):
        return False
    logger.warning(
        "workflow %s: %s (not registered in this worker: import its module in the app, "
        "e.g. Celery's include=); looking again in %.0f s",
        instance.id,
        note,
        pause,
    )
    return True


def _refused_serializer(durable: Durable, instance: Instance) -> Failure | None:
    """Why the instance's payloads may not be decoded here, if they may not (a serializer
    outside ``durable_accept_content``): the instance parks rather than failing each pass."""
    try:
        durable.codec(instance.serializer)
    except SerializationError as exc:
        return Failure("SerializationError", str(exc))
    return None


def _parent_closed(durable: Durable, instance: Instance) -> str | None:
    """The parent-close policy to apply now if this child's parent has ended (a backstop
    for a parent whose process died before it closed its children), else ``None``."""
    policy = instance.parent_close
    if instance.parent_id is None or policy not in ("terminate", "cancel"):
        return None
    parent = durable.store.get(instance.parent_id)
    if parent is not None and not parent.status.is_terminal:
        return None
    return policy


def _step_lost(durable: Durable, event: Event, now: datetime) -> Event:
    failure = Failure(
        "StepLost",
        f"step {event.name!r} (seq {event.seq}) was lost {event.resends + 1} times: its "
        "worker died or a hard time limit killed it each time (sent again "
        f"{event.resends} times, durable_max_resends={durable.settings.max_resends})",
    )
    return replace(event, state=State.FAILED, output=None, failure=failure, completed_at=now)


def _explain_stuck(durable: Durable, failure: Failure | None) -> Failure | None:
    """A clearer message for a pass that ran out of time in workflow code."""
    if failure is None or failure.type != "SoftTimeLimitExceeded":
        return failure
    limit = durable.settings.resume_time_limit
    return replace(
        failure,
        message=(
            f"the orchestrator pass ran longer than durable_resume_time_limit ({limit:g} s): "
            "workflow code must not block (no I/O, sleeps or long loops outside ctx "
            "commands); move slow work into a step, deploy, then retry the instance"
        ),
    )


def _publish(
    durable: Durable,
    instance: Instance,
    decision: Decision,
    wake: Wake,
    now: datetime,
    children: list[StartChild],
) -> None:
    """Send what a committed pass decided (never before its commit: the outbox rule)."""
    if decision.status in (Status.STUCK, Status.FAILED):
        failure = decision.failure or Failure("UnknownError", "")
        logger.error(
            "workflow %s (%s) %s: %s: %s%s",
            instance.id,
            instance.workflow,
            "is stuck (retry it once fixed: celery -A <app> durable retry ID)"
            if decision.status is Status.STUCK
            else "failed",
            failure.type,
            failure.message,
            f"\n{failure.details.rstrip()}" if failure.details else "",
        )
    for step in decision.steps:
        durable.send_step(instance.id, step, instance.run)
    codec = durable.codec(instance.serializer)
    for event in wake.resend:
        logger.warning(
            "workflow %s: step %d (%s) shows no sign of life; sending it again",
            instance.id,
            event.seq,
            event.name,
        )
        args, kwargs = codec.loads(event.input) if event.input else ((), {})
        durable.send_step(
            instance.id, ScheduleStep(event.seq, event.name, tuple(args), kwargs), instance.run
        )
    if wake.eta is not None:
        durable.send_resume(instance.id, countdown=(wake.eta - now).total_seconds())
    start_children(durable, instance, children)
    if decision.status.is_terminal and instance.parent_id:
        durable.send_resume(instance.parent_id)  # the parent waits on this result
    if decision.restart_input is not None:
        durable.send_resume(instance.id)  # the new run's first pass
