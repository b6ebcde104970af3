"""Tests of drift detection (pipeline.drift): statistics against independent implementations, windows,
detection delays at known drift points (the simulator's and river's synthetic streams), silence on
stationary streams, hysteresis, state round-trips through a real snapshot, metrics."""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import chi2_contingency, ks_2samp

from pipeline.config import load_config
from pipeline.drift import (
    CategoricalSignal,
    DriftMonitor,
    DriftSettings,
    Hysteresis,
    LossDriftTracker,
    NumericSignal,
    SlidingBlocks,
    cramers_v,
    excess_logloss,
    feature_values,
    jensen_shannon,
    ks,
    make_detector,
    psi,
    quantile_edges,
)
from pipeline.errors import ConfigError
from pipeline.metrics import StreamMetrics
from pipeline.runner import RawBatch, Runner
from pipeline.simulate import Drift, SimConfig, Simulator
from state.snapshot import SnapshotStore

# --------------------------------------------------------------------------- statistics


def test_psi_two_bins_matches_hand_computation():
    ref, cur = np.array([60.0, 40.0]), np.array([40.0, 60.0])
    p = (ref + 0.5) / 101.0
    q = (cur + 0.5) / 101.0
    expected = (q[0] - p[0]) * np.log(q[0] / p[0]) + (q[1] - p[1]) * np.log(q[1] / p[1])
    assert psi(ref, cur) == pytest.approx(expected, rel=1e-12)
    assert psi(ref, cur) == pytest.approx(psi(cur, ref), rel=1e-12)  # symmetric


def test_ks_on_bins_of_every_distinct_value_equals_scipy_ks():
    rng = np.random.default_rng(3)
    a, b = rng.integers(0, 12, 3000), rng.integers(2, 14, 2000)
    values = np.arange(14)
    counts_a = np.bincount(np.searchsorted(values, a), minlength=14)
    counts_b = np.bincount(np.searchsorted(values, b), minlength=14)
    assert ks(counts_a, counts_b) == pytest.approx(ks_2samp(a, b).statistic, abs=1e-12)


def test_jensen_shannon_matches_scipy_on_smoothed_proportions():
    ref, cur = np.array([10, 0, 30, 60]), np.array([25, 25, 25, 25])
    p, q = (ref + 0.5) / (ref.sum() + 2), (cur + 0.5) / (cur.sum() + 2)
    assert jensen_shannon(ref, cur) == pytest.approx(jensenshannon(p, q, base=2) ** 2, rel=1e-9)


def test_cramers_v_matches_scipy_chi2_contingency():
    ref, cur = np.array([120, 40, 40, 0]), np.array([60, 80, 30, 5])
    table = np.vstack([ref, cur])
    chi2 = chi2_contingency(table, correction=False)[0]
    assert cramers_v(ref, cur) == pytest.approx(np.sqrt(chi2 / table.sum()), rel=1e-12)


def test_quantile_edges_binary_labels_land_in_separate_bins():
    labels = np.array([0.0] * 90 + [1.0] * 10)
    edges = quantile_edges(labels, 10)
    bins = np.searchsorted(edges, labels, side="left")
    assert set(bins[labels == 0]) != set(bins[labels == 1])


# --------------------------------------------------------------------------- windows


def test_sliding_blocks_total_equals_sum_of_kept_items():
    rng = np.random.default_rng(0)
    w = SlidingBlocks(width=1, window=100, n_blocks=5)
    seen: list[float] = []
    for _ in range(40):
        x = rng.normal(size=int(rng.integers(1, 70)))
        w.push(len(x), lambda bounds, x=x: np.add.reduceat(x, bounds[:-1])[:, None])
        seen.extend(x.tolist())
        # kept: 5 closed blocks of 20 (when there are that many) plus the open block
        kept = len(seen) % 20 + min(len(seen) // 20, 5) * 20
        assert w.count == kept
        assert w.total()[0] == pytest.approx(sum(seen[len(seen) - kept :]), abs=1e-9)


@pytest.mark.parametrize(
    ("scores", "raised"),
    [
        ((0.0, 0.3, 0.3, 0.3), [False, True, False, False]),  # stays raised: one alarm
        ((0.3, 0.15, 0.3), [True, False, False]),  # between clear and raise: not re-armed
        ((0.3, 0.05, 0.3), [True, False, True]),  # fell to clear: re-armed
    ],
)
def test_hysteresis_raises_once_until_cleared(scores, raised):
    h = Hysteresis(0.2, 0.1)
    assert [h.update(s) for s in scores] == raised


# --------------------------------------------------------------------------- concept drift


def test_excess_logloss_matches_direct_formula():
    p, y, q = np.array([0.9, 0.2, 0.5]), np.array([1.0, 0.0, 1.0]), np.array([0.6, 0.3, 0.5])
    direct = -(y * np.log(p) + (1 - y) * np.log(1 - p)) + (y * np.log(q) + (1 - y) * np.log(1 - q))
    assert np.allclose(excess_logloss(p, y, q), direct)


def _bernoulli_stream(n: int, seed: int, shift_at: int | None = None, shift: float = 1.5):
    """A calibrated model on a stream whose true logit moves by ``shift`` at ``shift_at``."""
    rng = np.random.default_rng(seed)
    logit = rng.normal(-1.0, 1.0, n)
    truth = logit.copy()
    if shift_at is not None:
        truth[shift_at:] += shift
    y = (rng.random(n) < 1 / (1 + np.exp(-truth))).astype(float)
    return 1 / (1 + np.exp(-logit)), y


def _feed(tracker: LossDriftTracker, p: np.ndarray, y: np.ndarray, sizes) -> list[int]:
    out, start = [], 0
    for size in itertools.cycle(sizes):
        if start >= len(y):
            return out
        out += [ev for ev, _ in tracker.update(start, p[start : start + size], y[start : start + size])]
        start += size


@pytest.mark.parametrize("detector", ["adwin", "page_hinkley", "kswin"])
def test_loss_tracker_detects_shift_within_delay_and_not_before(detector):
    p, y = _bernoulli_stream(40_000, seed=1, shift_at=20_000)
    alarms = _feed(LossDriftTracker(DriftSettings(detector=detector, warmup_events=0)), p, y, [1000])
    assert len(alarms) == 1 and 20_000 < alarms[0] <= 22_500, alarms


@pytest.mark.parametrize("detector", ["adwin", "page_hinkley", "kswin"])
def test_loss_tracker_stationary_stream_raises_no_alarm(detector):
    for seed in range(3):
        p, y = _bernoulli_stream(100_000, seed=10 + seed)
        assert _feed(LossDriftTracker(DriftSettings(detector=detector, warmup_events=0)), p, y, [2000]) == []


def test_loss_tracker_same_alarms_whatever_the_batch_sizes():
    p, y = _bernoulli_stream(30_000, seed=2, shift_at=15_000)
    settings = DriftSettings(warmup_events=500, chunk_events=7, cooldown_events=0)
    a = _feed(LossDriftTracker(settings), p, y, [30_000])
    b = _feed(LossDriftTracker(settings), p, y, [1, 999, 37, 2048, 5])
    assert a == b and len(a) >= 1


def test_loss_tracker_falling_loss_is_no_alarm_with_direction_up():
    p, y = _bernoulli_stream(40_000, seed=4)
    worse = np.where(np.arange(len(p)) < 20_000, 1 - p, p)  # the model gets *better* at 20000
    assert _feed(LossDriftTracker(DriftSettings(warmup_events=0)), worse, y, [1000]) == []
    both = _feed(LossDriftTracker(DriftSettings(warmup_events=0, direction="both")), worse, y, [1000])
    assert len(both) >= 1 and 20_000 < both[0] <= 21_000


@pytest.mark.parametrize("detector", ["adwin", "page_hinkley", "kswin"])
def test_detector_state_round_trip_gives_same_detections(detector):
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.normal(0, 1, 1000), rng.normal(1.5, 1, 1000)])
    a = make_detector(detector, {"seed": 3} if detector == "kswin" else {})
    a.feed(x[:800])
    b = make_detector(detector, {"seed": 3} if detector == "kswin" else {})
    b.load_state(a.state())
    after = a.feed(x[800:])
    assert after and after == b.feed(x[800:])


# --------------------------------------------------------------------------- river's synthetic drift streams


@pytest.fixture(scope="module")
def agrawal_losses():
    """A Hoeffding tree's probabilities on Agrawal function 0 -> 2 at event 4000, and on a stationary stream."""
    from river import tree
    from river.datasets import synth

    def run(stream):
        model, probs, labels = tree.HoeffdingTreeClassifier(), [], []
        for x, label in itertools.islice(stream, 8000):
            probs.append(model.predict_proba_one(x).get(1, 0.0))
            labels.append(float(label))
            model.learn_one(x, label)
        return np.array(probs), np.array(labels)

    # width 50: river's ConceptDriftStream overflows math.exp for widths below position / 177
    drifting = synth.ConceptDriftStream(
        stream=synth.Agrawal(classification_function=0, seed=1),
        drift_stream=synth.Agrawal(classification_function=2, seed=1),
        position=4000,
        width=50,
        seed=1,
    )
    return run(drifting), run(synth.Agrawal(classification_function=0, seed=11))


@pytest.mark.parametrize(("detector", "chunk"), [("adwin", 0), ("page_hinkley", 0), ("kswin", 20)])
def test_river_agrawal_concept_drift_detected_within_delay(agrawal_losses, detector, chunk):
    (p, y), (ps, ys) = agrawal_losses
    settings = DriftSettings(detector=detector, chunk_events=chunk, warmup_events=1000)
    alarms = _feed(LossDriftTracker(settings), p, y, [500])
    # the drift fades in over ~2 x width events around position 4000
    assert len(alarms) == 1 and 3900 <= alarms[0] <= 5000, alarms
    assert _feed(LossDriftTracker(settings), ps, ys, [500]) == []


# --------------------------------------------------------------------------- the simulator's known drift points

FEATURES = ("price", "device", "category", "hour", "position")
WORLD = {"preference_scale": 2.0, "popularity_scale": 1.2}  # makes both drifts visible to a linear learner


def _simulate(seed: int, drifts: tuple[Drift, ...], n: int = 60_000) -> tuple[DriftMonitor, Simulator]:
    sim = Simulator(SimConfig(seed=seed, drifts=drifts, **WORLD))
    monitor = DriftMonitor(DriftSettings(features=FEATURES))
    runner = Runner.from_config(load_config(), observers=[monitor])
    for i, batch in enumerate(sim.batches(n, chunk_size=2000)):
        runner.process(RawBatch(arrow=batch, positions={"sim": i}))
    return monitor, sim


@pytest.mark.parametrize("seed", [0, 1])
def test_simulator_drift_points_raise_alarms_within_bounded_delay(seed):
    monitor, sim = _simulate(seed, (Drift(20_000, "abrupt"), Drift(40_000, "popularity")))
    alarms = list(monitor.alarms)
    loss = [a["events"] for a in alarms if a["signal"] == "loss:ftrl"]
    for point in sim.drift_points:  # concept drift: the learner's loss, within 2,500 events
        assert any(point < ev <= point + 2500 for ev in loss), (point, alarms)
    for a in alarms:  # and nothing anywhere else: every alarm follows a drift point closely
        assert any(point < a["events"] <= point + 6000 for point in sim.drift_points), a
    # the abrupt change of tastes lowers the stale logging policy's click rate: label drift too
    assert any(a["signal"] == "label" and 20_000 < a["events"] <= 24_000 for a in alarms), alarms


def test_simulator_stationary_stream_raises_no_alarm():
    monitor, _ = _simulate(2, ())
    assert list(monitor.alarms) == []
    assert {s for s, _ in monitor.scores()} >= {"loss:ftrl", "prediction:ftrl", "label"} | {
        f"feature:{f}" for f in FEATURES
    }


# --------------------------------------------------------------------------- data drift


def _numeric_alarms(settings: DriftSettings, x: np.ndarray, batch: int = 500) -> list[tuple[int, str]]:
    sig, out = NumericSignal(settings), []
    for lo in range(0, len(x), batch):
        out += [(lo + batch, m) for m, _ in sig.update(x[lo : lo + batch])]
    return out


@pytest.mark.parametrize("reference", ["sliding", "fixed"])
def test_numeric_shift_detected_by_psi_and_ks_within_one_window(reference):
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, 20_000), rng.normal(0.8, 1, 10_000)])
    alarms = _numeric_alarms(DriftSettings(reference=reference), x)
    assert sorted(m for _, m in alarms) == ["ks", "psi"]
    assert all(20_000 < at <= 22_000 for at, _ in alarms), alarms


def test_numeric_values_beyond_the_reference_range_are_counted():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.uniform(0, 1, 8000), rng.uniform(5, 6, 2000)])  # all above the reference's max
    assert {m for _, m in _numeric_alarms(DriftSettings(), x)} == {"psi", "ks"}


@pytest.mark.parametrize("method", ["js", "chi2"])
def test_categorical_shift_to_unseen_categories_detected(method):
    rng = np.random.default_rng(2)
    before = rng.choice(["a", "b", "c", "d"], size=12_000, p=[0.4, 0.3, 0.2, 0.1])
    after = rng.choice(["a", "x", "y"], size=6000, p=[0.4, 0.3, 0.3])  # x, y: never seen, both "other"
    sig = CategoricalSignal(DriftSettings(categorical_method=method, top_k=3))
    alarms = []
    for lo, chunk in enumerate(np.split(np.concatenate([before, after]), 36)):
        alarms += [(lo + 1) * 500 for _ in sig.update(pa.array(chunk))]
    assert len(alarms) == 1 and 12_000 < alarms[0] <= 14_000, alarms
    assert sig.categories == ["a", "b", "c"]


@pytest.mark.parametrize("seed", range(3))
def test_stationary_data_signals_raise_no_alarm(seed):
    rng = np.random.default_rng(seed)
    assert _numeric_alarms(DriftSettings(), rng.lognormal(0, 1, 200_000), batch=2000) == []
    assert _numeric_alarms(DriftSettings(), (rng.random(200_000) < 0.05).astype(float), batch=2000) == []
    sig = CategoricalSignal(DriftSettings(top_k=5))
    cats = rng.choice([f"c{i}" for i in range(30)], size=200_000, p=np.full(30, 1 / 30))
    assert [a for chunk in np.split(cats, 100) for a in sig.update(pa.array(chunk))] == []


def test_sliding_reference_alarm_clears_and_rearms_for_a_second_shift():
    rng = np.random.default_rng(4)
    x = np.concatenate([rng.normal(0, 1, 15_000), rng.normal(1, 1, 15_000), rng.normal(2, 1, 15_000)])
    alarms = [at for at, m in _numeric_alarms(DriftSettings(), x) if m == "psi"]
    assert len(alarms) == 2 and 15_000 < alarms[0] <= 17_000 and 30_000 < alarms[1] <= 32_000, alarms


def test_fixed_reference_rebaselines_after_persistent_alarm():
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.normal(0, 1, 15_000), rng.normal(1, 1, 25_000), rng.normal(2, 1, 15_000)])
    settings = DriftSettings(reference="fixed", rebaseline_events=5000)
    alarms = [at for at, m in _numeric_alarms(settings, x) if m == "psi"]
    assert len(alarms) == 2 and 15_000 < alarms[0] <= 17_000 and 40_000 < alarms[1] <= 42_000, alarms


def test_data_signal_memory_is_bounded_by_windows_not_stream_length():
    rng = np.random.default_rng(6)
    sizes = []
    for n in (20_000, 200_000):
        sig = NumericSignal(DriftSettings())
        for chunk in np.split(rng.normal(size=n), n // 2000):
            sig.update(chunk)
        sizes.append(sig.state().nbytes())
    assert sizes[0] == sizes[1] < 10_000


# --------------------------------------------------------------------------- the monitor


def _events(n: int, seed: int):
    sim = Simulator(SimConfig(seed=seed, n_users=300, n_items=60))
    return list(sim.batches(n, chunk_size=1000))


def test_feature_values_match_the_events_feature_objects():
    batch = _events(1000, 0)[0]
    runner = Runner.from_config(load_config())
    events = runner.process(RawBatch(arrow=batch, positions={"sim": 1})).events
    rows = batch.to_pylist()
    kind, price = feature_values(events, "price")
    assert kind == "numeric" and np.allclose(price, [r["features"]["price"] for r in rows])
    kind, device = feature_values(events, "device")
    assert kind == "categorical" and device.to_pylist() == [r["features"]["device"] for r in rows]
    kind, pos = feature_values(events, "position")
    assert kind == "numeric" and pos.tolist() == [float(r["position"]) for r in rows]
    assert feature_values(events, "no_such_feature") is None


def _drifting_monitor(metrics=None, **settings) -> tuple[DriftMonitor, list[tuple]]:
    rng = np.random.default_rng(7)
    batches = []
    for start in range(0, 30_000, 1000):
        ctr = 0.2 if start < 15_000 else 0.5
        y = (rng.random(1000) < ctr).astype(float)
        price = rng.lognormal(2.0 if start < 15_000 else 2.6, 0.5, 1000)
        dev = pa.array(rng.choice(["ios", "web"], 1000, p=[0.7, 0.3] if start < 20_000 else [0.2, 0.8]))
        feats = {"price": ("numeric", price), "device": ("categorical", dev)}
        batches.append((start, np.arange(start, start + 1000) * 10, y, {"m": np.full(1000, 0.2)}, feats))
    defaults = {"warmup_events": 1000, "reference_events": 3000}
    return DriftMonitor(DriftSettings(**(defaults | settings)), metrics), batches


def test_monitor_alarm_rows_name_signal_detector_and_time():
    monitor, batches = _drifting_monitor()
    for b in batches:
        monitor.update(*b)
    rows = monitor.take_events()
    assert monitor.take_events() == [] and len(monitor.alarms) == len(rows)
    got = {(r["signal"], r["detector"]) for r in rows}
    assert got == {
        ("loss:m", "adwin"),
        ("label", "psi"),
        ("label", "ks"),
        ("feature:price", "psi"),
        ("feature:price", "ks"),
        ("feature:device", "js"),
    }
    for r in rows:
        assert set(r) == {"ts_ms", "events", "signal", "detector", "score"}
        assert r["ts_ms"] <= (r["events"] - 1) * 10  # the event time of (or before) the alarm's event
        start = 20_000 if r["signal"] == "feature:device" else 15_000
        assert start < r["events"] <= start + 3000, r


def test_monitor_state_round_trip_through_a_snapshot_continues_identically(tmp_path):
    first, batches = _drifting_monitor()
    for b in batches[:17]:  # stop inside the reference of some signals and after the drift of others
        first.update(*b)
    store = SnapshotStore(tmp_path)
    store.prepare()
    store.write(
        {"_drift": first.state()},
        positions={},
        events_applied=first.events,
        config_hash="h",
        drift_events=first.take_events(),
    )
    manifest, bundles = store.read(store.seqs()[-1])
    second, _ = _drifting_monitor()
    second.load_state(bundles["_drift"])
    for b in batches[17:]:
        assert first.update(*b) == second.update(*b)
    assert first.scores() == second.scores()
    saved = pa.parquet.read_table(tmp_path / "snapshots" / f"{manifest['seq']:08d}" / "drift_events.parquet")
    assert saved.num_rows >= 1 and set(saved.column_names) >= {
        "ts_ms",
        "events",
        "signal",
        "detector",
        "score",
    }


def test_monitor_metrics_series_exist_from_first_batch_and_count_alarms():
    metrics = StreamMetrics()
    monitor, batches = _drifting_monitor(metrics)
    monitor.update(*batches[0])
    text = metrics.exposition().decode()
    assert 'streamlearn_drift_detected_total{detector="adwin",signal="loss:m"} 0.0' in text
    for b in batches[1:]:
        monitor.update(*b)
    value = metrics.registry.get_sample_value
    n_label_ks = sum(1 for a in monitor.alarms if (a["signal"], a["detector"]) == ("label", "ks"))
    assert n_label_ks >= 1
    assert value("streamlearn_drift_detected_total", {"signal": "label", "detector": "ks"}) == n_label_ks
    for (signal, method), score in monitor.scores().items():
        assert value("streamlearn_drift_score", {"signal": signal, "method": method}) == score


def test_monitor_as_runner_observer_sees_every_learner():
    metrics = StreamMetrics()
    config = load_config(overrides={"learners": ["ftrl", "river:linear_model.LogisticRegression"]})
    monitor = DriftMonitor(
        DriftSettings(features=("device",), warmup_events=0, reference_events=500), metrics
    )
    runner = Runner.from_config(config, observers=[monitor])
    for i, batch in enumerate(_events(3000, 1)):
        runner.process(RawBatch(arrow=batch, positions={"sim": i}))
    signals = {s for s, _ in monitor.scores()}
    assert {"loss:ftrl", "loss:river:linear_model.LogisticRegression", "feature:device"} <= signals
    assert monitor.events == runner.counters["applied"] == 3000


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"detector": "ddm"}, "drift.detector"),
        ({"direction": "down"}, "drift.direction"),
        ({"numeric_methods": ("psi", "wasserstein")}, "drift.numeric_methods"),
        ({"categorical_method": "psi"}, "drift.categorical_method"),
        ({"window_events": 5, "window_blocks": 10}, "drift.window_events"),
        ({"thresholds": {"psi": [0.1, 0.2]}}, "drift.thresholds.psi"),
        ({"thresholds": {"auc": [0.2, 0.1]}}, "drift.thresholds.auc"),
        ({"reference": "rolling"}, "drift.reference"),
    ],
)
def test_settings_reject_bad_values_naming_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        DriftSettings(**kwargs)


def test_unknown_detector_params_name_the_detector():
    with pytest.raises(ValueError, match="detector_params for adwin"):
        make_detector("adwin", {"sensitivity": 3})
