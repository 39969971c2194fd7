"""Parameter checks shared by the corruption families: errors name the bad value and the valid range."""

from __future__ import annotations

import math


def check_range(
    owner: str,
    name: str,
    value: object,
    low: float = 0.0,
    high: float = math.inf,
    *,
    high_inclusive: bool = True,
) -> float:
    """Return ``float(value)`` or raise ValueError unless it is a finite number in [low, high] (or [low, high))."""
    closing = "]" if high_inclusive and math.isfinite(high) else ")"
    expected = f"a finite number in [{low:g}, {high:g}{closing}"
    if isinstance(value, bool):
        raise ValueError(f"{owner}: {name}={value!r} must be {expected}")
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{owner}: {name}={value!r} must be {expected}") from None
    above = number > high if high_inclusive else number >= high
    if not math.isfinite(number) or number < low or above:
        raise ValueError(f"{owner}: {name}={value!r} must be {expected}")
    return number


def check_choice(owner: str, name: str, value: object, choices: tuple[str, ...]) -> str:
    """Return ``value`` lower-cased, or raise ValueError naming the valid choices."""
    text = str(value).lower()
    if text not in choices:
        raise ValueError(f"{owner}: {name}={value!r} is not supported; expected one of {', '.join(choices)}")
    return text
