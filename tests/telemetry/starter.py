"""``python -m telemetry.starter WORKFLOW N``: start N instances of a ``telemetry.apps``
workflow from a process of its own (the caller's metrics go to the test's
``PROMETHEUS_MULTIPROC_DIR``) and print their ids, one a line."""

from __future__ import annotations

import sys

from telemetry import apps


def main() -> None:
    workflow = getattr(apps, sys.argv[1])
    for n in range(int(sys.argv[2])):
        print(workflow.delay(n).id, flush=True)


if __name__ == "__main__":
    main()
