"""ReLoop2 error memory: hand-computed reads and writes, the wrapper's contract with its base, state, bounds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.errors import ConfigError
from pipeline.events import EventRules, decode_json
from pipeline.features import FeatureBatch, FeatureSpec, Featurizer
from pipeline.hashing import combine
from pipeline.learners.base import StateBundle
from pipeline.learners.error_memory import (
    ErrorMemory,
    ErrorMemoryLearner,
    KeyCenter,
    SimHash,
    hashed_keys,
    item_keys,
)
from pipeline.learners.error_memory.keys import (
    _item_multipliers,
    _multiplier,
    field_hashes,
    one_thread_matmul,
)
from pipeline.learners.ftrl import FTRL
from pipeline.learners.registry import build_learner
from pipeline.metrics import METRIC_NAMES
from state.snapshot import SnapshotStore


def _stream(n_batches=6, size=80, seed=0, users=12, items=6):
    """Feature batches of a small stream whose click rate depends on user and item."""
    rng = np.random.default_rng(seed)
    featurizer = Featurizer(FeatureSpec(standardize=False))
    out = []
    for b in range(n_batches):
        u = rng.integers(users, size=size)
        it = rng.integers(items, size=size)
        p = 1 / (1 + np.exp(-(0.8 * (u % 3 - 1) + 0.6 * (it % 2) - 0.3)))
        y = (rng.random(size) < p).astype(int)
        rows = [
            b'{"event_id":"e%d_%d","ts":%d,"user_id":"u%d","item_id":"i%d","label":%d,"features":{"d":"x%d"}}'
            % (b, i, b * size + i, u[i], it[i], y[i], i % 3)
            for i in range(size)
        ]
        events, dead = decode_json(rows, EventRules())
        assert not dead
        out.append(featurizer.transform_and_update(events))
    return out


def _filled_memory(**kw) -> ErrorMemory:
    mem = ErrorMemory(bits=2, tables=2, **kw)
    mem.write(
        np.array([[0, 1], [0, 1], [0, 2]]),
        labels=np.array([1.0, 0.0, 1.0]),
        y_base=np.array([0.5, 0.25, 0.5]),
    )
    return mem


# ------------------------------------------------------------------------------ write


def test_write_counts_and_sums_per_table_match_hand_computation():
    mem = _filled_memory()
    # table 0: all three events in bucket 0; table 1: two in bucket 1, one in bucket 2
    np.testing.assert_array_equal(mem.count, [[3, 0, 0, 0], [0, 2, 1, 0]])
    np.testing.assert_array_equal(mem.sum_y, [[2, 0, 0, 0], [0, 1, 1, 0]])
    np.testing.assert_array_equal(mem.sum_ybase, [[1.25, 0, 0, 0], [0, 0.75, 0.5, 0]])
    assert mem.entries() == 3


def test_write_with_decay_scales_old_sums_before_adding():
    mem = _filled_memory(decay=0.5)  # the first write decays an empty memory: no effect
    mem.write(np.array([[0, 3]]), labels=np.array([1.0]), y_base=np.array([0.25]))
    np.testing.assert_array_equal(mem.count, [[2.5, 0, 0, 0], [0, 1, 0.5, 1]])
    np.testing.assert_array_equal(mem.sum_y, [[2, 0, 0, 0], [0, 0.5, 0.5, 1]])
    np.testing.assert_array_equal(mem.sum_ybase, [[0.875, 0, 0, 0], [0, 0.375, 0.25, 0.25]])


@pytest.mark.parametrize("n_events", [3, 5000])  # sparse (unique) and dense (bincount) update paths
def test_write_matches_per_event_reference(n_events):
    rng = np.random.default_rng(n_events)
    mem = ErrorMemory(bits=6, tables=3, decay=0.9)
    ref = np.zeros((3, 3, 64))
    for _ in range(3):
        buckets = rng.integers(64, size=(n_events, 3))
        y, yb = rng.random(n_events), rng.random(n_events)
        mem.write(buckets, y, yb)
        ref *= 0.9
        for i in range(n_events):
            for k in range(3):
                ref[:, k, buckets[i, k]] += (1.0, y[i], yb[i])
    np.testing.assert_allclose(mem.count, ref[0], rtol=1e-12)
    np.testing.assert_allclose(mem.sum_y, ref[1], rtol=1e-12)
    np.testing.assert_allclose(mem.sum_ybase, ref[2], rtol=1e-12)


# ------------------------------------------------------------------------------ read


def test_read_two_live_tables_matches_hand_computation():
    mem = _filled_memory(tau=0.5, lam=0.8, gamma=0.25)
    pred, err = mem.read(np.array([[0, 1]]), y_base=np.array([0.5]))
    # a = softmax(log(3, 2) / 0.5) = (9, 4) / 13; ȳ = 9/13·2/3 + 4/13·1/2 = 8/13
    # ȳ_base = 9/13·1.25/3 + 4/13·0.375 = 5.25/13; y_err = 0.25(8/13 − 0.5) + 0.75(8/13 − 5.25/13) = 0.1875
    assert err[0] == pytest.approx(0.1875, abs=1e-15)
    assert pred[0] == pytest.approx(0.5 + 0.8 * 0.1875, abs=1e-15)


def test_read_weights_are_a_softmax_of_log_counts_over_tau():
    mem = _filled_memory(tau=2.0, lam=1.0, gamma=1.0)
    pred, _ = mem.read(np.array([[0, 2]]), y_base=np.array([0.3]))
    logits = np.array([math.log(3), math.log(1)]) / 2.0
    a = np.exp(logits) / np.exp(logits).sum()
    # γ = λ = 1: the prediction is the weighted label mean ȳ itself
    assert pred[0] == pytest.approx(a[0] * 2 / 3 + a[1] * 1.0, abs=1e-15)


@pytest.mark.parametrize("z", [0.5, 1.0])
def test_confidence_gate_shrinks_the_error_by_its_standard_error(z):
    mem = _filled_memory(lam=1.0, gamma=0.0, confidence=z)
    _, err = mem.read(np.array([[0, 1]]), y_base=np.array([0.5]))
    # tables: (count 3, Σy 2, Σy_base 1.25) and (2, 1, 0.75); τ = 1 weights a = (3/5, 2/5)
    y_mem, y_err = 3 / 5, 3 / 5 - 2 / 5
    n = 3 / 5 * 3 + 2 / 5 * 2  # the a-weighted support
    p = (y_mem * n + 0.5) / (n + 1)
    gate = max(0.0, 1 - z**2 * p * (1 - p) / n / y_err**2)
    assert err[0] == pytest.approx(y_err * gate, abs=1e-15)
    assert (0 < gate < 1) if z == 0.5 else gate == 0.0


def test_confidence_gate_uses_the_softmax_weights_when_tau_is_not_one():
    mem = _filled_memory(tau=0.5, lam=1.0, gamma=0.0, confidence=0.3)
    _, err = mem.read(np.array([[0, 1]]), y_base=np.array([0.5]))
    a = np.array([3.0, 2.0]) ** 2 / (3.0**2 + 2.0**2)  # softmax(log c / 0.5) = c² / Σ c²
    y_mem = a[0] * 2 / 3 + a[1] * 1 / 2
    y_err = y_mem - (a[0] * 1.25 / 3 + a[1] * 0.75 / 2)
    n = a[0] * 3 + a[1] * 2
    p = (y_mem * n + 0.5) / (n + 1)
    gate = max(0.0, 1 - 0.09 * p * (1 - p) / n / y_err**2)
    assert 0 < gate < 1 and err[0] == pytest.approx(y_err * gate, abs=1e-14)


def test_decay_over_many_batches_matches_the_reference_across_the_scale_folds():
    rng = np.random.default_rng(3)
    mem = ErrorMemory(bits=3, tables=2, decay=0.25, lam=1.0)  # 0.25**250 < 1e-150: folds on the way
    ref = np.zeros((3, 2, 8))
    for _ in range(600):
        buckets = rng.integers(8, size=(4, 2))
        y, yb = rng.random(4), rng.random(4)
        if ref[0].any():
            ref *= 0.25
        mem.write(buckets, y, yb)
        for i in range(4):
            for k in range(2):
                ref[:, k, buckets[i, k]] += (1.0, y[i], yb[i])
    assert 0.0 < mem._scale < 1.0  # some decay is pending: the properties apply it
    np.testing.assert_allclose(mem.count, ref[0], rtol=1e-9)
    np.testing.assert_allclose(mem.sum_y, ref[1], rtol=1e-9)
    pred, _ = mem.read(np.array([[1, 2]]), np.array([0.5]))
    slots = [(0, 1), (1, 2)]
    want = 0.5 + sum(ref[1][s] for s in slots) / sum(ref[0][s] for s in slots)
    want -= sum(ref[2][s] for s in slots) / sum(ref[0][s] for s in slots)
    assert pred[0] == pytest.approx(np.clip(want, 0, 1), abs=1e-9)


def test_read_empty_buckets_contribute_nothing():
    mem = _filled_memory(lam=1.0, gamma=0.0)
    pred, err = mem.read(np.array([[3, 2], [3, 3]]), y_base=np.array([0.4, 0.4]))
    # row 0: only table 1's bucket 2 is live (ȳ = 1, ȳ_base = 0.5); row 1: nothing is live
    np.testing.assert_array_equal(err, [0.5, 0.0])
    np.testing.assert_array_equal(pred, [0.9, 0.4])


def test_read_buckets_at_or_below_min_count_are_empty():
    mem = _filled_memory(lam=1.0, gamma=0.0, min_count=1.0)
    _, err = mem.read(np.array([[3, 2], [3, 1]]), y_base=np.array([0.4, 0.4]))
    assert err[0] == 0.0 and err[1] == pytest.approx(0.5 - 0.375)


def test_read_empty_memory_returns_base_predictions():
    mem = ErrorMemory(bits=4, tables=3, lam=1.0)
    y_base = np.array([0.1, 0.7, 0.0, 1.0])
    pred, err = mem.read(np.zeros((4, 3), dtype=np.int64), y_base)
    np.testing.assert_array_equal(pred, y_base)
    np.testing.assert_array_equal(err, np.zeros(4))


def test_read_clips_compensated_predictions_to_unit_interval():
    mem = _filled_memory(lam=1.0, gamma=1.0)
    pred, _ = mem.read(np.array([[3, 2], [0, 0]]), y_base=np.array([0.0, 0.0]))
    assert pred[0] == 1.0 and 0 < pred[1] < 1
    mem2 = ErrorMemory(bits=1, tables=1, lam=1.0, gamma=0.0)
    mem2.write(np.array([[0]]), np.array([0.0]), np.array([0.9]))
    assert mem2.read(np.array([[0]]), np.array([0.2]))[0][0] == 0.0  # 0.2 + (0 − 0.9) clipped


def test_read_rejects_bucket_ids_out_of_range():
    with pytest.raises(ValueError, match="bucket ids"):
        ErrorMemory(bits=2, tables=1).read(np.array([[4]]), np.array([0.5]))


# ------------------------------------------------------------------------------ keys


def test_hashed_keys_match_per_feature_count_sketch():
    fb = _stream(1, size=5)[0]
    got = hashed_keys(fb, key_dim=7, seed=3)
    want = np.zeros((5, 7))
    mult, mask = int(_multiplier(3)), (1 << 64) - 1
    assert mult % 2 == 1
    for r in range(5):
        for j in range(fb.indptr[r], fb.indptr[r + 1]):
            cell = ((((int(fb.keys[j]) * mult) & mask) >> 32) * 14) >> 32
            want[r, cell // 2] += (-1.0 if cell % 2 else 1.0) * float(fb.values[j])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_simhash_buckets_follow_the_sign_of_each_projection():
    lsh = SimHash(dim=5, bits=6, tables=4, seed=1)
    x = np.random.default_rng(0).standard_normal((300, 5))
    ids = lsh.buckets(x)
    assert ids.shape == (300, 4) and ids.min() >= 0 and ids.max() < 64
    np.testing.assert_array_equal(lsh.buckets(3.0 * x), ids)  # scale-invariant
    np.testing.assert_array_equal(lsh.buckets(-x), 63 - ids)  # opposite side of every hyperplane
    np.testing.assert_array_equal(SimHash(5, 6, 4, seed=1).buckets(x), ids)  # seeded
    assert (SimHash(5, 6, 4, seed=2).buckets(x) != ids).any()


# ------------------------------------------------------------------------------ the wrapper


def _run(model, batches):
    preds = []
    for fb in batches:
        p = model.predict(fb)
        model.learn(fb, p)
        preds.append(p)
    return np.concatenate(preds)


def test_lambda_zero_reproduces_the_base_learner_exactly():
    batches = _stream()
    base = FTRL(bits=14, alpha=0.2)
    wrapped = ErrorMemoryLearner("ftrl", {"bits": 14, "alpha": 0.2}, bits=4, tables=4, lam=0.0)
    np.testing.assert_array_equal(_run(wrapped, batches), _run(base, batches), strict=True)
    np.testing.assert_array_equal(wrapped.state().arrays["base.z"], base.state().arrays["z"])


def test_base_learns_from_its_own_predictions_not_compensated_ones():
    batches = _stream()
    base = FTRL(bits=14, alpha=0.2)
    wrapped = ErrorMemoryLearner("ftrl", {"bits": 14, "alpha": 0.2}, bits=4, tables=4, lam=1.0, gamma=1.0)
    served = _run(wrapped, batches)
    plain = _run(base, batches)
    assert np.abs(served - plain).max() > 0.05  # the memory did change the served scores
    for k in ("z", "n"):
        np.testing.assert_array_equal(wrapped.state().arrays[f"base.{k}"], base.state().arrays[k])


def test_predict_compensates_with_the_memory_read_of_the_served_base_prediction():
    batches = _stream()
    model = ErrorMemoryLearner("ftrl", {"bits": 14}, bits=5, tables=3, tau=0.7, lam=0.6, gamma=0.3)
    _run(model, batches[:-1])
    y_base, y = model.predict_with_base(batches[-1])
    np.testing.assert_array_equal(y_base, model.base_learner.predict(batches[-1]))
    want, _ = model.memory.read(model.buckets(batches[-1]), y_base)
    np.testing.assert_array_equal(y, want)
    assert model.gauges()[1][2] == pytest.approx(np.abs(y - y_base).mean())


def test_learn_on_a_batch_not_just_predicted_writes_the_current_base_prediction():
    a, b = _stream(2)
    model = ErrorMemoryLearner("ftrl", {"bits": 14}, bits=4, tables=2)
    model.predict(a)
    y_base_b = model.base_learner.predict(b)
    model.learn(b, np.zeros(len(b)))
    np.testing.assert_allclose(model.memory.sum_ybase.sum(axis=1), [y_base_b.sum()] * 2, rtol=1e-12)


def test_replace_base_empties_the_memory_and_uses_the_new_representation():
    class RepresentedFTRL(FTRL):
        def representation(self, batch):
            return np.column_stack([batch.user_hash % 7, batch.item_hash % 5]).astype(float) - 3.0

    batches = _stream(3)
    model = ErrorMemoryLearner("ftrl", {"bits": 14}, bits=4, tables=2)
    _run(model, batches)
    assert model.memory.entries() > 0
    model.replace_base(RepresentedFTRL(bits=14))
    assert model.memory.entries() == 0
    np.testing.assert_array_equal(model.keys(batches[0]), model.base_learner.representation(batches[0]))
    _run(model, batches)
    assert model.state().meta["key_dim"] == 2


def test_snapshot_round_trip_restores_memory_and_base_exactly(tmp_path):
    batches = _stream()
    model = ErrorMemoryLearner("ftrl", {"bits": 14}, bits=5, tables=4, lam=0.7, decay=0.9, seed=4)
    _run(model, batches[:-1])
    store = SnapshotStore(tmp_path)
    store.prepare()
    store.write({model.name: model.state()}, positions={}, events_applied=0, config_hash="t")
    _, bundles = store.latest_valid()
    restored = ErrorMemoryLearner("ftrl", {"bits": 14}, bits=5, tables=4, lam=0.7, decay=0.9, seed=4)
    restored.load_state(bundles[model.name])
    assert bundles[model.name].arrays["count"].shape == (4, 32)
    np.testing.assert_array_equal(restored.predict(batches[-1]), model.predict(batches[-1]), strict=True)
    np.testing.assert_array_equal(restored.memory.count, model.memory.count)


@pytest.mark.parametrize(("key", "value"), [("seed", 5), ("bits", 6), ("tables", 3)])
def test_load_state_from_a_differently_configured_memory_fails_naming_the_key(key, value):
    params = {"base": "ftrl", "base_params": {"bits": 14}, "bits": 5, "tables": 4, "seed": 4}
    bundle = ErrorMemoryLearner(**params).state()
    with pytest.raises(ValueError, match=key):
        ErrorMemoryLearner(**{**params, key: value}).load_state(bundle)


def test_memory_size_stays_bounded_over_ten_million_writes():
    mem = ErrorMemory(bits=10, tables=8, decay=1.0)
    nbytes = sum(a.nbytes for a in mem.arrays().values())
    rng = np.random.default_rng(0)
    n, total = 500_000, 0
    for _ in range(20):
        mem.write(rng.integers(1024, size=(n, 8)), rng.random(n) < 0.3, rng.random(n))
        total += n
    assert total == 10_000_000
    assert sum(a.nbytes for a in mem.arrays().values()) == nbytes == 3 * 8 * 1024 * 8 + 8  # + scale
    np.testing.assert_array_equal(mem.count.sum(axis=1), [float(total)] * 8)


def test_learner_state_size_does_not_grow_with_the_stream():
    batches = _stream(8)
    model = ErrorMemoryLearner("ftrl", {"bits": 12}, bits=6, tables=4)
    _run(model, batches[:1])
    first = model.state().nbytes()
    _run(model, batches[1:] * 3)
    assert model.state().nbytes() == first


# ------------------------------------------------------------------------------ configuration


def test_registry_builds_error_memory_with_descriptive_default_name():
    model = build_learner("error_memory", params={"base": "ftrl", "base_params": {"bits": 12}, "bits": 6})
    assert isinstance(model, ErrorMemoryLearner) and model.name == "error_memory(ftrl)"
    assert build_learner("error_memory", name="em", params={}).name == "em"
    assert isinstance(model.clone(), ErrorMemoryLearner) and model.clone().memory.entries() == 0


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("bits", 0),
        ("tables", 0),
        ("tau", 0.0),
        ("lam", 1.5),
        ("gamma", -0.1),
        ("decay", 0.0),
        ("min_count", -1.0),
        ("key_dim", 0),
        ("key_fields", {"item_id": -1.0}),
        ("key_fields", {"user_id::category": 1.0}),
        ("key_fields", ["item_id"]),
        ("confidence", -1.0),
        ("seed", -1),
        ("base", "error_memory"),
    ],
)
def test_invalid_configuration_is_rejected_naming_the_parameter(key, value):
    with pytest.raises(ConfigError, match=key):
        build_learner("error_memory", params={key: value})


def test_gauges_report_live_buckets_under_defined_metric_names():
    model = ErrorMemoryLearner("ftrl", {"bits": 12}, bits=4, tables=2)
    _run(model, _stream(2))
    gauges = {name: (labels, value) for name, labels, value in model.gauges()}
    assert set(gauges) <= METRIC_NAMES
    labels, entries = gauges["streamlearn_error_memory_entries"]
    assert labels == {"learner": "error_memory(ftrl)"}
    assert entries == np.count_nonzero(model.memory.count) > 0


def test_key_center_subtracts_the_decayed_running_mean_of_earlier_batches():
    center = KeyCenter()
    first = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    np.testing.assert_array_equal(center.apply(first), first)  # nothing seen yet
    center.update(first, decay=0.5)
    center.update(np.array([[5.0, 0.0]], np.float32), decay=0.5)
    # totals (4, 6)·0.5 + (5, 0) = (7, 3) over weight 2·0.5 + 1 = 2: mean (3.5, 1.5)
    np.testing.assert_allclose(center.apply(np.zeros((1, 2), np.float32)), [[-3.5, -1.5]])


def test_remember_writes_a_served_batch_without_training_the_base():
    a = _stream(1)[0]
    model = ErrorMemoryLearner("ftrl", {"bits": 14}, bits=4, tables=2, decay=1.0)
    served = model.serve(a)
    before = model.base_learner.state().arrays["z"].copy()
    model.remember(a, served)
    np.testing.assert_array_equal(model.base_learner.state().arrays["z"], before)
    np.testing.assert_array_equal(model.memory.count.sum(axis=1), [len(a)] * 2)
    np.testing.assert_allclose(model.memory.sum_y.sum(axis=1), [a.labels.sum()] * 2)


def test_serve_takes_score_and_key_from_one_call_when_the_base_offers_it():
    class OnePassFTRL(FTRL):
        def predict(self, batch):
            raise AssertionError("the wrapper should not need a second pass")

        def representation(self, batch):
            raise AssertionError("the wrapper should not need a second pass")

        def predict_with_representation(self, batch):
            return np.full(len(batch), 0.25), np.column_stack(
                [batch.user_hash % 5, batch.item_hash % 3]
            ) - 2.0

    fb = _stream(1)[0]
    model = ErrorMemoryLearner("ftrl", {"bits": 14}, bits=4, tables=2)
    model.replace_base(OnePassFTRL(bits=14))
    served = model.serve(fb)
    np.testing.assert_array_equal(served.y_base, np.full(len(fb), 0.25))
    assert served.keys.shape == (len(fb), 2) and served.slots.shape == (2, len(fb))


@pytest.mark.parametrize("n", [1, 255, 256, 257, 3001])
def test_one_thread_matmul_equals_the_plain_product_for_any_row_count(n):
    rng = np.random.default_rng(n)
    a = rng.standard_normal((n, 32)).astype(np.float32)
    b = rng.standard_normal((32, 32)).astype(np.float32)  # 256 rows per stacked product
    np.testing.assert_allclose(one_thread_matmul(a, b), a @ b, rtol=1e-5, atol=1e-5)


def test_empty_batch_is_scored_and_learned_without_touching_the_memory():
    model = ErrorMemoryLearner("ftrl", {"bits": 12}, bits=4, tables=2)
    _run(model, _stream(1))
    before = model.memory.count.copy()
    empty = Featurizer().transform(decode_json([], EventRules())[0])
    p = model.predict(empty)
    model.learn(empty, p)
    assert p.shape == (0,) and p.dtype == np.float64
    np.testing.assert_array_equal(model.memory.count, before)


def test_item_keys_are_a_fixed_sign_vector_per_item_and_seed():
    items = np.array([7, 7, 123456789, 2**63 + 5], dtype=np.uint64)
    got = item_keys(items, dim=40, seed=2)
    assert got.dtype == np.float32 and set(np.unique(got)) <= {-1.0, 1.0}
    np.testing.assert_array_equal(got[0], got[1])
    assert not np.array_equal(got[0], got[2]) and not np.array_equal(got, item_keys(items, 40, seed=3))
    # coordinate d: top bit of item · m_d (mod 2**64), m_d odd; recomputed with Python integers
    mults = [int(m) for m in _item_multipliers(40, 2)]
    assert all(m % 2 for m in mults)
    want = [[-1.0 if (int(h) * m) % 2**64 >> 63 else 1.0 for m in mults] for h in items]
    np.testing.assert_array_equal(got, want)


def test_key_fields_add_the_weighted_item_vector_of_each_field_to_the_key():
    fb = _stream(1)[0]
    plain = ErrorMemoryLearner("ftrl", {"bits": 14}, key_dim=8, seed=1)
    weighted = ErrorMemoryLearner("ftrl", {"bits": 14}, key_dim=8, seed=1, key_fields={"item_id": 3.0})
    np.testing.assert_allclose(
        weighted.keys(fb), plain.keys(fb) + 3.0 * item_keys(fb.item_hash, 8, seed=1), rtol=0, atol=1e-6
    )
    both = ErrorMemoryLearner(
        "ftrl", {"bits": 14}, key_dim=8, seed=1, key_fields={"item_id": 3.0, "user_id": 0.5}
    )
    want = plain.keys(fb) + 3.0 * item_keys(fb.item_hash, 8, 1) + 0.5 * item_keys(fb.user_hash, 8, 1)
    np.testing.assert_allclose(both.keys(fb), want, rtol=0, atol=1e-5)


def _categorised(n: int = 300) -> FeatureBatch:
    rows = [
        b'{"event_id":"e%d","ts":%d,"user_id":"u%d","item_id":"i%d","label":%d,"features":{"category":"c%d"}}'
        % (i, i, i % 5, i % 7, i % 2, i % 3)
        for i in range(n)
    ]
    rows[0] = b'{"event_id":"e0","ts":0,"user_id":"u0","item_id":"i0","label":0}'  # no category
    return Featurizer().transform(decode_json(rows, EventRules())[0])


def test_field_hashes_of_a_categorical_feature_are_the_featurizers_keys_of_it():
    fb = _categorised()
    got = field_hashes(fb, "category")
    for row in range(1, len(fb)):  # each is one of the row's feature keys, and the same per category
        assert got[row] in fb.keys[fb.indptr[row] : fb.indptr[row + 1]]
    assert len(np.unique(got[1:])) == 3 and all(got[r] == got[r + 3] for r in range(1, len(fb) - 3))
    assert got[0] not in got[1:]  # the event without a category: the feature's "missing" value
    np.testing.assert_array_equal(field_hashes(fb, "user_id:category"), combine(fb.user_hash, got))
    np.testing.assert_array_equal(field_hashes(fb, "item_id"), fb.item_hash)
    np.testing.assert_array_equal(field_hashes(fb, "user_id"), fb.user_hash)


def test_a_large_cross_weight_puts_events_of_one_user_and_category_in_the_same_buckets():
    fb = _categorised()
    model = ErrorMemoryLearner("ftrl", {"bits": 14}, bits=10, tables=4, key_fields={"user_id:category": 1e5})
    buckets = model.buckets(fb)
    cells = field_hashes(fb, "user_id:category")
    for cell in np.unique(cells):
        same = buckets[cells == cell]
        assert (same == same[0]).all()
    assert len({tuple(b) for b in buckets}) == len(np.unique(cells)) == 16  # 15 (user, category) + missing


def test_large_item_weight_puts_events_of_one_item_in_the_same_buckets():
    fb = _stream(1, size=200, items=6)[0]
    model = ErrorMemoryLearner("ftrl", {"bits": 14}, bits=8, tables=4, key_fields={"item_id": 1000.0})
    buckets = model.buckets(fb)
    for item in np.unique(fb.item_hash):
        same = buckets[fb.item_hash == item]
        assert (same == same[0]).all()
    assert len({tuple(b) for b in buckets}) == len(np.unique(fb.item_hash))


def test_load_state_rejects_different_key_fields():
    a = ErrorMemoryLearner("ftrl", {"bits": 14}, key_fields={"item_id": 2.0})
    b = ErrorMemoryLearner("ftrl", {"bits": 14})
    with pytest.raises(ValueError, match="key_fields"):
        b.load_state(a.state())


def test_load_state_reads_the_item_weight_of_format_1_states():
    a = ErrorMemoryLearner("ftrl", {"bits": 14}, key_fields={"item_id": 2.0})
    fb = _stream(1)[0]
    a.learn(fb, a.predict(fb))
    old = a.state()
    meta = {k: v for k, v in old.meta.items() if k != "key_fields"} | {"item_weight": 2.0}
    b = ErrorMemoryLearner("ftrl", {"bits": 14}, key_fields={"item_id": 2.0})
    b.load_state(StateBundle(old.tables, old.arrays, old.tensors, meta))
    np.testing.assert_array_equal(b.predict(fb), a.predict(fb))
    with pytest.raises(ValueError, match="key_fields"):
        ErrorMemoryLearner("ftrl", {"bits": 14}).load_state(
            StateBundle(old.tables, old.arrays, old.tensors, meta)
        )


def test_neural_predict_with_representation_equals_its_two_separate_passes():
    from pipeline.learners.neural import NeuralRanker

    a, b = _stream(2)
    model = NeuralRanker(dim=4, user_rows=32, item_rows=16, feature_rows=16, hidden=(8,), seed=0)
    model.learn(a, model.predict(a))
    p, rep = model.predict_with_representation(b)
    np.testing.assert_array_equal(p, model.predict(b))
    np.testing.assert_array_equal(rep, model.representation(b))
    p0, rep0 = model.predict_with_representation(Featurizer().transform(decode_json([], EventRules())[0]))
    assert p0.shape == (0,) and rep0.shape == (0, model.spec.representation_width)
