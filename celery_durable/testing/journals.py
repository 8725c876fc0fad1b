"""Replaying exported journals in unit tests: does today's code still replay them?

Export journals of real instances once (``celery -A app durable export ID --to
tests/journals``), check them in, and let a test replay them against the code being
changed — the unit-test form of ``durable replay-check``::

    from celery_durable.testing import replay
    from shop.orders import fulfil

    def test_fulfil_replays_the_journals_of_production() -> None:
        replay(fulfil, "tests/journals")

Nothing runs but the workflow's own code up to the end of each journal: no step, no
``ctx.run`` function, no store, no broker.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from celery_durable.engine.check import ReplayCheck
from celery_durable.errors import NonDeterminismError, WorkflowStuck
from celery_durable.runtime.deploys import check_instance, read_journal
from celery_durable.runtime.durable import Workflow


def replay(workflow: Workflow[..., Any], path: str | os.PathLike[str]) -> list[ReplayCheck]:
    """Replay the exported journal ``path`` (or every journal of ``workflow`` in the
    folder ``path``) against ``workflow``'s current code.

    Args:
        workflow: the ``@durable.workflow`` object.
        path: a file written by ``durable export``, or a folder of them (those of other
            workflows are skipped).

    Returns:
        One :class:`~celery_durable.engine.check.ReplayCheck` per journal, all OK.

    Raises:
        NonDeterminismError: a journal does not replay; ``.seq``, ``.journaled`` and
            ``.asked`` name the first mismatch (and the message names the file).
        WorkflowStuck: the code raises (or cannot start with the journaled input) where
            the journal says it went on: the instance would park as stuck.
        ValueError: ``path`` holds no journal of this workflow, or a file that is not an
            exported journal.
        TypeError: ``workflow`` is not a ``@durable.workflow``.
    """
    if not isinstance(workflow, Workflow):
        raise TypeError(
            f"replay() takes the @durable.workflow object, got {workflow!r}: pass the "
            "decorated workflow, not its function"
        )
    where = Path(path)
    files = sorted(where.glob("*.json")) if where.is_dir() else [where]
    checks = []
    for file in files:
        instance, events = read_journal(file)
        if instance.workflow != workflow.name:
            if where.is_dir():
                continue
            raise ValueError(
                f"{file} is a journal of workflow {instance.workflow!r}, not {workflow.name!r}"
            )
        check = check_instance(workflow.durable, instance, events, workflow)
        if check.verdict == "MISMATCH":
            raise NonDeterminismError(
                f"{file}: {check.message}",
                seq=check.seq,
                journaled=check.journaled,
                asked=check.asked,
            )
        if not check.ok:
            kind, _, message = (check.message or "").partition(": ")
            raise WorkflowStuck(kind or "Error", f"{file}: {message or check.message}")
        checks.append(check)
    if not checks:
        raise ValueError(f"{where} holds no journal of workflow {workflow.name!r}")
    return checks
