"""Worker log lines: Celery's per-task INFO lines dropped for the library's own tick.

Celery logs two INFO lines for every task a worker runs: ``Task NAME[ID] received`` (logger
``celery.worker.strategy``) and ``Task NAME[ID] succeeded in Ns: RESULT`` (logger
``celery.app.trace``). For the tick, which beat sends every few seconds, they would be the
bulk of a worker's log and say nothing; the tick logs what it did itself.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from celery.app.trace import LOG_RECEIVED, LOG_SUCCESS

#: The loggers Celery writes the two lines with, and the formats it uses.
TASK_LOGGERS = ("celery.worker.strategy", "celery.app.trace")
_QUIETED_FORMATS = frozenset({LOG_RECEIVED, LOG_SUCCESS})


class QuietTasks(logging.Filter):
    """Drops Celery's "received" and "succeeded" lines for the tasks named.

    Celery passes the task's details as the one mapping argument of those records
    (``record.args["name"]`` is the task name); failures, retries and every other line
    are kept.

    Args:
        task_names: the tasks whose routine lines are dropped.
    """

    def __init__(self, task_names: Iterable[str]) -> None:
        super().__init__()
        self.task_names = frozenset(task_names)

    def filter(self, record: logging.LogRecord) -> bool:
        """``False`` (drop) for a routine line of one of the tasks named."""
        args = record.args
        return not (
            record.msg in _QUIETED_FORMATS
            and isinstance(args, Mapping)
            and args.get("name") in self.task_names
        )

    # Equal filters are one: logging.Logger.addFilter then does not add a second.
    def __eq__(self, other: object) -> bool:
        return isinstance(other, QuietTasks) and other.task_names == self.task_names

    def __hash__(self) -> int:
        return hash(self.task_names)


def quiet_task_logs(*task_names: str) -> None:
    """Drop Celery's routine "received" / "succeeded" INFO lines for ``task_names``.

    Idempotent: a second call with the same names adds nothing.
    """
    quiet = QuietTasks(task_names)
    for name in TASK_LOGGERS:
        logging.getLogger(name).addFilter(quiet)
