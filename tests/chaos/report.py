"""Figures the crash tests measured, printed in pytest's terminal summary."""

from __future__ import annotations

#: One line per measurement, in the order taken.
LINES: list[str] = []
