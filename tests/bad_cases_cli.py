"""Rows of the bad-input table (tests/test_bad_input.py): cli."""

from __future__ import annotations

from bad_input_kit import Case

CLI_CASES: list[Case] = []
