"""Bounded exponential backoff with seeded jitter, and a retry helper built on it.

Every place that waits for something outside the process (a broker, the dead-letter topic)
sleeps per :class:`Backoff`: ``initial_s * factor**k`` capped at ``max_s``, jittered so that many
workers do not retry in step, and reset after a success.

Examples
--------
>>> backoff = Backoff(initial_s=0.5, max_s=4.0, jitter=0.0)
>>> [backoff.next_delay() for _ in range(5)]
[0.5, 1.0, 2.0, 4.0, 4.0]
>>> calls = iter([OSError("down"), "ok"])
>>> def flaky():
...     out = next(calls)
...     if isinstance(out, Exception):
...         raise out
...     return out
>>> retry_call(flaky, attempts=2, retry_on=(OSError,), sleep=lambda s: None)
'ok'
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np

from pipeline.errors import StreamlearnError

__all__ = ["Backoff", "RetriesExhausted", "retry_call"]

log = logging.getLogger(__name__)


class RetriesExhausted(StreamlearnError):
    """Every attempt of :func:`retry_call` failed."""


class Backoff:
    """Bounded exponential backoff: ``initial_s * factor**k`` capped at ``max_s``, with seeded jitter.

    Parameters
    ----------
    initial_s, max_s
        First and largest delay in seconds.
    factor
        Growth per attempt (> 1 grows).
    jitter
        Each delay is multiplied by a uniform draw in ``[1 - jitter, 1 + jitter]`` (then capped),
        so that many workers do not retry in step.
    seed
        Seed of the jitter's random generator.
    """

    def __init__(
        self,
        initial_s: float = 0.2,
        max_s: float = 30.0,
        factor: float = 2.0,
        jitter: float = 0.2,
        seed: int = 0,
    ):
        if initial_s <= 0:
            raise ValueError(f"initial_s must be > 0, got {initial_s}")
        if max_s < initial_s:
            raise ValueError(f"max_s must be >= initial_s ({initial_s}), got {max_s}")
        if factor < 1:
            raise ValueError(f"factor must be >= 1, got {factor}")
        if not 0 <= jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), got {jitter}")
        self.initial_s, self.max_s, self.factor = initial_s, max_s, factor
        self.jitter, self.seed = jitter, seed
        self._rng = np.random.default_rng(seed)
        self._attempt = 0

    def next_delay(self) -> float:
        """The delay before the next attempt; each call counts one failed attempt."""
        base = min(self.max_s, self.initial_s * self.factor ** min(self._attempt, 64))
        self._attempt += 1
        if self.jitter:
            base *= float(self._rng.uniform(1.0 - self.jitter, 1.0 + self.jitter))
        return min(self.max_s, base)

    def reset(self) -> None:
        """Start again from ``initial_s`` (after a success)."""
        self._attempt = 0

    @property
    def attempts(self) -> int:
        return self._attempt

    def __repr__(self) -> str:
        return f"Backoff(initial_s={self.initial_s}, max_s={self.max_s}, factor={self.factor}, jitter={self.jitter})"


def retry_call(
    fn: Callable[[], object],
    *,
    attempts: int,
    retry_on: tuple[type[BaseException], ...],
    backoff: Backoff | None = None,
    sleep: Callable[[float], None] = time.sleep,
    what: str = "call",
    error: type[Exception] = RetriesExhausted,
):
    """Call ``fn`` up to ``attempts`` times, sleeping per ``backoff`` after each ``retry_on`` error.

    Raises ``error`` (chained to the last failure) when every attempt failed; other exceptions
    pass through at once.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    backoff = backoff or Backoff()
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except retry_on as exc:
            if attempt == attempts:
                raise error(f"{what} failed after {attempts} attempts: {exc!r}") from exc
            delay = backoff.next_delay()
            log.warning(
                "%s failed (attempt %d/%d): %r; retrying in %.2f s", what, attempt, attempts, exc, delay
            )
            sleep(delay)
    raise AssertionError("unreachable")
