"""Importance weights that undo the bias of learning exposures before their outcomes are known.

Learning an exposure at once as a negative and again as a positive when its outcome comes
(fake negatives) trains on a distribution ``b`` in which every positive also appears as a
negative: ``b(y=1|x) = p / (1 + p)``. Ktena et al. (RecSys 2019, "Addressing delayed feedback
for continuous training with neural networks in CTR prediction", FNW) weight the loss so that its
expectation under ``b`` is the loss under the true ``p``:

    w(y=1) = 1 + p,        w(y=0) = (1 - p) (1 + p),

with ``p`` the model's own current estimate (no gradient through it). ES-DFM (Yang et al., AAAI
2021, "Capturing delayed feedback in conversion rate prediction via elapsed-time sampling")
first waits ``e``: an exposure is learned with the label known after ``e``, and a positive whose
outcome comes later is learned again. With ``h = P(y=1, delay > e | x)`` the observed
distribution has mass ``1 + h`` and

    w(y=1) = 1 + h,        w(y=0) = (1 - p) (1 + h) / (1 - p + h).

FNC, the paper's other method, leaves the loss alone and learns ``b`` itself; its scores are
calibrated afterwards by inverting ``b = p / (1 + p)``:

    p = b / (1 - b)      (clipped to [0, 1]).

FNW is the case ``e = 0`` (``h = p``). Here ``h = p * S(e)`` with ``S(e)`` the share of attributed
outcomes that came later than ``e``, estimated from the exposures whose windows have closed (a
delay model without covariates, as Chapelle's (KDD 2014) with one rate; the papers fit ``h(x)`` with
a second network).

Examples
--------
>>> import numpy as np
>>> fake_negative_weights(np.array([1.0, 0.0]), np.array([0.2, 0.2])).round(4).tolist()
[1.2, 0.96]
>>> es_dfm_weights(np.array([1.0, 0.0]), np.array([0.2, 0.2]), delayed_share=1.0).round(4).tolist()
[1.2, 0.96]
>>> fake_negative_calibration(np.array([0.2 / 1.2, 0.0, 0.5, 0.9])).round(4).tolist()
[0.2, 0.0, 1.0, 1.0]
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "calibrated_scores",
    "calibrates",
    "es_dfm_weights",
    "fake_negative_calibration",
    "fake_negative_weights",
]

_P_MAX = 1.0 - 1e-6  # a model certain of a click would give its negatives weight 0 forever


def fake_negative_weights(labels: np.ndarray, p: np.ndarray) -> np.ndarray:
    """FNW's weights for examples with ``labels`` (> 0 is a positive) under the model's ``p``."""
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, _P_MAX)
    return np.where(np.asarray(labels) > 0, 1.0 + p, (1.0 - p) * (1.0 + p))


def es_dfm_weights(labels: np.ndarray, p: np.ndarray, delayed_share: float) -> np.ndarray:
    """ES-DFM's weights, ``h = p * delayed_share`` (the share of outcomes later than the wait)."""
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, _P_MAX)
    h = p * float(np.clip(delayed_share, 0.0, 1.0))
    return np.where(np.asarray(labels) > 0, 1.0 + h, (1.0 - p) * (1.0 + h) / (1.0 - p + h))


def fake_negative_calibration(b: np.ndarray) -> np.ndarray:
    """FNC: the click probability ``p = b / (1 - b)`` of a model that learned the fake-negative stream."""
    b = np.clip(np.asarray(b, dtype=np.float64), 0.0, 0.5)  # b <= 1/2 whenever p <= 1
    return np.minimum(b / (1.0 - b), 1.0)


def calibrates(learner, calibration: str | None) -> bool:
    """Whether ``learner``'s scores are calibrated under ``calibration``: only learners that learn
    the joined stream are; bandit policies learn final rewards (``learns_final_labels``), never a
    fake negative."""
    return calibration == "fnc" and not getattr(learner, "learns_final_labels", False)


def calibrated_scores(learner, scores: np.ndarray, calibration: str | None) -> np.ndarray:
    """``learner``'s scores as the application should see them under ``join.correction``."""
    return fake_negative_calibration(scores) if calibrates(learner, calibration) else scores
