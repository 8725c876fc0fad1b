"""Named crash points, for fault-injection tests only.

The runtime and the stores call :func:`point` at the moments where a crash is hardest to
get right. Nothing happens there unless a test installs a handler with
:func:`set_handler`; the handler decides whether to crash (typically ``os.kill(os.getpid(),
signal.SIGKILL)``) so a test can kill a worker at an exact place::

    from celery_durable import faults

    def crash_once(name: str) -> None:
        if name == faults.AFTER_COMMIT and claim_the_crash():
            os.kill(os.getpid(), signal.SIGKILL)

    faults.set_handler(crash_once)

With no handler the cost of a point is one global lookup.
"""

from __future__ import annotations

from collections.abc import Callable

#: A step's user code returned (or raised); its outcome is not journaled yet.
STEP_RAN = "step.ran"
#: A transactional step's writes are done and its outcome is about to be journaled, in
#: the one transaction not committed yet.
STEP_EFFECT = "step.effect"
#: An orchestrator pass committed (outcome, new steps, timers); nothing is published yet.
AFTER_COMMIT = "orchestrator.after_commit"
#: Inside a store's commit: every row is written, the transaction is not committed yet.
#: (The PostgreSQL fast path commits in one statement; there the point comes after the
#: statement returns, before its caller learns the result.)
MID_COMMIT = "store.mid_commit"

#: Every point, for tests that pick one.
POINTS = (STEP_RAN, AFTER_COMMIT, MID_COMMIT)
"""(:data:`STEP_EFFECT` is left out: only transactional steps reach it.)"""

_handler: Callable[[str], None] | None = None


def set_handler(handler: Callable[[str], None] | None) -> None:
    """Call ``handler(point_name)`` at every crash point in this process (``None``: stop)."""
    global _handler
    _handler = handler


def point(name: str) -> None:
    """A crash point: calls the installed handler, if any."""
    if _handler is not None:
        _handler(name)
