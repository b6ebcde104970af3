"""Delays from an exposure to its click, for the ``delayed`` feedback mode.

Two distributions, both with median ``delay_median_s`` = ``m`` (:class:`~pipeline.simulation.config.SimConfig`):

* ``exponential``: scale ``m / ln 2``.
* ``heavy_tailed``: with probability ``1 - f`` an exponential body of scale ``b``, with probability
  ``f`` (``delay_tail_fraction``) a log-normal tail of median ``T`` (``delay_tail_median_s``) and
  log standard deviation ``s`` (``delay_tail_sigma``). The body's scale puts the mixture's median
  at ``m``: from ``(1 - f) (1 - exp(-m / b)) + f Phi((ln m - ln T) / s) = 1/2``,

      b = -m / ln(1 - (1/2 - f Phi((ln m - ln T) / s)) / (1 - f)),

  which exists for every ``f < 1/2``; ``f = 0`` gives the exponential.

Delays are whole milliseconds, at least 1, so that an outcome is always later than its exposure.

>>> round(body_scale_s(30.0, 0.0, 10_800.0, 1.0), 3)  # f = 0: the exponential's m / ln 2
43.281
>>> round(body_scale_s(30.0, 0.1, 10_800.0, 1.0), 3)  # a tail takes mass: the body gets shorter
36.995
>>> round(mixture_cdf(30.0, 0.1, body_scale_s(30.0, 0.1, 10_800.0, 1.0), 10_800.0, 1.0), 4)
0.5
"""

from __future__ import annotations

import math

import numpy as np

from pipeline.simulation.config import SimConfig

__all__ = ["body_scale_s", "draw_delays_ms", "mixture_cdf"]


def _normal_cdf(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def mixture_cdf(
    x_s: float, tail_fraction: float, body_scale: float, tail_median_s: float, sigma: float
) -> float:
    """``P(delay <= x_s)`` under the exponential body + log-normal tail mixture (seconds)."""
    body = -math.expm1(-x_s / body_scale)
    tail = _normal_cdf((math.log(x_s) - math.log(tail_median_s)) / sigma)
    return (1.0 - tail_fraction) * body + tail_fraction * tail


def body_scale_s(median_s: float, tail_fraction: float, tail_median_s: float, sigma: float) -> float:
    """Scale (seconds) of the exponential body that puts the mixture's median at ``median_s``."""
    tail_below = tail_fraction * _normal_cdf((math.log(median_s) - math.log(tail_median_s)) / sigma)
    return -median_s / math.log1p(-(0.5 - tail_below) / (1.0 - tail_fraction))


def draw_delays_ms(rng: np.random.Generator, n: int, config: SimConfig) -> np.ndarray:
    """``n`` delays in whole milliseconds (int64, >= 1) from ``config.delay``'s distribution."""
    m = config.delay_median_s
    if config.delay == "exponential":
        seconds = rng.exponential(m / math.log(2.0), n)
    else:
        f, t, s = config.delay_tail_fraction, config.delay_tail_median_s, config.delay_tail_sigma
        body = rng.exponential(body_scale_s(m, f, t, s), n)
        tail = t * np.exp(s * rng.standard_normal(n))
        seconds = np.where(rng.random(n) < f, tail, body)
    return np.maximum(np.ceil(seconds * 1000.0), 1.0).astype(np.int64)
