"""Rows of the bad-input table (tests/test_bad_input.py): data."""

from __future__ import annotations

from bad_input_kit import Case

DATA_CASES: list[Case] = []
