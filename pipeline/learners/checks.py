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

The example weights of a batch (``FeatureBatch.weights``) are checked once, here, for every learner:

>>> check_weights(np.array([0.5, 2.0]), 2).tolist()
[0.5, 2.0]
>>> check_weights(np.ones(3), 3) is None  # all ones: the learner's unweighted path
True
>>> check_weights(np.array([1.0, -0.5]), 2)
Traceback (most recent call last):
...
ValueError: weights must be >= 0, got -0.5 at row 1
"""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from pipeline.features import FeatureBatch

__all__ = ["allowed_keywords", "check_weights", "example_weights", "integer", "keywords", "number"]


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


def check_weights(weights: Any, n: int) -> np.ndarray | None:
    """``weights`` as float64 if they are ``n`` finite numbers >= 0; None if every one is 1.

    Returning None for all ones lets a learner run its unweighted code, so that a batch with unit
    weights learns bit for bit what a batch without weights does. Bad weights are the caller's
    bug: the :class:`ValueError` names ``weights`` and the first offending row.
    """
    try:
        w = np.asarray(weights, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"weights must be numbers, one per example: {exc}") from None
    if w.shape != (n,):
        raise ValueError(f"weights must have shape ({n},), one per example, got {w.shape}")
    finite = np.isfinite(w)
    if not finite.all():
        row = int(np.argmin(finite))
        raise ValueError(f"weights must be finite, got {float(w[row])!r} at row {row}")
    if n and w.min() < 0.0:
        row = int(np.argmin(w))
        raise ValueError(f"weights must be >= 0, got {float(w[row])!r} at row {row}")
    return None if (w == 1.0).all() else w


def example_weights(batch: FeatureBatch) -> np.ndarray | None:
    """The checked ``batch.weights`` (:func:`check_weights`): None when unset or all ones."""
    return None if batch.weights is None else check_weights(batch.weights, len(batch))
