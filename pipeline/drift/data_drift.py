"""Data drift: a reference window against a sliding current window, for one numeric or categorical signal.

A signal first *collects* its first ``reference_events`` values (the only raw values ever held,
bounded) and turns them into bins — numeric values into the quantile bins of those values (outer
bins open, so values outside their range are still counted), categorical ones into their ``top_k``
categories plus "other" — and into the first reference histogram; the raw values are dropped.
Then it *monitors*: each batch's values are binned into the current window (a
:class:`~pipeline.drift.windows.SlidingBlocks` of ``window_events`` values); once the window is
full, every batch scores it against the reference (PSI and/or KS for numeric signals,
Jensen–Shannon or Cramér's V for categorical ones), each method with its own
:class:`~pipeline.drift.windows.Hysteresis`.

With ``reference = "sliding"`` the blocks that slide out of the current window slide into the
reference, so the two windows are adjacent and move together; with ``"fixed"`` the reference stays,
and an alarm that stays raised for ``rebaseline_events`` values makes the signal collect a new one.

Examples
--------
>>> rng = np.random.default_rng(0)
>>> sig = NumericSignal(DriftSettings(reference_events=1000, window_events=500))
>>> [sig.update(rng.normal(0, 1, 500)) for _ in range(4)]          # reference, then stationary
[[], [], [], []]
>>> [(m, round(s, 2)) for m, s in sig.update(rng.normal(1.0, 1, 500))]   # the mean moves by one sd
[('psi', 0.93), ('ks', 0.35)]
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.drift.settings import DriftSettings
from pipeline.drift.statistics import score
from pipeline.drift.windows import Hysteresis, SlidingBlocks, segment_histograms
from pipeline.learners.base import StateBundle

__all__ = ["CategoricalSignal", "NumericSignal", "quantile_edges"]

REFERENCE, MONITOR = "reference", "monitor"


def quantile_edges(values: np.ndarray, bins: int) -> np.ndarray:
    """Interior cut points: the reference's quantiles, taken among observed values and deduplicated.

    Bins are ``(-inf, e0], (e0, e1], ..., (e_last, inf)``; taking observed values (not interpolated
    ones) keeps every distinct value of a discrete signal (a 0/1 label) in its own bin.

    >>> quantile_edges(np.array([0, 0, 0, 1, 1, 0, 0, 0, 0, 0.0]), 10).tolist()
    [0.0]
    >>> quantile_edges(np.arange(100.0), 4).tolist()
    [24.0, 49.0, 74.0]
    """
    qs = np.linspace(0.0, 1.0, bins + 1)[1:-1]
    cuts = np.unique(np.quantile(values, qs, method="inverted_cdf"))
    return cuts[cuts < values.max()]  # a cut at the maximum would leave an always-empty top bin


class _Signal:
    """Shared lifecycle of a data-drift signal; subclasses bin values and build the reference."""

    kind = ""

    def __init__(self, settings: DriftSettings, methods: tuple[str, ...]):
        self.settings = settings
        self.methods = methods
        self.phase = REFERENCE
        self.window: SlidingBlocks | None = None
        self.reference: SlidingBlocks | None = None
        self.hysteresis = {m: Hysteresis(*settings.threshold(m)) for m in methods}
        self.scores: dict[str, float] = {}
        self.alarmed_for = 0  # values seen while any alarm stayed raised
        self.rebaselines = 0

    def update(self, values) -> list[tuple[str, float]]:
        """Absorb one batch of values; returns ``(method, score)`` per alarm raised by it."""
        if len(values) == 0:
            return []
        if self.phase == REFERENCE:
            values = self._collect(values)
            if self.phase == REFERENCE or len(values) == 0:
                return []
        idx = self._bin(values)
        width = self.window.width
        evicted = self.window.push(len(idx), segment_histograms(idx, width))
        if self.settings.reference == "sliding":
            self.reference.add_blocks(evicted)
        if not self.window.full:
            return []
        ref, current = self.reference.total(), self.window.total()
        alarms = []
        for m in self.methods:
            s = score(m, ref, current)
            self.scores[m] = s
            if self.hysteresis[m].update(s):
                alarms.append((m, s))
        if self.settings.reference == "fixed":
            self._maybe_rebaseline(len(idx))
        return alarms

    def _start_monitoring(self, width: int, reference_idx: np.ndarray | None = None) -> None:
        """Create both windows; ``reference_idx`` (bin indices) fills the reference."""
        s = self.settings
        self.window = SlidingBlocks(width, s.window_events, s.window_blocks)
        block = self.window.block
        n_ref = -(-s.reference_events // block)
        self.reference = SlidingBlocks(width, n_ref * block, n_ref)
        if reference_idx is not None:
            self.reference.push(len(reference_idx), segment_histograms(reference_idx, width))
            self.reference.seal()
        self.phase = MONITOR

    def _maybe_rebaseline(self, n: int) -> None:
        if not any(h.active for h in self.hysteresis.values()):
            self.alarmed_for = 0
            return
        self.alarmed_for += n
        if self.alarmed_for >= self.settings.rebaseline_events:
            self.rebaselines += 1
            self._reset_reference()

    def _reset_reference(self) -> None:
        self.phase = REFERENCE
        self.window = None
        self.reference = None
        self.alarmed_for = 0
        self.scores = {}
        for h in self.hysteresis.values():
            h.active = False

    # -- state --------------------------------------------------------------------------------------
    def state(self) -> StateBundle:
        meta = {
            "kind": self.kind,
            "phase": self.phase,
            "active": {m: h.active for m, h in self.hysteresis.items()},
            "scores": dict(self.scores),
            "alarmed_for": self.alarmed_for,
            "rebaselines": self.rebaselines,
        }
        arrays: dict[str, np.ndarray] = {}
        if self.phase == MONITOR:
            arrays.update({f"window_{k}": v for k, v in self.window.state().items()})
            arrays.update({f"reference_{k}": v for k, v in self.reference.state().items()})
        return StateBundle(arrays=arrays, meta=meta)

    def load_state(self, bundle: StateBundle) -> None:
        meta, arrays = bundle.meta, bundle.arrays
        self.phase = meta["phase"]
        for m, active in meta["active"].items():
            if m in self.hysteresis:
                self.hysteresis[m].active = bool(active)
        self.scores = {k: float(v) for k, v in meta["scores"].items()}
        self.alarmed_for = int(meta["alarmed_for"])
        self.rebaselines = int(meta["rebaselines"])
        if self.phase == MONITOR:
            self._start_monitoring(int(np.asarray(arrays["window_blocks"]).shape[1]))
            for name, window in (("window", self.window), ("reference", self.reference)):
                window.load_state({k: arrays[f"{name}_{k}"] for k in ("blocks", "counts", "sum")})


class NumericSignal(_Signal):
    """A numeric signal (feature, prediction, label) scored with PSI and/or KS over quantile bins."""

    kind = "numeric"

    def __init__(self, settings: DriftSettings):
        super().__init__(settings, tuple(settings.numeric_methods))
        self._buffer: list[np.ndarray] = []
        self._buffered = 0
        self.edges: np.ndarray | None = None

    def update(self, values) -> list[tuple[str, float]]:
        x = np.asarray(values, dtype=np.float64)
        return super().update(x[np.isfinite(x)])

    def _collect(self, x: np.ndarray) -> np.ndarray:
        take = min(len(x), self.settings.reference_events - self._buffered)
        self._buffer.append(x[:take].copy())
        self._buffered += take
        if self._buffered < self.settings.reference_events:
            return x[:0]
        ref = np.concatenate(self._buffer)
        self._buffer, self._buffered = [], 0
        self.edges = quantile_edges(ref, self.settings.bins)
        self._start_monitoring(len(self.edges) + 1, self._bin(ref))
        return x[take:]

    def _bin(self, x: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.edges, x, side="left")

    def _reset_reference(self) -> None:
        super()._reset_reference()
        self.edges = None

    def state(self) -> StateBundle:
        bundle = super().state()
        if self.phase == MONITOR:
            bundle.arrays["edges"] = self.edges
        else:
            bundle.arrays["buffer"] = np.concatenate(self._buffer) if self._buffer else np.zeros(0)
        return bundle

    def load_state(self, bundle: StateBundle) -> None:
        self._buffer, self._buffered = [], 0
        if bundle.meta["phase"] == MONITOR:
            self.edges = np.asarray(bundle.arrays["edges"], dtype=np.float64)
        else:
            buf = np.asarray(bundle.arrays["buffer"], dtype=np.float64)
            self._buffer, self._buffered = [buf], len(buf)
        super().load_state(bundle)


class CategoricalSignal(_Signal):
    """A categorical signal over the reference's ``top_k`` categories plus "other"."""

    kind = "categorical"

    def __init__(self, settings: DriftSettings):
        super().__init__(settings, (settings.categorical_method,))
        self._buffer: list[pa.Array] = []
        self._buffered = 0
        self.categories: list[str] = []
        self._value_set: pa.Array | None = None

    def update(self, values) -> list[tuple[str, float]]:
        arr = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values, pa.string())
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        return super().update(pc.drop_null(arr.cast(pa.string())))

    def _collect(self, values: pa.Array) -> pa.Array:
        take = min(len(values), self.settings.reference_events - self._buffered)
        self._buffer.append(values.slice(0, take))
        self._buffered += take
        if self._buffered < self.settings.reference_events:
            return values.slice(0, 0)
        ref = pa.concat_arrays(self._buffer)
        self._buffer, self._buffered = [], 0
        ranked = sorted(
            ((c["values"], c["counts"]) for c in pc.value_counts(ref).to_pylist()),
            key=lambda kv: (-kv[1], kv[0]),
        )
        self._set_categories([k for k, _ in ranked[: self.settings.top_k]])
        self._start_monitoring(len(self.categories) + 1, self._bin(ref))
        return values.slice(take)

    def _set_categories(self, categories: list[str]) -> None:
        self.categories = categories
        self._value_set = pa.array(categories, pa.string()) if categories else None

    def _bin(self, values: pa.Array) -> np.ndarray:
        idx = pc.index_in(values, value_set=self._value_set).fill_null(len(self.categories))
        return np.asarray(idx.to_numpy(zero_copy_only=False), dtype=np.int64)

    def _reset_reference(self) -> None:
        super()._reset_reference()
        self._set_categories([])

    def state(self) -> StateBundle:
        bundle = super().state()
        bundle.meta["categories"] = list(self.categories)
        buffered = pa.concat_arrays(self._buffer) if self._buffer else pa.array([], pa.string())
        bundle.tables["buffer"] = pa.table({"value": buffered})
        return bundle

    def load_state(self, bundle: StateBundle) -> None:
        self._set_categories([str(c) for c in bundle.meta["categories"]])
        buffered = bundle.tables["buffer"].column("value").combine_chunks()
        self._buffer, self._buffered = [buffered], len(buffered)
        super().load_state(bundle)
