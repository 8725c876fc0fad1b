"""One orchestrator pass: load the journal, replay, commit with compare-and-set, publish.

The commit happens before any message is published (the outbox rule). A pass that loses
the compare-and-set re-reads the journal and replays again, so an outcome that raced
with another pass is never left un-resumed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from celery_durable import faults
from celery_durable.engine.commands import Decision, ScheduleStep, StartChild
from celery_durable.engine.journal import Event, Failure, Instance, Kind, State, Status
from celery_durable.engine.replay import replay
from celery_durable.errors import (
    SerializationError,
    StoreError,
    UnknownWorkflow,
    WorkflowNotFound,
)
from celery_durable.runtime.children import start_children, waiting_children
from celery_durable.runtime.recovery import Wake, plan
from celery_durable.stores.base import Commit

if TYPE_CHECKING:
    from celery_durable.runtime.durable import Durable

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

    Raises:
        WorkflowNotFound: no such instance.
        UnknownWorkflow: the instance's workflow is not registered in this process; the
            outcome (if any) was journaled first, so a worker that knows it can go on.
        StoreError: the store failed, or the compare-and-set kept losing.
    """
    store = durable.store
    for _ in range(MAX_CAS_ROUNDS):
        loaded, journal = journal or store.load(instance_id), None
        if loaded is None:
            raise WorkflowNotFound(f"no workflow instance with id {instance_id!r} in the store")
        instance, events = loaded
        outcomes: list[Event] = []
        if outcome is not None:
            journaled = events[outcome.seq] if outcome.seq < len(events) else None
            if journaled is None or journaled.seq != outcome.seq:
                logger.error(
                    "workflow %s has no journal record %d; dropping its outcome",
                    instance_id,
                    outcome.seq,
                )
                outcome = None
            elif journaled.state.is_final:
                outcome = None  # a duplicate delivery lost the race: first writer wins
            else:
                merged = _journal_outcome(durable, journaled, outcome, instance.serializer)
                events[outcome.seq] = merged
                outcomes.append(merged)

        workflow = durable.workflows.get(instance.workflow)
        if instance.status.is_terminal or instance.status is Status.STUCK or workflow is None:
            # Nothing to replay here, but an outcome is journaled all the same.
            if outcomes and not store.commit(
                Commit(
                    instance_id=instance_id,
                    expected_version=instance.version,
                    status=instance.status,
                    updated_at=durable.now(),
                    output=instance.output,
                    failure=instance.failure,
                    outcomes=outcomes,
                    # A worker that knows the workflow must pass by: the resume message
                    # sent for it may be lost.
                    wake_at=None if instance.status.is_terminal else durable.redrive_at(),
                    custom_status=instance.custom_status,
                )
            ):
                continue
            if workflow is None and not instance.status.is_terminal:
                raise UnknownWorkflow(
                    f"workflow {instance.workflow!r} (instance {instance_id}) is not registered "
                    "in this worker; import the module that defines it in the app "
                    "(e.g. Celery's `include=`) so this worker can run it"
                )
            return

        now = durable.now()
        codec = durable.codec(instance.serializer)
        waiting = waiting_children(events, codec)
        children = {child.id: child for child in store.get_many(list(waiting))}
        decision: Decision = replay(
            workflow.fn,
            instance,
            events,
            codec=codec,
            now=now,
            resolve_step=durable.resolve_step,
            signals=store.signals(instance_id) if instance.inbox else (),
            children=children,
            cancel_requested=instance.cancel_requested,
        )
        outcomes.extend(decision.fired)
        wake = Wake(at=None)
        if decision.status is Status.RUNNING and decision.restart_input is None:
            pending = [e for e in events if e.kind is Kind.STEP and not e.state.is_final]
            wake = plan(
                durable,
                now,
                pending,
                decision.new_events,
                decision.wake_at,
                children=bool(waiting or decision.children),
            )
        if decision.restart_input is not None:
            outcomes = []  # a new run: the old journal goes
            wake = Wake(at=durable.redrive_at())  # its first pass, if the message is lost
        if (
            not outcomes
            and not decision.new_events
            and not wake.resend
            and not decision.consumed
            and decision.restart_input is None
            and decision.status is instance.status
            and wake.at == instance.wake_at
            and (
                not decision.sets_custom_status or decision.custom_status == instance.custom_status
            )
        ):
            return  # already up to date: e.g. a duplicate message after the first copy won
        committed = store.commit(
            Commit(
                instance_id=instance_id,
                expected_version=instance.version,
                status=decision.status,
                updated_at=now,
                output=decision.output,
                failure=decision.failure,
                new_events=decision.new_events,
                outcomes=outcomes,
                wake_at=wake.at,
                custom_status=(
                    decision.custom_status
                    if decision.sets_custom_status
                    else instance.custom_status
                ),
                resent=[event.seq for event in wake.resend],
                consumed=decision.consumed,
                restart_input=decision.restart_input,
            )
        )
        if not committed:
            continue
        faults.point(faults.AFTER_COMMIT)
        # Children whose creation a crash may have cut off are created (idempotently).
        lost = [start for child_id, start in waiting.items() if child_id not in children]
        _publish(durable, instance, decision, wake, now, [*decision.children, *lost])
        return
    raise StoreError(
        f"workflow {instance_id}: gave up after {MAX_CAS_ROUNDS} lost compare-and-set rounds"
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
    if decision.status is Status.STUCK:
        failure = decision.failure or Failure("UnknownError", "")
        logger.error(
            "workflow %s (%s) is stuck: %s: %s",
            instance.id,
            instance.workflow,
            failure.type,
            failure.message,
        )
    for step in decision.steps:
        durable.send_step(instance.id, step)
    codec = durable.codec(instance.serializer)
    for event in wake.resend:
        logger.warning(
            "workflow %s: step %d (%s) shows no sign of life; sending it again",
            instance.id,
            event.seq,
            event.name,
        )
        args, kwargs = codec.loads(event.input) if event.input else ((), {})
        durable.send_step(instance.id, ScheduleStep(event.seq, event.name, tuple(args), kwargs))
    if wake.eta is not None:
        durable.send_resume(instance.id, countdown=(wake.eta - now).total_seconds())
    start_children(durable, instance, children)
    if decision.status.is_terminal and instance.parent_id:
        durable.send_resume(instance.parent_id)  # the parent waits on this result
    if decision.restart_input is not None:
        durable.send_resume(instance.id)  # the new run's first pass
