"""Hyperparameter checks shared by the optimizers: each raises ValueError naming the value and the range."""

from __future__ import annotations

import math
from collections.abc import Collection


def check_range(name: str, value: float, *, low: float, high: float = math.inf,
                low_inclusive: bool = True, high_inclusive: bool = False) -> None:
    """Raise ValueError unless `value` lies in the interval described (NaN never does)."""
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    above = numeric and (value >= low if low_inclusive else value > low)
    below = numeric and (value <= high if high_inclusive else value < high)
    if not (above and below):
        left = "[" if low_inclusive else "("
        right = "]" if high_inclusive else ")"
        raise ValueError(f"invalid {name}: {value!r} (allowed: {left}{low}, {high}{right})")


def check_choice(name: str, value: object, allowed: Collection[object]) -> None:
    if value not in allowed:
        raise ValueError(f"invalid {name}: {value!r} (allowed: {', '.join(map(repr, allowed))})")
