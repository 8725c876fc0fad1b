"""Child workflows: what a parent waits on, and creating the children it decided on.

A parent's pass commits its CHILD events first; the child instances are created after
(the outbox rule, as for step messages). If the process dies in between, the parent's
next pass finds a pending CHILD event whose child does not exist and creates it then —
creation is idempotent on the child's id. A child that ends sends its parent a resume
message; if that is lost, the parent's ``wake_at`` (a step timeout ahead while it waits
on children) brings it back to look.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from celery_durable.engine.commands import StartChild
from celery_durable.engine.journal import Event, Instance, Kind, Status
from celery_durable.engine.serialization import Codec

if TYPE_CHECKING:
    from celery_durable.runtime.durable import Durable

logger = logging.getLogger("celery_durable")


def waiting_children(events: Sequence[Event], codec: Codec) -> dict[str, StartChild]:
    """The children the journal still waits on, by child id, as they were started."""
    waiting = {}
    for event in events:
        if event.kind is Kind.CHILD and not event.state.is_final and event.input:
            (child_id, *args), kwargs = codec.loads(event.input)
            waiting[child_id] = StartChild(
                event.seq, child_id, event.name, codec.dumps([list(args), kwargs])
            )
    return waiting


def start_children(durable: Durable, parent: Instance, starts: Iterable[StartChild]) -> None:
    """Create each child instance (unless it exists) and wake its orchestrator."""
    now = durable.now()
    tracing = durable.tracing
    for start in starts:
        known = durable.workflows.get(start.workflow)
        child = Instance(
            id=start.workflow_id,
            workflow=start.workflow,
            status=Status.PENDING,
            input=start.input,
            serializer=parent.serializer,
            created_at=now,
            updated_at=now,
            wake_at=now + durable.redrive_after,
            parent_id=parent.id,
            parent_close=start.parent_close,
            code_version=known.code_version if known is not None else None,
            trace_context=tracing.child_run(parent, start.seq, now) if tracing else None,
        )
        stored, created = durable.store.create(child)
        if stored.parent_id != parent.id or stored.workflow != start.workflow:
            # Not ours: the parent's next pass fails its ctx.child with WorkflowIdConflict.
            logger.error(
                "workflow %s: child id %r is already used by another instance (%s); "
                "pass ctx.child(..., workflow_id=...) an id of its own",
                parent.id,
                start.workflow_id,
                stored.workflow,
            )
            durable.send_resume(parent.id)
            continue
        if created or stored.status is Status.PENDING:
            durable.send_resume(stored.id)
