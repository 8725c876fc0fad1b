"""Imported by the Django example's worker in the crash test (``celery worker --include
django_crash``): the first pool process to reach ``faults.STEP_EFFECT`` while the flag
file ``$DJANGO_CRASH_DIR/step.effect`` exists takes it (an atomic rename) and SIGKILLs
itself, after the step's ORM writes and before the commit that journals them."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from celery_durable import faults


def _crash_once(name: str) -> None:
    flag = Path(os.environ["DJANGO_CRASH_DIR"]) / name
    try:
        os.rename(flag, flag.with_name(f"{name}.fired"))
    except FileNotFoundError:
        return
    os.kill(os.getpid(), signal.SIGKILL)


faults.set_handler(_crash_once)
