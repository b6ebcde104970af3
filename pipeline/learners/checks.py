"""Checks of learner parameters: one message shape for every learner, naming the parameter.

Learners raise :class:`ValueError` (``build_learner`` turns it into a
:class:`~pipeline.errors.ConfigError` naming the learner).

>>> number("lam", 0.5, 0.0, 1.0)
0.5
>>> number("alpha", 0, 0.0, low_open=True)
Traceback (most recent call last):
...
ValueError: alpha must be > 0, got 0
>>> integer("bits", 40, 4, 30)
Traceback (most recent call last):
...
ValueError: bits must be an integer in [4, 30], got 40
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["integer", "number"]


def number(
    name: str,
    value: Any,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    low_open: bool = False,
) -> float:
    """``value`` as a float, if it is a finite real number in ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    ok = ok and math.isfinite(value) and (value > low if low_open else value >= low) and value <= high
    if not ok:
        if math.isinf(high):
            allowed = f"{'>' if low_open else '>='} {low:g}"
        else:
            allowed = f"in {'(' if low_open else '['}{low:g}, {high:g}]"
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return float(value)


def integer(name: str, value: Any, low: int, high: int | None = None) -> int:
    """``value`` as an int, if it is an integer (not a bool) in ``[low, high]``."""
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not (ok and value >= low and (high is None or value <= high)):
        allowed = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be an integer {allowed}, got {value!r}")
    return int(value)
