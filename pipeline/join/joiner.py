"""The exposure/outcome join in event time, and what the learners learn from it at each batch.

One micro-batch goes through two steps, around the runner's predictions:

1. :meth:`Joiner.ingest` sorts the events into exposures, outcomes and already-labelled
   examples, opens a slot per new exposure, and attributes outcomes (those that came first wait
   in a bounded pending list until the watermark passes them).
2. The runner scores the new exposures (and the labelled examples) with every learner *before*
   anything of this batch is learned, and hands the scores back (:meth:`Joiner.record_predictions`):
   those are the predictions that the exposure's final label is evaluated against, later.
3. :meth:`Joiner.advance` moves the watermark and says what to learn now (per strategy) and which
   exposures are final (their label, their exposure-time predictions).

The rules (docs/delayed_feedback.md): an exposure is keyed by ``(request_id, item_id)`` (without a
``request_id`` it can never be linked and closes with label 0), or with ``link = "exposure_id"``
by its ``event_id``, which an outcome names in its ``exposure_id``; an outcome is attributed when it
comes at most its type's window after the exposure; the watermark is the largest event time seen
less ``allowed_lateness_ms``; an exposure closes when the watermark passes its time plus the
longest window, or early when the store is over a bound (evicted). An outcome whose exposure is
not open is pending while the watermark has not passed it, then an orphan; one whose exposure
closed (remembered until the store compacts) is counted as after the window.

Examples
--------
>>> from pipeline.events import decode_json, EventRules
>>> from pipeline.join.settings import JoinConfig
>>> j = Joiner(JoinConfig(enabled=True, strategy="wait", window_s=10, allowed_lateness_ms=0), ["m"])
>>> rows = [b'{"event_id":"x","ts":0,"user_id":"u","item_id":"i","label":0,"event_type":"impression","request_id":"r"}',
...         b'{"event_id":"c","ts":4000,"user_id":"u","item_id":"i","label":1,"event_type":"click","request_id":"r"}']
>>> events, _ = decode_json(rows, EventRules())
>>> step = j.ingest(events)
>>> j.record_predictions("m", np.array([0.3]))
>>> j.advance().evaluated.label.tolist()   # the window (10 s) is still open
[]
>>> late, _ = decode_json([b'{"event_id":"y","ts":20000,"user_id":"u","item_id":"k","label":0,"event_type":"view","request_id":"s"}'], EventRules())
>>> _ = j.ingest(late); j.record_predictions("m", np.array([0.5]))
>>> out = j.advance(); out.evaluated.label.tolist(), out.predictions["m"].tolist(), out.train.label.tolist()
([1.0], [0.3], [1.0])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.events import EventBatch
from pipeline.events.schema import ChainedEvents
from pipeline.features import FeatureBatch, Featurizer, stack_features, take_features
from pipeline.hashing import combine, hash_one, hash_strings
from pipeline.join.settings import JoinConfig
from pipeline.join.store import CLOSED, EMITTED, LEARNED, ExposureStore, StoredRows
from pipeline.join.weights import es_dfm_weights, fake_negative_weights
from pipeline.learners.base import StateBundle

__all__ = ["TRAIN_EARLY", "TRAIN_FINAL", "TRAIN_LABELLED", "TRAIN_POSITIVE", "Advance", "Ingested", "Joiner"]

TRAIN_LABELLED = 0  # an event that was an example as it came (weight 1)
TRAIN_FINAL = 1  # an exposure with its final label (``wait``; weight 1)
TRAIN_EARLY = 2  # an exposure learned before its window closed, with the label known by then
TRAIN_POSITIVE = 3  # the late positive duplicate of an exposure learned as a negative

#: mixed into an outcome's hashed event id for deduplication (an outcome may reuse its exposure's id)
_OUTCOME_SALT = np.uint64(hash_one("outcome", "join.dedup"))

COUNTERS = (
    "exposures",
    "outcomes",
    "attributed",
    "repeated_outcomes",
    "repeated_exposures",
    "orphans",
    "after_window",
    "closed",
    "evicted",
    "positives",
    "unlinkable",
)


@dataclass
class Ingested:
    """What :meth:`Joiner.ingest` found in a batch: ``scored`` = new exposures then labelled examples."""

    scored: EventBatch
    n_exposures: int
    outcomes: int


@dataclass
class Advance:
    """What to learn now and what became final (see the module docstring).

    ``train_kind`` holds one of the ``TRAIN_*`` codes per row of ``train``. With ``learn_scored``
    the batch's scored events (new exposures as fake negatives, then the labelled examples) are
    learned first, with the features and scores the runner already has, and ``train`` holds only
    the rest (late positives from the store). ``train`` and ``evaluated`` are the store's part
    (``train_rows``, ``evaluated_rows``: their features are kept) followed by ``labelled``, this
    batch's labelled examples (in ``train`` when the strategy learns them here rather than with the
    scored events): see :meth:`train_features` and :meth:`evaluated_features`. ``evaluated`` and
    ``predictions`` are aligned (exposure-time predictions, NaN for a learner that did not exist
    then); ``first_effect_ts`` are the event times of examples that changed the model for the first
    time in this batch, and ``first_effect_lag_ms`` how far the stream had moved on by then.
    """

    train: EventBatch
    train_kind: np.ndarray
    evaluated: EventBatch
    predictions: dict[str, np.ndarray]
    first_effect_ts: np.ndarray
    first_effect_lag_ms: np.ndarray
    learn_scored: bool = False  # learn :attr:`Ingested.scored` first, as it is (kinds in ``scored_kind``)
    scored_kind: np.ndarray | None = None
    train_rows: StoredRows | None = None
    evaluated_rows: StoredRows | None = None
    labelled: EventBatch | None = None  # this batch's labelled examples: ``evaluated`` ends with them
    labelled_in_train: bool = False  # ``train`` ends with them too

    def train_features(self, featurizer: Featurizer, scored: FeatureBatch | None) -> FeatureBatch | None:
        """:attr:`train`'s features under ``featurizer``'s statistics now (None when it is empty);
        see :meth:`_features`."""
        labelled = self.labelled if self.labelled_in_train else None
        return _features(self.train, self.train_rows, labelled, featurizer, scored)

    def evaluated_features(self, featurizer: Featurizer, scored: FeatureBatch | None) -> FeatureBatch | None:
        """:attr:`evaluated`'s features (what policies learn: final rewards), as :meth:`train_features`."""
        return _features(self.evaluated, self.evaluated_rows, self.labelled, featurizer, scored)


def _features(
    events: EventBatch,
    rows: StoredRows | None,
    labelled: EventBatch | None,
    featurizer: Featurizer,
    scored: FeatureBatch | None,
) -> FeatureBatch | None:
    """The features of ``events``: the store's ``rows`` (their kept features), then ``labelled``,
    this batch's labelled examples (the last rows of ``scored``, the batch's scored features),
    restandardised: equal to ``featurizer.transform(events)`` (tested), without hashing again."""
    if not len(events):
        return None
    parts = []
    if rows is not None and len(rows):
        parts.append(rows.features(featurizer))
    if labelled is not None and len(labelled):
        n, m = len(scored), len(labelled)
        parts.append(featurizer.restandardized(take_features(scored, np.arange(n - m, n), labelled)))
    return parts[0] if len(parts) == 1 else stack_features(parts, events)


class Joiner:
    """Joins exposures with later outcomes; see the module docstring."""

    state_key = "_join"

    def __init__(self, settings: JoinConfig, learners: Sequence[str]):
        self.settings = settings
        self.learners = list(learners)
        self.store = ExposureStore(self.learners)
        # event types for one lookup (_type_codes): the exposure types first, then the outcome types
        self._types = pa.array([*settings.exposure_types, *settings.outcome_types], pa.string())
        self._n_exposure_types = len(settings.exposure_types)
        self._window_ms = np.array([settings.window_ms_of(t) for t in settings.outcome_types], np.int64)
        self._longest_ms = round(1000 * settings.longest_window_s)
        self._elapsed_ms = round(1000 * settings.elapsed_s)
        self._link_field = "exposure_id" if settings.link == "exposure_id" else "request_id"  # an outcome's
        self.max_ts = np.iinfo(np.int64).min
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.delay_positives = 0  # closed exposures with an outcome, and those whose came after elapsed_s
        self.delay_late = 0
        self._pending = _empty_pending()
        # set by ingest, used by advance
        self._new_slots = np.zeros(0, np.int64)
        self._first_now = np.zeros(0, np.int64)
        self._labelled: EventBatch = EventBatch.empty()
        self._labelled_preds: dict[str, np.ndarray] = {}
        self._coded: tuple[EventBatch, np.ndarray] | None = None  # (a batch, its _type_codes)

    # ---------------------------------------------------------------------------- classification
    def dedup_hashes(self, events: EventBatch) -> np.ndarray:
        """Hashed event ids for deduplication (:meth:`~pipeline.dedup.Deduplicator.filter_hashes`):
        an outcome's is salted, so that it never collides with its exposure's (the same id)."""
        hashes = hash_strings(events.column("event_id"), "event_id")
        code = self._type_codes(events)
        self._coded = (events, code)  # ingest of the same batch (no duplicate in it) reuses them
        out = np.flatnonzero(code >= self._n_exposure_types)
        if len(out):
            hashes[out] = combine(hashes[out], _OUTCOME_SALT)
        return hashes

    def _type_codes(self, events: EventBatch) -> np.ndarray:
        """Each event's type as one lookup finds it: ``0 .. n-1`` the exposure types, then the
        outcome types; -1 for any other type, or none (a labelled example)."""
        code = pc.index_in(events.column("event_type"), value_set=self._types).fill_null(-1)
        return code.to_numpy(zero_copy_only=False)

    @property
    def watermark(self) -> int:
        if self.max_ts == np.iinfo(np.int64).min:
            return self.max_ts
        return int(self.max_ts) - self.settings.allowed_lateness_ms

    def _keys(self, events: EventBatch, is_o: np.ndarray) -> np.ndarray:
        if self.settings.link == "exposure_id":
            # an exposure is its own event id; an outcome names it: one namespace for both
            own = hash_strings(events.column("event_id"), "join.exposure")
            if not is_o.any():
                return own
            named = hash_strings(events.column("exposure_id"), "join.exposure")
            return np.where(is_o, named, own)
        request = events.column("request_id")
        keys = combine(
            hash_strings(request, "join.request_id"), hash_strings(events.column("item_id"), "item_id")
        )
        if request.null_count:
            # never linkable: a key of its own per event, so that such exposures do not collide
            own = combine(hash_strings(events.column("event_id"), "join.event_id"), np.uint64(1))
            keys = np.where(request.is_null().to_numpy(zero_copy_only=False), own, keys)
        return keys

    # ---------------------------------------------------------------------------------- ingest
    def ingest(self, events: EventBatch) -> Ingested:
        """Open the batch's exposures and attribute its outcomes; see the module docstring."""
        c = self.counters
        coded, self._coded = self._coded, None
        code = coded[1] if coded is not None and coded[0] is events else self._type_codes(events)
        n_x = self._n_exposure_types
        is_x = (code >= 0) & (code < n_x)
        kind = np.where(code >= n_x, code - n_x, -1)
        is_o = kind >= 0
        if len(events):
            self.max_ts = max(self.max_ts, int(events.ts.max()))
        keys = self._keys(events, is_o) if (is_x.any() or is_o.any()) else np.zeros(len(events), np.uint64)
        x = np.flatnonzero(is_x)
        exposures = events.take(x) if len(x) else EventBatch.empty()
        plain = ~(is_x | is_o)
        self._labelled = events.take(np.flatnonzero(plain)) if plain.any() else EventBatch.empty()
        self._new_slots, opened = self._open(exposures, keys[x])
        c["exposures"] += len(self._new_slots)
        o = np.flatnonzero(is_o)
        linkable = events.column(self._link_field).is_valid().to_numpy(zero_copy_only=False)[o]
        c["outcomes"] += len(o)
        c["unlinkable"] += int((~linkable).sum())
        c["orphans"] += int((~linkable).sum())
        o = o[linkable]
        new = {
            "key": keys[o],
            "ts": events.ts[o],
            "value": events.label[o],
            "window": self._window_ms[kind[o]],
        }
        self._first_now = self._attribute(new)
        scored = _concat(opened, self._labelled)
        return Ingested(scored, len(self._new_slots), int(is_o.sum()))

    def _open(self, exposures: EventBatch, keys: np.ndarray) -> tuple[np.ndarray, EventBatch]:
        if not len(exposures):
            return np.zeros(0, np.int64), exposures
        if self.settings.link == "request_item" and exposures.column("request_id").null_count:
            self.counters["unlinkable"] += int(exposures.column("request_id").null_count)
        slots, opened = self.store.open_new(exposures, keys)
        self.counters["repeated_exposures"] += len(keys) - len(slots)
        return slots, opened

    def _attribute(self, new: dict[str, np.ndarray]) -> np.ndarray:
        """Attribute new and pending outcomes; returns the slots that got their first outcome now."""
        c = self.counters
        p = self._pending
        if len(new["key"]):
            p = {k: np.concatenate([p[k], new[k]]) for k in p}
        if not len(p["key"]):
            self._pending = p
            return np.zeros(0, np.int64)
        a = self.store.arrays
        slots = self.store.lookup(p["key"])
        found = slots >= 0
        exposed_at = a["ts"][np.maximum(slots, 0)] if self.store.size else np.zeros(len(slots), np.int64)
        delay = np.where(found, p["ts"] - exposed_at, 0)
        in_window = found & (delay <= p["window"])
        c["after_window"] += int((found & ~in_window).sum())
        closed = slots == CLOSED
        c["after_window"] += int(closed.sum())
        waiting = ~found & ~closed & (p["ts"] >= self.watermark)
        c["orphans"] += int((~found & ~closed & ~waiting).sum())
        keep = np.flatnonzero(waiting)
        if len(keep) > self.settings.max_pending:
            c["orphans"] += len(keep) - self.settings.max_pending
            keep = keep[np.argsort(p["ts"][keep], kind="stable")[-self.settings.max_pending :]]
        self._pending = {k: v[keep] for k, v in p.items()}
        hit = np.flatnonzero(in_window)
        if not len(hit):
            return np.zeros(0, np.int64)
        c["attributed"] += len(hit)
        s, ts, v = slots[hit], p["ts"][hit], p["value"][hit]
        order = np.lexsort((ts, s))
        s, ts, v = s[order], ts[order], v[order]
        # runs of one slot, each in time order: reductions per run instead of unbuffered ufunc.at
        first = np.flatnonzero(np.concatenate([[True], s[1:] != s[:-1]]))
        uniq = s[first]
        had = a["n_out"][uniq] > 0
        c["repeated_outcomes"] += int(len(s) - len(uniq) + had.sum())
        rule = self.settings.label
        if rule == "first":
            a["label"][uniq[~had]] = v[first[~had]]
        elif rule == "max":
            a["label"][uniq] = np.maximum(a["label"][uniq], np.maximum.reduceat(v, first))
        else:
            a["label"][uniq] += np.add.reduceat(v, first)
        a["n_out"][uniq] += np.diff(np.append(first, len(s))).astype(np.int32)
        a["first_ts"][uniq] = np.minimum(a["first_ts"][uniq], ts[first])
        return uniq[~had]

    # ------------------------------------------------------------------------------ predictions
    def record_predictions(self, learner: str, p: np.ndarray) -> None:
        """Scores of :attr:`Ingested.scored` by ``learner``, before it learned anything of the batch."""
        j = self.learners.index(learner)
        m = len(self._new_slots)
        self.store.preds[self._new_slots, j] = p[:m]
        self._labelled_preds[learner] = np.asarray(p[m:], dtype=np.float64)

    def record_features(self, scored: FeatureBatch) -> None:
        """The features of :attr:`Ingested.scored` as the runner made them: the new exposures'
        rows are kept beside theirs in the store (a later example of them is not hashed again)."""
        if len(self._new_slots):
            self.store.attach_features(scored)

    # ---------------------------------------------------------------------------------- advance
    def advance(self) -> Advance:
        """Move the watermark; what to learn now and which exposures are final."""
        st, a, strategy = self.store, self.store.arrays, self.settings.strategy
        parts: list[tuple[np.ndarray, np.ndarray, int]] = []  # (slots, labels, kind)
        scored_first = strategy == "fake_negative"  # the new exposures are learned as they came
        first = self._first_now
        positive = first[a["label"][first] > 0]
        if strategy == "fake_negative":
            parts.append((positive, a["label"][positive], TRAIN_POSITIVE))
        elif strategy == "es_dfm":
            late = positive[(a["flags"][positive] & EMITTED) > 0]
            parts.append((late, a["label"][late], TRAIN_POSITIVE))
        elif self.settings.emit_on_first_outcome:
            now = positive[(a["flags"][positive] & EMITTED) == 0]
            parts.append((now, a["label"][now], TRAIN_FINAL))
            a["flags"][now] |= EMITTED
        if strategy == "es_dfm":
            waited = st.open_before(self.watermark - self._elapsed_ms)
            due = waited[(a["flags"][waited] & EMITTED) == 0]
            self._emit_after_wait(due, parts)
        closing = self._closing()
        if strategy == "wait":
            final = closing[(a["flags"][closing] & EMITTED) == 0]
            parts.append((final, a["label"][final], TRAIN_FINAL))
            a["flags"][final] |= EMITTED
        elif strategy == "es_dfm":  # evicted before their wait was over
            self._emit_after_wait(closing[(a["flags"][closing] & EMITTED) == 0], parts)
        slots = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
        labels = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0)
        kinds = (
            np.concatenate([np.full(len(p[0]), p[2], np.int8) for p in parts])
            if parts
            else np.zeros(0, np.int8)
        )
        n_new, n_lab = len(self._new_slots), len(self._labelled)
        scored_kind = None
        if scored_first:
            slots = np.concatenate([self._new_slots, slots])
            scored_kind = np.concatenate(
                [np.full(n_new, TRAIN_EARLY, np.int8), np.full(n_lab, TRAIN_LABELLED, np.int8)]
            )
        first_effect = slots[(a["flags"][slots] & LEARNED) == 0]
        if len(first_effect) > 1:  # (np.unique hashes first: slower at this size)
            first_effect = np.sort(first_effect)
            first_effect = first_effect[np.concatenate([[True], first_effect[1:] != first_effect[:-1]])]
        a["flags"][slots] |= LEARNED
        if scored_first:
            slots = slots[n_new:]
        # lazily (a compaction below leaves the rows readable): learners read features and labels,
        # and the features of the store's rows are kept (Advance.train_features)
        train_rows = st.rows(slots, labels)
        if scored_first:
            train = train_rows.events
        else:
            train = _concat(train_rows.events, self._labelled)
            kinds = np.concatenate([kinds, np.full(n_lab, TRAIN_LABELLED, np.int8)])
        labelled = self._labelled
        # observers mostly read times and labels; policies learn the final rewards (evaluated_features)
        evaluated_rows = st.rows(closing, a["label"][closing])
        evaluated = _concat(evaluated_rows.events, labelled)
        predictions = {
            name: np.concatenate([st.preds[closing, j], self._labelled_preds.get(name, np.zeros(n_lab))])
            for j, name in enumerate(self.learners)
        }
        fe_ts = np.concatenate([a["ts"][first_effect], self._labelled.ts])
        self._finish(closing)
        self._labelled, self._labelled_preds = EventBatch.empty(), {}
        self._new_slots = self._first_now = np.zeros(0, np.int64)
        lag = np.maximum(self.max_ts - fe_ts, 0)
        return Advance(
            train,
            kinds,
            evaluated,
            predictions,
            fe_ts,
            lag,
            scored_first,
            scored_kind,
            train_rows,
            evaluated_rows,
            labelled,
            labelled_in_train=not scored_first,
        )

    def _emit_after_wait(self, due: np.ndarray, parts: list) -> None:
        """ES-DFM's sample after the wait: the label as it was ``elapsed_s`` after the exposure.

        A batch spans some event time, so outcomes later than the wait may have arrived already;
        they are left out of the sample and learned as the late positive at once, so that the
        stream is exactly the one ES-DFM's weights assume for a wait of ``elapsed_s``.
        """
        a = self.store.arrays
        in_wait = a["first_ts"][due] <= a["ts"][due] + self._elapsed_ms
        parts.append((due, np.where(in_wait, a["label"][due], 0.0), TRAIN_EARLY))
        late = due[~in_wait & (a["label"][due] > 0)]
        parts.append((late, a["label"][late], TRAIN_POSITIVE))
        a["flags"][due] |= EMITTED

    def _closing(self) -> np.ndarray:
        """Exposures whose window the watermark has passed, plus the oldest over the bounds."""
        st, a = self.store, self.store.arrays
        due = st.open_before(self.watermark - self._longest_ms)
        over = st.live - len(due) - self.settings.max_open
        if st.nbytes > self.settings.max_open_bytes and st.size:
            per = st.nbytes / st.size
            over = max(over, st.live - len(due) - int(self.settings.max_open_bytes / per))
        if over > 0:
            live = st.open_slots()
            rest = np.setdiff1d(live, due, assume_unique=True)
            oldest = rest[np.argsort(a["ts"][rest], kind="stable")[:over]]
            self.counters["evicted"] += len(oldest)
            due = np.union1d(due, oldest)
        return due

    def _finish(self, closing: np.ndarray) -> None:
        if not len(closing):
            return
        st, a, c = self.store, self.store.arrays, self.counters
        c["closed"] += len(closing)
        pos = closing[a["n_out"][closing] > 0]
        c["positives"] += len(pos)
        self.delay_positives += len(pos)
        self.delay_late += int((a["first_ts"][pos] - a["ts"][pos] > self._elapsed_ms).sum())
        st.close(closing)
        st.compact()

    # ---------------------------------------------------------------------------------- weights
    @property
    def delayed_share(self) -> float:
        """Share of attributed outcomes that came later than ``elapsed_s`` (Beta(1, 1) prior)."""
        return (self.delay_late + 1.0) / (self.delay_positives + 2.0)

    def weights(self, kinds: np.ndarray, labels: np.ndarray, p: np.ndarray) -> np.ndarray:
        """Per-example weights of a train batch for a learner whose current scores are ``p``."""
        w = np.ones(len(kinds))
        early = (kinds == TRAIN_EARLY) | (kinds == TRAIN_POSITIVE)
        if not early.any():
            return w
        if self.settings.strategy == "fake_negative":
            if self.settings.correction == "fnc":
                return w  # FNC learns the biased stream as it is and calibrates the scores
            w[early] = fake_negative_weights(labels[early], p[early])
        elif self.settings.strategy == "es_dfm":
            w[early] = es_dfm_weights(labels[early], p[early], self.delayed_share)
        return w

    # ----------------------------------------------------------------------------------- gauges
    def gauges(self) -> dict[str, float]:
        """Open exposures, their bytes, pending outcomes and the watermark's lag behind the stream."""
        return {
            "open": float(self.store.live),
            "open_bytes": float(self.store.nbytes),
            "pending": float(len(self._pending["key"])),
            "delayed_share": self.delayed_share,
        }

    # ------------------------------------------------------------------------------------ state
    def state(self) -> StateBundle:
        rows, arrays = self.store.state()
        for k, v in self._pending.items():
            arrays[f"pending.{k}"] = v.copy()
        meta = {
            "counters": dict(self.counters),
            "max_ts": int(self.max_ts),
            "delay_positives": int(self.delay_positives),
            "delay_late": int(self.delay_late),
            "learners": list(self.learners),
        }
        return StateBundle(tables={"open": rows}, arrays=arrays, meta=meta)

    def load_state(self, bundle: StateBundle) -> None:
        meta = bundle.meta
        saved = list(meta["learners"])
        arrays = dict(bundle.arrays)
        # one column per saved learner (stated: -1 cannot be inferred when nothing is open)
        preds = np.asarray(arrays["open.preds"], dtype=np.float64).reshape(
            bundle.tables["open"].num_rows, len(saved)
        )
        # learners added since keep NaN (they were not there to score those exposures)
        mapped = np.full((len(preds), len(self.learners)), np.nan)
        for j, name in enumerate(self.learners):
            if name in saved:
                mapped[:, j] = preds[:, saved.index(name)]
        arrays["open.preds"] = mapped
        rows = bundle.tables["open"]
        rows = (
            EventBatch(rows.combine_chunks().to_batches()[0]).table
            if rows.num_rows
            else EventBatch.empty().table
        )
        self.store.load_state(pa.Table.from_batches([rows]), arrays)
        self._pending = {k: np.asarray(arrays[f"pending.{k}"]).copy() for k in _empty_pending()}
        self.counters.update({k: int(v) for k, v in meta["counters"].items() if k in self.counters})
        self.max_ts = int(meta["max_ts"])
        self.delay_positives = int(meta["delay_positives"])
        self.delay_late = int(meta["delay_late"])


def _empty_pending() -> dict[str, np.ndarray]:
    return {
        "key": np.zeros(0, np.uint64),
        "ts": np.zeros(0, np.int64),
        "value": np.zeros(0, np.float64),
        "window": np.zeros(0, np.int64),
    }


def _concat(a: EventBatch, b: EventBatch) -> EventBatch:
    if not len(b):
        return a
    if not len(a):
        return b
    return ChainedEvents([a, b])  # each column concatenated when it is read
