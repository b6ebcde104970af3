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
>>> def ftrl(alpha=0.05, beta=1.0, name=None): ...
>>> keywords(ftrl, {"alhpa": 0.1})
Traceback (most recent call last):
...
ValueError: unknown parameter 'alhpa' (did you mean 'alpha'?); allowed: alpha, beta
"""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["allowed_keywords", "integer", "keywords", "number"]


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


def allowed_keywords(factory: Callable[..., Any]) -> list[str] | None:
    """The keyword parameters ``factory`` takes (``name`` aside), or None if it takes ``**kwargs``."""
    params = inspect.signature(factory).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.name not in ("self", "name") and p.kind is not p.VAR_POSITIONAL]


def keywords(factory: Callable[..., Any], params: dict[str, Any]) -> dict[str, Any]:
    """``params``, checked against what ``factory`` takes: an unknown one is named with the allowed ones."""
    allowed = allowed_keywords(factory)
    if allowed is not None:
        for key in params:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(f"unknown parameter {key!r}{hint}; allowed: {', '.join(sorted(allowed))}")
    return params
