"""The documentation site builds offline with warnings as errors (``make docs``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_docs_build_strict(tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert built.returncode == 0, built.stderr[-4000:]
    reference = (tmp_path / "reference.html").read_text()
    for name in ("celery_durable.Durable", "celery_durable.WorkflowHandle", "Settings"):
        assert f'id="{name}' in reference or name in reference, name
    pages = {p.name for p in tmp_path.glob("*.html")}
    assert {
        "index.html",
        "quickstart.html",
        "concepts.html",
        "reference.html",
        "operations.html",
        "deploys.html",
        "testing.html",
        "console.html",
    } <= pages
