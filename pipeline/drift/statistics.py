"""Distances between two histograms over the same bins: PSI, binned KS, Jensen–Shannon, chi² (Cramér's V).

Every function takes two count vectors (reference, current) over the same bins and returns one
number; none of them needs the raw values, which is what keeps data-drift memory bounded. Zero
counts are smoothed with half a pseudo-count per bin (PSI and Jensen–Shannon would otherwise be
infinite for a bin that is empty on one side).

All scores are *effect sizes*: they do not grow with the number of events, so one threshold means
the same thing for a window of 1,000 events and of 100,000.

Examples
--------
>>> import numpy as np
>>> ref, cur = np.array([50, 30, 20]), np.array([20, 30, 50])
>>> round(psi(ref, cur), 4), round(ks(ref, cur), 4), round(jensen_shannon(ref, cur), 4), round(cramers_v(ref, cur), 4)
(0.5329, 0.3, 0.093, 0.3586)
>>> psi(ref, ref), ks(ref, ref), jensen_shannon(ref, ref), cramers_v(ref, ref)
(0.0, 0.0, 0.0, 0.0)
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["METHODS", "cramers_v", "jensen_shannon", "ks", "proportions", "psi", "score"]

_PSEUDO = 0.5


def proportions(counts: np.ndarray, smooth: bool = True) -> np.ndarray:
    """Counts as proportions; with ``smooth``, half a pseudo-count is added to every bin first.

    >>> proportions(np.array([3, 0, 1]), smooth=False).tolist()
    [0.75, 0.0, 0.25]
    """
    c = np.asarray(counts, dtype=np.float64)
    if smooth:
        c = c + _PSEUDO
    total = c.sum()
    return c / total if total > 0 else np.full(len(c), 1.0 / max(len(c), 1))


def psi(reference: np.ndarray, current: np.ndarray) -> float:
    """Population stability index ``sum((q - p) * ln(q / p))`` (a symmetrised KL divergence, in nats).

    The usual reading: below 0.1 no change, 0.1-0.25 a moderate shift, above 0.25 a major one.
    """
    p, q = proportions(reference), proportions(current)
    return float(np.sum((q - p) * np.log(q / p)))


def ks(reference: np.ndarray, current: np.ndarray) -> float:
    """Kolmogorov–Smirnov distance between the two empirical CDFs, evaluated at the bin edges.

    On binned data this is the exact KS distance at the edges and a lower bound of the KS distance
    of the raw values (quantile bins of the reference keep the gap small).
    """
    p, q = proportions(reference, smooth=False), proportions(current, smooth=False)
    return float(np.max(np.abs(np.cumsum(p) - np.cumsum(q)), initial=0.0))


def jensen_shannon(reference: np.ndarray, current: np.ndarray) -> float:
    """Jensen–Shannon divergence in bits (0 = identical, 1 = disjoint supports)."""
    p, q = proportions(reference), proportions(current)
    m = 0.5 * (p + q)
    value = 0.5 * np.sum(p * np.log2(p / m)) + 0.5 * np.sum(q * np.log2(q / m))
    return float(max(value, 0.0))


def cramers_v(reference: np.ndarray, current: np.ndarray) -> float:
    """Cramér's V of the 2 x k table (reference, current) x bins: ``sqrt(chi2 / n)``, in [0, 1].

    The chi² statistic itself grows with the number of events; V is the same test as an effect
    size. Bins empty on both sides are dropped (they carry no evidence).
    """
    table = np.vstack([np.asarray(reference, np.float64), np.asarray(current, np.float64)])
    table = table[:, table.sum(axis=0) > 0]
    n = table.sum()
    if n == 0 or table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        return 0.0
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / n
    chi2 = float(np.sum((table - expected) ** 2 / expected))
    return math.sqrt(chi2 / n)


#: method name (the ``method`` / ``detector`` metric label) -> score function
METHODS = {"psi": psi, "ks": ks, "js": jensen_shannon, "chi2": cramers_v}


def score(method: str, reference: np.ndarray, current: np.ndarray) -> float:
    """The score of ``method`` (one of :data:`METHODS`)."""
    try:
        fn = METHODS[method]
    except KeyError:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}") from None
    return fn(reference, current)
