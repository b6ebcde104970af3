"""Event times: the unit numeric ``ts`` values are in, and a check that they look like now.

Numeric times are a number of ``events.ts_unit`` since the Unix epoch: ``ms`` (the default),
``s`` or ``us``. Floats are allowed in any unit and rounded to the nearest millisecond (seconds
with a fraction, as many loggers write them). Internally every time is integer milliseconds.

A stream whose times fall decades away from now is almost always in another unit than the one
configured: :class:`TimestampPlausibility` names the unit that would make them plausible, once.

Examples
--------
>>> import numpy as np
>>> to_milliseconds(np.array([1_700_000_000.25]), "s")
array([1700000000250])
>>> TimestampPlausibility(now_ms=1_733_000_000_000).check(np.array([1_700_000_000]))
'event times read as milliseconds fall in 1970 (ts around 1700000000); they look like seconds: set events.ts_unit = "s"'
"""

from __future__ import annotations

import datetime as dt
import time

import numpy as np

__all__ = ["TS_UNITS", "TimestampPlausibility", "to_milliseconds"]

#: milliseconds per unit
TS_UNITS: dict[str, float] = {"s": 1000.0, "ms": 1.0, "us": 0.001}
_NAMES = {"s": "seconds", "ms": "milliseconds", "us": "microseconds", "ns": "nanoseconds"}
_MS_PER = {"s": 1000.0, "ms": 1.0, "us": 0.001, "ns": 1e-6}
_YEAR_MS = 365.25 * 86_400_000
_LIMIT = float(2**63 - 1)


def to_milliseconds(values: np.ndarray, unit: str) -> np.ndarray:
    """Integer milliseconds from numeric times in ``unit`` (floats rounded; out-of-range -> -1)."""
    factor = TS_UNITS[unit]
    if values.dtype.kind in "iu" and factor == 1.0:
        return values.astype(np.int64, copy=False)
    if values.dtype.kind in "iu" and factor >= 1.0:
        big = np.abs(values) > (2**63 - 1) // int(factor)
        out = values.astype(np.int64) * int(factor)
        out[big] = -1
        return out
    if values.dtype.kind in "iu":  # microseconds: floor to the millisecond
        return values.astype(np.int64) // round(1 / factor)
    ms = np.rint(values.astype(np.float64) * factor)
    bad = ~np.isfinite(ms) | (np.abs(ms) >= _LIMIT)
    out = np.where(bad, -1.0, ms).astype(np.int64)
    return out


class TimestampPlausibility:
    """Says, once, when event times look like another unit than the configured one.

    Parameters
    ----------
    unit
        The configured ``events.ts_unit``.
    years
        How far from now (either way) times must fall to be called implausible.
    now_ms
        The clock (tests); default: the current time.
    """

    def __init__(self, unit: str = "ms", years: float = 30.0, now_ms: int | None = None):
        self.unit = unit
        self.years = years
        self.now_ms = now_ms
        self.reported = False

    def check(self, ts_ms: np.ndarray) -> str | None:
        """A message the first time the median of ``ts_ms`` is implausible, else None."""
        if self.reported or not len(ts_ms):
            return None
        now = self.now_ms if self.now_ms is not None else time.time() * 1000.0
        median = float(np.median(ts_ms))
        if abs(median - now) < self.years * _YEAR_MS:
            return None
        self.reported = True
        raw = median / TS_UNITS[self.unit]
        when = _year(median)
        guess = next(
            (u for u in ("s", "ms", "us", "ns") if abs(raw * _MS_PER[u] - now) < self.years * _YEAR_MS), None
        )
        read = f"event times read as {_NAMES[self.unit]} fall in {when} (ts around {raw:.0f})"
        if guess is None or guess == self.unit:
            return f"{read}; check events.ts_unit (s, ms or us)"
        if guess == "ns":
            return f'{read}; they look like nanoseconds: convert them to microseconds and set events.ts_unit = "us"'
        return f'{read}; they look like {_NAMES[guess]}: set events.ts_unit = "{guess}"'


def _year(ms: float) -> str:
    try:
        return str(dt.datetime.fromtimestamp(ms / 1000.0, dt.UTC).year)
    except (OverflowError, OSError, ValueError):
        return "a year beyond the calendar"
