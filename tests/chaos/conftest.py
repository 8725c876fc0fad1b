"""Crash-test plumbing: measured recovery times go to the terminal summary."""

from __future__ import annotations

from typing import Any

from chaos import report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if report.LINES:
        terminalreporter.section("chaos: measured recovery")
        for line in report.LINES:
            terminalreporter.write_line(line)
