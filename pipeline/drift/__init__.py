"""Drift detection (docs/design.md §1, issue 5): concept drift on each learner's loss, data drift on features,
predictions and labels, alarms with hysteresis, as one runner observer.

* :mod:`~pipeline.drift.settings` — :class:`DriftSettings` (the ``[drift]`` configuration section).
* :mod:`~pipeline.drift.statistics` — PSI, KS, Jensen–Shannon, Cramér's V over histograms.
* :mod:`~pipeline.drift.windows` — bounded sliding windows of per-block histograms, hysteresis.
* :mod:`~pipeline.drift.detectors` — river ADWIN / Page-Hinkley / KSWIN on the excess logloss.
* :mod:`~pipeline.drift.data_drift` — reference vs current window for one numeric or categorical signal.
* :mod:`~pipeline.drift.monitor` — :class:`DriftMonitor`, the observer that ties them together.

Names are imported on first use, so that ``pipeline.config`` can use :class:`DriftSettings`
without importing river.
"""

from __future__ import annotations

from pipeline.lazy import lazy_exports

_EXPORTS = {
    "settings": (
        "CATEGORICAL_METHODS",
        "DEFAULT_THRESHOLDS",
        "DETECTORS",
        "NUMERIC_METHODS",
        "DriftSettings",
    ),
    "statistics": ("cramers_v", "jensen_shannon", "ks", "psi"),
    "windows": ("Hysteresis", "SlidingBlocks"),
    "detectors": ("ChangeDetector", "LossDriftTracker", "excess_logloss", "make_detector"),
    "data_drift": ("CategoricalSignal", "NumericSignal", "quantile_edges"),
    "monitor": ("DriftMonitor", "feature_values"),
}

__all__ = [
    "CATEGORICAL_METHODS",
    "DEFAULT_THRESHOLDS",
    "DETECTORS",
    "NUMERIC_METHODS",
    "CategoricalSignal",
    "ChangeDetector",
    "DriftMonitor",
    "DriftSettings",
    "Hysteresis",
    "LossDriftTracker",
    "NumericSignal",
    "SlidingBlocks",
    "cramers_v",
    "excess_logloss",
    "feature_values",
    "jensen_shannon",
    "ks",
    "make_detector",
    "psi",
    "quantile_edges",
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
