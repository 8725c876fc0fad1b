"""Crash-test plumbing: measured recovery times go to the terminal summary.

Each test's lines ride on its report (``user_properties`` named ``summary:...``, see
``tests/conftest.py``), so they reach the summary from a pytest-xdist worker too.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from chaos import report


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Iterator[None]:
    outcome = yield
    if report.LINES:
        test_report = outcome.get_result()
        test_report.user_properties.extend(
            ("summary:chaos: measured recovery", line) for line in report.LINES
        )
        report.LINES.clear()
