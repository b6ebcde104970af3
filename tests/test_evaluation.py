"""Prequential metrics against scikit-learn on the same predictions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from pipeline.evaluation import WindowedMetrics, auc, calibration_ratio, logloss


@pytest.mark.parametrize("seed", range(5))
def test_auc_equals_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 2000)
    p = np.round(rng.random(2000) * 0.5 + y * 0.2, 2)  # rounding makes many ties
    assert auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)


def test_auc_hand_computed_case():
    # positives at 0.35 and 0.8, negatives at 0.1 and 0.4: 3 of 4 pairs ordered correctly
    assert auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == 0.75
    assert auc(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5


def test_auc_single_class_is_nan():
    assert math.isnan(auc(np.ones(5), np.random.default_rng(0).random(5)))


@pytest.mark.parametrize("seed", range(3))
def test_logloss_equals_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 1000)
    p = rng.random(1000)
    assert logloss(y, p) == pytest.approx(log_loss(y, p, labels=[0, 1]), rel=1e-12)


def test_calibration_ratio_hand_computed():
    assert calibration_ratio(np.array([1, 0, 1, 0]), np.array([0.5, 0.5, 0.5, 0.5])) == 1.0
    assert calibration_ratio(np.array([1, 0, 0, 0]), np.array([0.5, 0.5, 0.5, 0.5])) == 2.0


def test_windowed_metrics_equal_sklearn_on_last_window():
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 5000)
    p = np.clip(rng.random(5000) * 0.6 + y * 0.3, 0, 1)
    wm = WindowedMetrics(window=1000)
    for i in range(0, 5000, 333):
        wm.update(p[i : i + 333], y[i : i + 333])
    got = wm.get()
    assert got["n"] == 1000
    assert got["auc"] == pytest.approx(roc_auc_score(y[-1000:], p[-1000:]), abs=1e-12)
    assert got["logloss"] == pytest.approx(log_loss(y[-1000:], p[-1000:], labels=[0, 1]), rel=1e-12)
    assert got["ctr"] == pytest.approx(y[-1000:].mean())


def test_windowed_metrics_state_round_trip():
    wm = WindowedMetrics(window=50)
    wm.update(np.linspace(0, 1, 80), np.arange(80) % 2)
    other = WindowedMetrics(window=50)
    other.load_state(wm.state(), wm.seen)
    assert other.get() == wm.get() and other.seen == 80
