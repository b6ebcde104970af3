"""Concept drift: river change detectors on each learner's loss stream.

**The loss stream.** Raw logloss is a poor drift signal for a click model: it falls while the
learner learns, and it *falls* when the click-through rate falls (a stale ranking policy after a
change of tastes lowers CTR, and lower-entropy labels are easier to predict). So the detector
sees the learner's *excess* logloss, per event::

    e_t = logloss(p_t, y_t) - logloss(q_t, y_t)

where ``q_t`` is an exponentially weighted base rate of the labels before event ``t`` (half-life
``baseline_halflife`` events). The base rate follows a change of CTR within a few half-lives, the
learner more slowly, so ``e`` rises after a change of the base rate as after a change of the
concept, and it falls while the learner improves. Only a rise is an alarm (``direction = "up"``).
Probabilities are clipped to [1e-4, 1 - 1e-4]: one confident mistake would otherwise add up to 34
nats and dominate the detector's variance estimate.

**Detectors.** A detector sees means of ``chunk`` consecutive events. ``adwin`` (default, chunk 1:
a call per event costs about 0.3 µs, cheap next to learning) keeps ADWIN's original semantics:
after a cut the window keeps its recent part (river resets it entirely, which makes a detection of
the learning curve blind to a drift right after it). ``page_hinkley`` (chunk 25) runs in mode
``up`` for ``direction = "up"`` on z-scores of the chunk means (the loss divided by its running
standard deviation), so that its ``delta`` and ``threshold`` (defaults 0.5 and 20) mean the same for
any learner; per-event losses are right-skewed, which a CUSUM reads as drift, hence the chunks.
It measures deviations from its mean since its last reset, so after a large transient it is
slow to see the next change. ``kswin`` (chunk 100: it runs a KS test per update) compares the
mean of its recent sub-window with what came before since its last reset.

Detections of the same learner within ``cooldown_events`` of an alarm belong to that alarm.

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> tracker = LossDriftTracker(DriftSettings(warmup_events=0))
>>> p = np.full(6000, 0.2)
>>> y = (rng.random(6000) < np.where(np.arange(6000) < 3000, 0.2, 0.6)).astype(float)
>>> [events for events, _ in tracker.update(0, p, y)]   # the CTR triples at event 3000
[3200]
"""

from __future__ import annotations

import abc
import importlib
import importlib.util
import math
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.drift.settings import DriftSettings
from pipeline.drift.windows import SlidingBlocks, segment_sums
from pipeline.learners.base import StateBundle
from pipeline.learners.safe_state import dumps, loads

__all__ = ["ChangeDetector", "LossDriftTracker", "excess_logloss", "make_detector"]

_EPS = 1e-4
_EWMA_BLOCK = 256  # events per vectorised EWMA step per half-life: decay**-k stays below 2**256


def _river_detector(module: str, name: str) -> type:
    """The class ``name`` of ``river/drift/<module>.py``, imported on first use.

    ``import river.drift`` (and so any ``river.drift.<module>``, which runs the package's
    ``__init__`` first) imports river's datasets and through them scikit-learn and scipy: about a
    second, for an ADWIN that needs only ``river.base`` and river's compiled window. So the detector's
    own module is loaded from its file under its usual name, without the package ``__init__``; a
    later ``import river.drift`` finds it in ``sys.modules`` and binds the same class. Any other
    river layout takes the ordinary import.
    """
    full = f"river.drift.{module}"
    mod = sys.modules.get(full)
    if mod is None and "river.drift" not in sys.modules:
        try:
            import river

            spec = importlib.util.spec_from_file_location(full, f"{river.__path__[0]}/drift/{module}.py")
            mod = importlib.util.module_from_spec(spec)
            sys.modules[full] = mod
            spec.loader.exec_module(mod)
        except Exception:  # pragma: no cover - another river layout
            sys.modules.pop(full, None)
            mod = None
    if mod is None:
        mod = importlib.import_module(full)
    return getattr(mod, name)


class ChangeDetector(abc.ABC):
    """A river detector fed a whole array at a time; :meth:`feed` returns ``(index, went_up)`` per change.

    ``went_up`` is None where the detector cannot tell the direction.
    """

    name = ""
    river_module, river_name = "", ""  # river's class: river.drift.<river_module>.<river_name>

    @property
    def river_class(self) -> type:
        return _river_detector(self.river_module, self.river_name)

    def __init__(self, params: Mapping[str, Any] | None = None):
        self.params = dict(params or {})
        try:
            self._det = self.river_class(**self.params)
        except TypeError as exc:
            raise ValueError(f"detector_params for {self.name}: {exc}") from None

    @abc.abstractmethod
    def feed(self, x: np.ndarray) -> list[tuple[int, bool | None]]: ...

    def state(self) -> str:
        """The detector's learned state as JSON (no pickles; bound methods are rebuilt on load)."""
        return dumps({k: v for k, v in vars(self._det).items() if not callable(v) or isinstance(v, type)})

    def load_state(self, text: str) -> None:
        self._det = self.river_class(**self.params)
        vars(self._det).update(loads(text))


class Adwin(ChangeDetector):
    name = "adwin"
    river_module, river_name = "adwin", "ADWIN"

    def feed(self, x: np.ndarray) -> list[tuple[int, bool | None]]:
        det = self._det
        # window mean before update j = (total + x[anchor:j].sum()) / (width + j - anchor): no per-event reads
        total, width, anchor = det.total, det.width, 0
        prefix = np.concatenate(([0.0], np.cumsum(x)))
        out: list[tuple[int, bool | None]] = []
        # river's ADWIN wraps a compiled window whose update() returns True on a cut; calling it directly
        # halves the per-event cost and never triggers the wrapper's full reset
        helper = getattr(det, "_helper", None)
        values = x.tolist()
        if helper is not None and hasattr(helper, "__setstate__"):
            # most batches hold no cut: update in one C-level pass, and only when one cut happened
            # rewind to the saved window and replay event by event to read the window at the cut
            saved = helper.__getstate__()
            if not any(map(helper.update, values)):
                return []
            helper.__setstate__(saved)
        for j, v in enumerate(values):
            if helper is not None:
                cut = helper.update(v)
            else:  # pragma: no cover - another river layout: the public API, then undo the reset flag
                det.update(v)
                cut, det._drift_detected = det.drift_detected, False
            if cut:
                n_before = width + j - anchor
                before = (total + prefix[j] - prefix[anchor]) / n_before if n_before else v
                total, width, anchor = det.total, det.width, j + 1
                out.append((j, bool(total / width > before) if width else None))
        return out


class PageHinkley(ChangeDetector):
    name = "page_hinkley"
    river_module, river_name = "page_hinkley", "PageHinkley"

    def feed(self, x: np.ndarray) -> list[tuple[int, bool | None]]:
        det = self._det
        up = True if det.mode == "up" else (False if det.mode == "down" else None)
        out: list[tuple[int, bool | None]] = []
        update = det.update
        for j, v in enumerate(x.tolist()):
            update(v)
            if det.drift_detected:
                out.append((j, up))
        return out


class Kswin(ChangeDetector):
    name = "kswin"
    river_module, river_name = "kswin", "KSWIN"

    def __init__(self, params: Mapping[str, Any] | None = None):
        super().__init__(params)
        self._sum, self._n = 0.0, 0  # values since the detector's last reset

    def feed(self, x: np.ndarray) -> list[tuple[int, bool | None]]:
        det = self._det
        hits = []
        update = det.update
        for j, v in enumerate(x.tolist()):
            update(v)
            if det.drift_detected:
                hits.append((j, float(np.mean(det.window)), len(det.window)))
        prefix = np.concatenate(([0.0], np.cumsum(x)))
        out: list[tuple[int, bool | None]] = []
        anchor = 0
        for j, recent, k in hits:
            s = self._sum + prefix[j + 1] - prefix[anchor]
            n = self._n + j + 1 - anchor
            older = (s - recent * k) / (n - k) if n > k else recent
            out.append((j, bool(recent > older)))
            self._sum, self._n, anchor = 0.0, 0, j + 1  # river resets KSWIN at the next update
        self._sum += float(prefix[-1] - prefix[anchor])
        self._n += len(x) - anchor
        return out

    def state(self) -> str:
        return dumps({"det": loads(super().state()), "sum": self._sum, "n": self._n})

    def load_state(self, text: str) -> None:
        data = loads(text)
        super().load_state(dumps(data["det"]))
        self._sum, self._n = float(data["sum"]), int(data["n"])


_DETECTORS: dict[str, type[ChangeDetector]] = {c.name: c for c in (Adwin, PageHinkley, Kswin)}


def make_detector(
    name: str, params: Mapping[str, Any] | None = None, direction: str = "up"
) -> ChangeDetector:
    """The adapter for ``name`` (``adwin``, ``page_hinkley``, ``kswin``) built with river's ``params``."""
    if name not in _DETECTORS:
        raise ValueError(f"detector must be one of {', '.join(_DETECTORS)}, got {name!r}")
    params = dict(params or {})
    if name == "page_hinkley":
        params.setdefault("mode", "up" if direction == "up" else "both")
        # in z-scores of chunk means: ignore shifts below half a chunk sd, alarm at a CUSUM of 20 sd
        params.setdefault("delta", 0.5)
        params.setdefault("threshold", 20.0)
    if name == "kswin":
        params.setdefault("seed", 0)  # KSWIN samples its reference sub-window: seeded for repeatability
    return _DETECTORS[name](params)


def excess_logloss(probs: np.ndarray, labels: np.ndarray, base_rates: np.ndarray) -> np.ndarray:
    """Per-event logloss of ``probs`` minus that of ``base_rates`` (labels clipped to [0, 1]).

    >>> excess_logloss(np.array([0.9, 0.5]), np.array([1.0, 1.0]), np.array([0.5, 0.5])).round(4).tolist()
    [-0.5878, 0.0]
    """
    y = np.clip(labels, 0.0, 1.0)
    p = np.clip(probs, _EPS, 1 - _EPS)
    q = np.clip(base_rates, _EPS, 1 - _EPS)
    return y * (np.log(q) - np.log(p)) + (1 - y) * (np.log1p(-q) - np.log1p(-p))


class LossDriftTracker:
    """One learner's concept-drift watch: excess loss -> chunk means -> detector -> alarms with cooldown."""

    def __init__(self, settings: DriftSettings):
        self.settings = settings
        self.detector = make_detector(settings.detector, settings.detector_params, settings.direction)
        self.chunk = settings.chunk
        self._decay = 0.5 ** (1.0 / settings.baseline_halflife)
        self._ewma = (0.0, 0.0)  # (weighted label sum, total weight) of the base-rate EWMA
        self.seen = 0
        self._carry_sum, self._carry_n = 0.0, 0
        self.last_alarm: int | None = None
        self.window = SlidingBlocks(2, settings.window_events, settings.window_blocks)
        # Page-Hinkley's delta and threshold are in the units of its input: it sees z-scores
        self._standardize = settings.detector == "page_hinkley"
        self._moments = (0, 0.0, 0.0)  # count, mean, M2 of the excess loss after warmup

    @property
    def score(self) -> float:
        """Mean excess logloss over the current window (NaN before the first post-warmup event)."""
        s, n = self.window.total()
        return float(s / n) if n else math.nan

    def update(self, start: int, probs: np.ndarray, labels: np.ndarray) -> list[tuple[int, float]]:
        """Absorb a batch whose first event is number ``start`` (0-based) of the stream.

        Returns ``(events, score)`` per new alarm, ``events`` counting the events up to and including
        the one that completed the detection.
        """
        y = np.clip(np.asarray(labels, dtype=np.float64), 0.0, 1.0)
        n = len(y)
        if n == 0:
            return []
        e = excess_logloss(np.asarray(probs, dtype=np.float64), y, self._base_rates(y))
        skip = min(n, max(0, self.settings.warmup_events - self.seen))
        self.seen += n
        e = e[skip:]
        if len(e) == 0:
            return []
        self.window.push(len(e), segment_sums(e))
        means, ends = self._chunk_means(e)
        if self._standardize:
            means = means / (self._scale(e) / math.sqrt(self.chunk))
        alarms = []
        for c, went_up in self.detector.feed(means):
            if self.settings.direction == "up" and went_up is False:
                continue
            events = start + skip + int(ends[c]) + 1
            if self.last_alarm is not None and events - self.last_alarm < self.settings.cooldown_events:
                continue
            self.last_alarm = events
            alarms.append((events, self.score))
        return alarms

    def _base_rates(self, y: np.ndarray) -> np.ndarray:
        """Bias-corrected EWMA of the labels *before* each event (the running mean until it has history).

        Vectorised: m_t = d^t (m_0 + a sum_{s<t} d^-(s+1) y_s), weight w_t = 1 - d^t (1 - w_0), q_t = m_t / w_t.
        """
        d, a = self._decay, 1.0 - self._decay
        out = np.empty(len(y))
        m, w = self._ewma
        step = _EWMA_BLOCK * max(1, int(self.settings.baseline_halflife))
        for lo in range(0, len(y), step):
            yy = y[lo : lo + step]
            k = np.arange(len(yy))
            inv = d ** -(k + 1.0)
            weighted = np.cumsum(yy * inv)
            dk = d**k
            num = dk * (m + a * (weighted - yy * inv))
            den = 1.0 - dk * (1.0 - w)
            out[lo : lo + len(yy)] = np.divide(num, den, out=np.full(len(yy), 0.5), where=den > 0)
            m = d ** len(yy) * (m + a * weighted[-1])
            w = 1.0 - d ** len(yy) * (1.0 - w)
        self._ewma = (float(m), float(w))
        return out

    def _scale(self, e: np.ndarray) -> float:
        """Standard deviation of the excess loss before this batch (of the batch itself at first)."""
        n, mean, m2 = self._moments
        nb, mb = len(e), float(e.mean())
        m2b = float(((e - mb) ** 2).sum())
        sd = math.sqrt(m2 / (n - 1)) if n >= 2 else (math.sqrt(m2b / (nb - 1)) if nb >= 2 else 1.0)
        total = n + nb
        delta = mb - mean
        self._moments = (total, mean + delta * nb / total, m2 + m2b + delta * delta * n * nb / total)
        return sd if sd > 0 else 1.0

    def _chunk_means(self, e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Means of complete chunks (the partial one is carried) and the index in ``e`` ending each."""
        if self.chunk == 1:
            return e, np.arange(len(e))
        cum = self._carry_sum + np.concatenate(([0.0], np.cumsum(e)))
        n_full = (self._carry_n + len(e)) // self.chunk
        bounds = np.arange(1, n_full + 1) * self.chunk - self._carry_n
        sums = np.diff(np.concatenate(([0.0], cum[bounds])))
        self._carry_n = self._carry_n + len(e) - n_full * self.chunk
        self._carry_sum = float(cum[-1] - (cum[bounds[-1]] if n_full else 0.0))
        return sums / self.chunk, bounds - 1

    # -- state --------------------------------------------------------------------------------------
    def state(self) -> StateBundle:
        """Window and carries as arrays and metadata; the river detector as JSON in a one-row table."""
        meta = {
            "seen": self.seen,
            "ewma": list(self._ewma),
            "carry_sum": self._carry_sum,
            "carry_n": self._carry_n,
            "last_alarm": self.last_alarm,
            "moments": list(self._moments),
        }
        detector = pa.table({"detector": [self.detector.name], "state": [self.detector.state()]})
        return StateBundle(tables={"detector": detector}, arrays=self.window.state(), meta=meta)

    def load_state(self, bundle: StateBundle) -> None:
        meta = bundle.meta
        saved = bundle.tables["detector"].to_pydict()
        if saved["detector"][0] != self.detector.name:
            raise ValueError(
                f"saved drift detector is {saved['detector'][0]!r}, configured {self.detector.name!r}"
            )
        self.seen = int(meta["seen"])
        self._ewma = (float(meta["ewma"][0]), float(meta["ewma"][1]))
        self._carry_sum, self._carry_n = float(meta["carry_sum"]), int(meta["carry_n"])
        self.last_alarm = None if meta["last_alarm"] is None else int(meta["last_alarm"])
        n, mean, m2 = meta["moments"]
        self._moments = (int(n), float(mean), float(m2))
        self.window.load_state(dict(bundle.arrays))
        self.detector.load_state(saved["state"][0])
