"""The engine imports nothing but the standard library and celery_durable's own pure modules."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

BLOCKED = ("celery", "kombu", "sqlalchemy", "redis")

# Run in a fresh interpreter: this test process has long imported celery for other tests.
PROBE = """
import importlib, importlib.abc, json, pkgutil, sys, types

blocked, package_dir = sys.argv[1].split(","), sys.argv[2]

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ImportError(f"the engine must not import {name}")
        return None

sys.meta_path.insert(0, Blocker())
# celery_durable/__init__.py imports the runtime (and so celery) on purpose: stand in for
# it with a bare package so that only the engine's own imports are checked.
package = types.ModuleType("celery_durable")
package.__path__ = [package_dir]
sys.modules["celery_durable"] = package

import celery_durable.engine as engine

for module in pkgutil.walk_packages(engine.__path__, "celery_durable.engine."):
    importlib.import_module(module.name)
print(json.dumps(sorted(sys.modules)))
"""


def test_engine_modules_import_no_celery_kombu_sqlalchemy_or_redis() -> None:
    spec = importlib.util.find_spec("celery_durable")
    assert spec is not None
    assert spec.submodule_search_locations is not None
    [package_dir] = spec.submodule_search_locations

    result = subprocess.run(
        [sys.executable, "-I", "-c", PROBE, ",".join(BLOCKED), package_dir],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    modules = json.loads(result.stdout)
    assert {
        "celery_durable.engine",
        "celery_durable.engine.commands",
        "celery_durable.engine.context",
        "celery_durable.engine.journal",
        "celery_durable.engine.replay",
        "celery_durable.engine.serialization",
        "celery_durable.errors",
    } <= set(modules)
    assert [m for m in modules if m.split(".")[0] in BLOCKED] == []
    assert [m for m in modules if m.startswith("celery_durable.") and ".engine" not in m] == [
        "celery_durable.errors"
    ]
