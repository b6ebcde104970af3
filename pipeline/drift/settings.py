"""Configuration of drift detection: which signals, which detectors, which windows and thresholds.

One frozen, validated object; errors are :class:`~pipeline.errors.ConfigError` naming the key
(``drift.<key>``), the value and what is allowed. The ``[drift]`` section of the configuration
file has exactly these keys.

Examples
--------
>>> s = DriftSettings(detector="page_hinkley", features=("price", "device"))
>>> s.chunk, s.threshold("psi")
(25, (0.2, 0.1))
>>> DriftSettings(detector="ddm")
Traceback (most recent call last):
...
pipeline.errors.ConfigError: invalid value 'ddm' for 'drift.detector': expected one of adwin, page_hinkley, kswin
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import require

__all__ = [
    "CATEGORICAL_METHODS",
    "DEFAULT_THRESHOLDS",
    "DETECTORS",
    "NUMERIC_METHODS",
    "DriftSettings",
]

DETECTORS = ("adwin", "page_hinkley", "kswin")
NUMERIC_METHODS = ("psi", "ks")
CATEGORICAL_METHODS = ("js", "chi2")
#: (raise, clear) per method: an alarm is raised when the score reaches ``raise`` and may be raised
#: again only after the score has fallen to ``clear`` (hysteresis). PSI: the usual 0.2 / 0.1;
#: KS 0.2 is about the same shift (half a standard deviation of a location shift); Cramér's V 0.1 is
#: a "small" effect; Jensen–Shannon 0.03 bits is about PSI 0.17. Scores are effect sizes, so these
#: thresholds do not depend on window sizes.
DEFAULT_THRESHOLDS: dict[str, tuple[float, float]] = {
    "psi": (0.2, 0.1),
    "ks": (0.2, 0.1),
    "js": (0.03, 0.015),
    "chi2": (0.1, 0.05),
}
#: events per chunk mean fed to each detector when ``chunk_events`` is 0: ADWIN is cheap per event;
#: Page-Hinkley's CUSUM needs roughly symmetric inputs (per-event losses are skewed); KSWIN runs a KS
#: test per update.
DEFAULT_CHUNK = {"adwin": 1, "page_hinkley": 25, "kswin": 100}


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    require(ok, f"drift.{key}", value, allowed)


@dataclass(frozen=True)
class DriftSettings:
    """What the :class:`~pipeline.drift.DriftMonitor` watches and when it raises an alarm.

    Parameters
    ----------
    enabled
        Off: no monitor is attached.
    detector, detector_params
        Concept drift: the river detector run on each learner's loss stream (``adwin``,
        ``page_hinkley``, ``kswin``) and its constructor arguments (e.g. ``{delta = 0.0005}``).
    chunk_events
        The detector sees means of this many consecutive events (0 = its default: 1 for ADWIN, 25
        for Page-Hinkley, 100 for KSWIN). Fixed-size chunks, not micro-batches, so that detections do
        not depend on how the source batches the stream.
    direction
        ``up`` (default): only a rise of the loss is an alarm (a fall is the learner improving);
        ``both``: any change.
    baseline_halflife
        The loss stream is the learner's logloss minus that of an exponentially weighted base-rate
        predictor with this half-life in events (see :mod:`pipeline.drift.detectors`).
    cooldown_events
        Detections of the same signal within this many events of an alarm belong to that alarm.
    warmup_events
        Loss and prediction signals ignore each learner's first events (its learning curve).
    features, predictions, labels
        Data drift: event features (names in ``features``, or ``position``, ``propensity``,
        ``event_type``), each learner's predictions, the labels.
    numeric_methods, categorical_method
        Scores for numeric signals (PSI and/or KS over quantile bins of the reference) and for
        categorical ones (``js`` Jensen–Shannon or ``chi2`` Cramér's V over the top-k categories).
    reference
        ``sliding`` (default): the reference is the ``reference_events`` values just before the
        current window, so it follows slow change (a learner's outputs while it learns, seasonality)
        and an abrupt shift stands out; an alarm clears by itself once the shift has moved into the
        reference. ``fixed``: the signal's first values, re-baselined after ``rebaseline_events``.
    reference_events, window_events, window_blocks
        Sizes of the reference and of the current window, both kept as per-block histograms of
        ``window_events / window_blocks`` values each (bounded memory).
    bins, top_k
        Numeric bins (quantiles of the reference) and categorical categories kept (+ "other").
    thresholds
        ``{method: [raise, clear]}`` overriding :data:`DEFAULT_THRESHOLDS`.
    rebaseline_events
        ``fixed`` reference: an alarm that stays raised for this many values makes the signal collect
        a new reference (the shift is accepted as the new normal and a later one can be seen).
    max_alarms
        Alarms kept in memory for reports (the snapshot writer drains its own copy).
    """

    enabled: bool = True
    detector: str = "adwin"
    detector_params: Mapping[str, Any] = field(default_factory=dict)
    chunk_events: int = 0
    direction: str = "up"
    baseline_halflife: float = 1000.0
    cooldown_events: int = 5000
    warmup_events: int = 10_000
    features: tuple[str, ...] = ()
    predictions: bool = True
    labels: bool = True
    numeric_methods: tuple[str, ...] = NUMERIC_METHODS
    categorical_method: str = "js"
    reference: str = "sliding"
    reference_events: int = 5000
    window_events: int = 2000
    window_blocks: int = 10
    bins: int = 10
    top_k: int = 20
    thresholds: Mapping[str, Any] = field(default_factory=dict)
    rebaseline_events: int = 10_000
    max_alarms: int = 10_000

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        _check(self.detector in DETECTORS, "detector", self.detector, "one of " + ", ".join(DETECTORS))
        _check(isinstance(self.detector_params, Mapping), "detector_params", self.detector_params, "a table")
        _check(self.chunk_events >= 0, "chunk_events", self.chunk_events, "an integer >= 0 (0 = default)")
        _check(self.direction in ("up", "both"), "direction", self.direction, "one of up, both")
        _check(self.baseline_halflife >= 1, "baseline_halflife", self.baseline_halflife, "a number >= 1")
        for key in ("cooldown_events", "warmup_events"):
            _check(getattr(self, key) >= 0, key, getattr(self, key), "an integer >= 0")
        bad = [m for m in self.numeric_methods if m not in NUMERIC_METHODS]
        _check(
            not bad and len(self.numeric_methods) > 0,
            "numeric_methods",
            list(self.numeric_methods),
            "a non-empty list of " + ", ".join(NUMERIC_METHODS),
        )
        _check(
            self.categorical_method in CATEGORICAL_METHODS,
            "categorical_method",
            self.categorical_method,
            "one of " + ", ".join(CATEGORICAL_METHODS),
        )
        _check(self.reference in ("sliding", "fixed"), "reference", self.reference, "one of sliding, fixed")
        _check(self.reference_events >= 100, "reference_events", self.reference_events, "an integer >= 100")
        _check(
            self.window_blocks >= 1 and self.window_events >= self.window_blocks,
            "window_events",
            self.window_events,
            f"an integer >= window_blocks ({self.window_blocks})",
        )
        _check(self.bins >= 2, "bins", self.bins, "an integer >= 2")
        _check(self.top_k >= 1, "top_k", self.top_k, "an integer >= 1")
        _check(self.rebaseline_events >= 1, "rebaseline_events", self.rebaseline_events, "an integer >= 1")
        _check(self.max_alarms >= 1, "max_alarms", self.max_alarms, "an integer >= 1")
        for name in self.features:
            _check(isinstance(name, str) and name != "", "features", list(self.features), "feature names")
        self._check_thresholds()

    def _check_thresholds(self) -> None:
        _check(isinstance(self.thresholds, Mapping), "thresholds", self.thresholds, "a table")
        for method, pair in self.thresholds.items():
            key = f"thresholds.{method}"
            _check(method in DEFAULT_THRESHOLDS, key, method, "a method: " + ", ".join(DEFAULT_THRESHOLDS))
            ok = isinstance(pair, (list, tuple)) and len(pair) == 2
            ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in pair)
            _check(ok and 0 <= pair[1] <= pair[0], key, pair, "[raise, clear] with 0 <= clear <= raise")

    @property
    def chunk(self) -> int:
        """Events per detector update (``chunk_events`` or the detector's default)."""
        return self.chunk_events or DEFAULT_CHUNK[self.detector]

    def threshold(self, method: str) -> tuple[float, float]:
        """``(raise, clear)`` of a data-drift method."""
        pair = self.thresholds.get(method, DEFAULT_THRESHOLDS[method])
        return float(pair[0]), float(pair[1])
