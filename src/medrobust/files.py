"""Writing files so that a reader (or a run killed mid-write) never sees half of one, and JSON that every strict
parser reads.

Python's ``json`` writes NaN and infinities as the bare words ``NaN`` and ``Infinity``, which are not JSON
(RFC 8259): ``JSON.parse``, jq, DuckDB and ``json.loads(..., parse_constant=...)`` refuse them. Every JSON that
medrobust writes, to a file or to a column of results.db, goes through :func:`strict_dumps`: a number without a
finite value is written as ``null`` (readers treat null as "no value", as they treated NaN), and anything that
would still come out non-standard raises instead of being written.
"""

from __future__ import annotations

import json
import math
import numbers
from pathlib import Path
from typing import Any


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file beside it and a rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def finite_json(value: Any) -> Any:
    """``value`` with every NaN, inf and -inf (Python or NumPy floats) replaced by None, recursively through
    dicts, lists and tuples (tuples become lists, as JSON has them); everything else is returned as it is."""
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral) and not math.isfinite(value):
        return None
    return value


def strict_dumps(value: Any, **kwargs: Any) -> str:
    """``json.dumps`` of :func:`finite_json` (``value``) with ``allow_nan=False``: standard JSON, null where a
    number has no finite value; for finite data the same text as ``json.dumps(value, **kwargs)``. A non-finite
    number that still reaches the encoder (from a ``default`` hook) raises ValueError."""
    if "allow_nan" in kwargs:
        raise TypeError(f"strict_dumps writes standard JSON only; allow_nan={kwargs['allow_nan']!r} is not an option")
    return json.dumps(finite_json(value), allow_nan=False, **kwargs)


def write_json(path: Path, value: Any, **kwargs: Any) -> None:
    """Write ``value`` as standard JSON (:func:`strict_dumps` with ``kwargs``) to ``path``, atomically."""
    write_atomic(path, strict_dumps(value, **kwargs))
