"""Where a suspended workflow waits in its code: the ``await`` line, for people.

Captured by the pass that leaves a workflow waiting and stored with the instance
(``Instance.waiting_at``), so the console and ``durable show`` can point at the line
with no worker alive.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Coroutine
from typing import Any

_ENGINE_DIR = os.path.dirname(os.path.abspath(__file__))
"""This engine's folder: its frames (ctx commands, sagas) are not where workflow code waits."""


@functools.lru_cache(maxsize=1024)
def _short_path(filename: str) -> str:
    """``filename`` relative to the ``sys.path`` entry it was imported from, if any."""
    best = ""
    for entry in sys.path:
        root = os.path.abspath(entry or os.curdir)
        if filename.startswith(root + os.sep) and len(root) > len(best):
            best = root
    return filename[len(best) + 1 :] if best else filename


def suspended_at(coro: Coroutine[Any, Any, Any]) -> str | None:
    """Where workflow code is suspended: ``"file:line in function"`` of the innermost
    frame of the await chain outside this engine (a helper coroutine the workflow awaits
    counts; ``ctx`` commands and ``ctx.saga()`` do not)."""
    where = None
    link: Any = coro
    while link is not None:
        frame = getattr(link, "cr_frame", None) or getattr(link, "gi_frame", None)
        if frame is None:
            break
        code = frame.f_code
        if os.path.dirname(os.path.abspath(code.co_filename)) != _ENGINE_DIR:
            where = f"{_short_path(code.co_filename)}:{frame.f_lineno} in {code.co_name}"
        link = getattr(link, "cr_await", None) or getattr(link, "gi_yieldfrom", None)
    return where
