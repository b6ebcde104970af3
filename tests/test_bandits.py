"""Bandit policies: hand-computed updates and scores, exact propensities, seeds, state, merging,
regret on a stationary problem and recovery after a drift."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.errors import SnapshotError
from pipeline.events import EventRules, decode_json
from pipeline.features import FeatureSpec, Featurizer
from pipeline.learners.bandits import (
    ArmTable,
    BetaThompson,
    DiagLinUCB,
    EpsilonGreedy,
    LinearThompson,
    LinUCB,
    context_vectors,
    top_k,
)
from pipeline.learners.base import StateBundle
from pipeline.learners.registry import build_learner

DIM = 4


def _batch(rows: list[dict]):
    records = [
        orjson.dumps({"event_id": f"e{i}", "ts": 1_700_000_000_000 + i, "user_id": "u", "label": 0, **r})
        for i, r in enumerate(rows)
    ]
    events, bad = decode_json(records, EventRules())
    assert not bad
    return Featurizer(FeatureSpec(standardize=False)).transform(events)


def _all_policies(seed: int = 0, gamma: float = 1.0):
    return [
        LinUCB(dim=DIM, alpha=0.5, gamma=gamma, seed=seed),
        DiagLinUCB(dim=DIM, alpha=0.5, gamma=gamma, seed=seed),
        LinearThompson(dim=DIM, v=0.5, n_mc=50, gamma=gamma, seed=seed),
        BetaThompson(n_mc=50, gamma=gamma, seed=seed),
        EpsilonGreedy(dim=DIM, epsilon=0.2, gamma=gamma, seed=seed),
    ]


def _train(policy, seed: int = 1, n: int = 60) -> None:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, DIM))
    arms = rng.choice(np.array(["a", "b", "c"]), size=n)
    policy.update(X, arms, rng.integers(0, 2, n).astype(float))


def _round_trip(bundle: StateBundle, tmp_path) -> StateBundle:
    """Through Parquet and JSON, as the snapshot writer stores it."""
    path = tmp_path / "arms.parquet"
    pq.write_table(bundle.tables["arms"], path)
    return StateBundle(tables={"arms": pq.read_table(path)}, meta=orjson.loads(orjson.dumps(bundle.meta)))


# -------------------------------------------------------------------- arms and contexts


def test_resolve_unseen_ids_appends_rows_in_first_appearance_order():
    table = ArmTable()
    assert table.resolve(np.array(["x", "y", "x"])).tolist() == [0, 1, 0]
    assert table.resolve(["z", "y"]).tolist() == [2, 1]
    assert table.ids == ["x", "y", "z"]


def test_integer_candidates_are_ids_and_create_no_arm_they_do_not_name():
    table = ArmTable()
    table.resolve(["1"])  # row 0 is named "1"
    assert table.resolve(np.array([1, 7])).tolist() == [0, 1]  # 1 is the arm "1"; 7 a new arm "7"
    assert table.ids == ["1", "7"]  # no arms "2".."6"
    assert table.lookup(np.array([[7, 3]])).tolist() == [[1, -1]]
    assert table.resolve(np.array(["7", 1], dtype=object)).tolist() == [1, 0]
    with pytest.raises(TypeError, match="arm ids"):
        table.resolve(np.array([1.5]))


def test_context_vectors_exclude_item_and_named_features():
    fb = _batch(
        [
            {"item_id": "i1", "features": {"device": "ios", "price": 3.0}},
            {"item_id": "i2", "features": {"device": "ios", "price": 5.0}},
        ]
    )
    x = context_vectors(fb, dim=16)
    assert x[:, 0].tolist() == [1.0, 1.0]
    # only the price differs, and it is folded with its value
    assert sorted(np.abs(x[1] - x[0])[np.abs(x[1] - x[0]) > 0].tolist()) == [2.0]
    x_ex = context_vectors(fb, dim=16, exclude=("price", "device"))
    assert np.array_equal(x_ex, np.tile(np.eye(16)[0], (2, 1)))


def test_top_k_orders_best_first_and_breaks_ties_to_lower_index():
    scores = np.array([[0.2, 0.7, 0.7, 0.1, 0.9]])
    assert top_k(scores, 3).tolist() == [[4, 1, 2]]
    assert top_k(scores, 5).tolist() == [[4, 1, 2, 0, 3]]


# -------------------------------------------------------------------- LinUCB


def _ridge_reference(X, rewards, lam, d):
    A = lam * np.eye(d) + X.T @ X
    b = X.T @ rewards
    return A, b


@pytest.mark.parametrize("n_events", [2, 7])  # 7 > dim: the batched-inverse path
def test_linucb_update_and_score_match_numpy_reference(n_events):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(n_events, 2))
    r = rng.random(n_events)
    policy = LinUCB(dim=2, alpha=0.7, lam=0.5)
    policy.update(X, np.array(["a"] * n_events), r)
    A, b = _ridge_reference(X, r, 0.5, 2)
    theta = np.linalg.solve(A, b)
    x = np.array([[0.3, -1.2]])
    expected = x[0] @ theta + 0.7 * math.sqrt(x[0] @ np.linalg.solve(A, x[0]))
    mean, var = policy._mean_var(x, np.array([0]))
    assert mean[0, 0] + 0.7 * math.sqrt(var[0, 0]) == pytest.approx(expected, abs=1e-12)
    cols = policy.state().tables["arms"].to_pylist()[0]
    assert np.allclose(np.reshape(cols["A"], (2, 2)), A, atol=1e-12)
    assert np.allclose(np.reshape(cols["A_inv"], (2, 2)), np.linalg.inv(A), atol=1e-12)


def test_linucb_hand_computed_two_updates():
    # A = I + [1,0][1,0]ᵀ + [1,1][1,1]ᵀ = [[3,1],[1,2]], b = [1,0], θ = A⁻¹b = [0.4, -0.2]
    policy = LinUCB(dim=2, alpha=1.0)
    policy.update(np.array([[1.0, 0.0], [1.0, 1.0]]), ["a", "a"], [1.0, 0.0])
    assert policy.predict_arrays(np.array([[1.0, 0.0], [0.0, 1.0]]), ["a", "a"]) == pytest.approx([0.4, -0.2])
    # width at x = [1, 0.5]: xᵀA⁻¹x = (2 - 1 + 0.75) / 5 = 0.35
    _, var = policy._mean_var(np.array([[1.0, 0.5]]), np.array([0]))
    assert var[0, 0] == pytest.approx(0.35, abs=1e-12)


def test_linucb_weighted_update_equals_repeated_events():
    X = np.array([[1.0, 2.0], [0.5, -1.0]])
    weighted = LinUCB(dim=2)
    weighted.update(X, ["a", "b"], [1.0, 0.0], weights=[3.0, 1.0])
    repeated = LinUCB(dim=2)
    repeated.update(X[[0, 0, 0, 1]], ["a", "a", "a", "b"], [1.0, 1.0, 1.0, 0.0])
    x = np.array([[0.2, 0.4]])
    assert np.allclose(weighted._mean_var(x, np.array([0, 1]))[1], repeated._mean_var(x, np.array([0, 1]))[1])


def test_linucb_per_row_candidates_score_like_shared():
    policy = LinUCB(dim=DIM)
    _train(policy)
    X = np.random.default_rng(0).normal(size=(5, DIM))
    shared = policy.select(X, np.array(["a", "b", "c"]), k=2)[0]
    per_row = policy.select(X, np.tile(np.array(["a", "b", "c"]), (5, 1)), k=2)[0]
    assert np.array_equal(shared, per_row)


# -------------------------------------------------------------------- Diag-LinUCB


def test_diag_linucb_matches_per_coordinate_formula():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(20, 3))
    arms = rng.choice(np.array(["a", "b"]), size=20)
    r = rng.random(20)
    w = rng.random(20) + 0.5
    policy = DiagLinUCB(dim=3, alpha=0.3, lam=2.0, centered=False)
    policy.update(X, arms, r, weights=w)
    x = np.array([0.5, -1.0, 2.0])
    for row, arm in enumerate(policy.arm_ids):
        sel = arms == arm
        d = 2.0 + (w[sel, None] * X[sel] ** 2).sum(0)
        b = (w[sel, None] * X[sel] * r[sel, None]).sum(0)
        expected = (x * b / d).sum() + 0.3 * math.sqrt((x * x / d).sum())
        mean, var = policy._mean_var(x[None], np.array([row]))
        assert mean[0, 0] + 0.3 * math.sqrt(var[0, 0]) == pytest.approx(expected, abs=1e-12)


def test_centred_diag_linucb_is_a_per_coordinate_regression_on_centred_contexts():
    # weighted means, then each coordinate's ridge slope on the centred data (prior lam)
    rng = np.random.default_rng(5)
    X = rng.normal(loc=1.5, size=(30, 3))
    arms = rng.choice(np.array(["a", "b"]), size=30)
    r = rng.random(30)
    w = rng.random(30) + 0.5
    policy = DiagLinUCB(dim=3, alpha=0.3, lam=2.0)
    policy.update(X[:17], arms[:17], r[:17], weights=w[:17])
    policy.update(X[17:], arms[17:], r[17:], weights=w[17:])
    x = np.array([0.5, -1.0, 2.0])
    for row, arm in enumerate(policy.arm_ids):
        sel = arms == arm
        ws, Xs, rs = w[sel], X[sel], r[sel]
        xbar, rbar = (ws[:, None] * Xs).sum(0) / ws.sum(), (ws * rs).sum() / ws.sum()
        Xc = Xs - xbar
        d = 2.0 + (ws[:, None] * Xc**2).sum(0)
        slope = (ws[:, None] * Xc * (rs - rbar)[:, None]).sum(0) / d
        mean_ref = rbar + ((x - xbar) * slope).sum()
        var_ref = 1.0 / (2.0 + ws.sum()) + ((x - xbar) ** 2 / d).sum()
        mean, var = policy._mean_var(x[None], np.array([row]))
        assert mean[0, 0] == pytest.approx(mean_ref, abs=1e-12)
        assert var[0, 0] == pytest.approx(var_ref, abs=1e-12)
    # an unseen arm: the prior (mean 0, variance (1 + |x|²) / lam)
    mean, var = policy._mean_var(x[None], np.array([policy._n_stats]))
    assert (mean[0, 0], var[0, 0]) == (0.0, pytest.approx((1.0 + (x * x).sum()) / 2.0))


def test_centred_diag_linucb_is_unmoved_by_a_shift_of_the_contexts():
    # with an intercept of its own, a constant added to a coordinate changes nothing but the prior
    rng = np.random.default_rng(6)
    X = rng.normal(size=(200, 4))
    arms = rng.choice(np.array(["a", "b", "c"]), size=200)
    r = (rng.random(200) < 0.3 + 0.2 * (X[:, 1] > 0)).astype(float)
    plain, shifted = DiagLinUCB(dim=4, lam=1e-9), DiagLinUCB(dim=4, lam=1e-9)
    plain.update(X, arms, r)
    shifted.update(X + 5.0, arms, r)
    probe = rng.normal(size=(6, 4))
    np.testing.assert_allclose(
        plain.predict_arrays(probe, ["a"] * 6), shifted.predict_arrays(probe + 5.0, ["a"] * 6), atol=1e-6
    )


def _logistic_closed_loop(policy, seed: int, rounds: int = 4000, batch: int = 50) -> float:
    """Expected reward a policy earns on a logistic world of 10 arms (obp's reward shape)."""
    rng = np.random.default_rng(seed)
    theta, bias = rng.normal(size=(10, 5)), rng.normal(size=10)
    earned = 0.0
    for _ in range(rounds // batch):
        x = rng.normal(size=(batch, 5))
        q = 1.0 / (1.0 + np.exp(-(x @ theta.T + bias)))
        X = np.column_stack([np.ones(batch), x])
        j = policy.select(X, np.arange(10))[0][:, 0]
        rows = np.arange(batch)
        policy.update(X, j, (rng.random(batch) < q[rows, j]).astype(float))
        earned += q[rows, j].sum()
    return earned


def test_centred_diag_linucb_earns_within_5_percent_of_linucb():
    # a bandit's own choices make each arm's contexts non-centred: the paper's statistics then
    # mostly measure the mean reward, the centred ones an intercept and slopes
    lin = sum(_logistic_closed_loop(LinUCB(dim=6), seed) for seed in range(3))
    centred = sum(_logistic_closed_loop(DiagLinUCB(dim=6), seed) for seed in range(3))
    plain = sum(_logistic_closed_loop(DiagLinUCB(dim=6, centered=False), seed) for seed in range(3))
    assert centred >= 0.95 * lin
    assert centred > plain


def test_a_centred_policy_refuses_an_uncentred_snapshot():
    policy = DiagLinUCB(dim=2, centered=False)
    policy.update(np.ones((3, 2)), ["a", "b", "a"], np.ones(3))
    with pytest.raises(SnapshotError, match="centered=false"):
        DiagLinUCB(dim=2).load_state(policy.state())


def test_diag_linucb_merge_of_workers_equals_training_on_union():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(40, DIM))
    arms = rng.choice(np.array(["a", "b", "c", "d"]), size=40)
    r = rng.random(40)
    base = DiagLinUCB(dim=DIM)
    base.update(X[:10], arms[:10], r[:10])
    workers = []
    for part in (slice(10, 25), slice(25, 40)):
        w = DiagLinUCB(dim=DIM)
        w.load_state(base.state())
        w.update(X[part], arms[part], r[part])
        workers.append(w)
    union = DiagLinUCB(dim=DIM)
    union.update(X[:10], arms[:10], r[:10])
    union.update(X[10:], arms[10:], r[10:])
    merged = DiagLinUCB.merged(workers, base=base)
    by_id = {row["arm_id"]: row for row in merged.state().tables["arms"].to_pylist()}
    for row in union.state().tables["arms"].to_pylist():
        other = by_id[row["arm_id"]]
        assert other["pulls"] == row["pulls"]
        for col in ("d", "b", "reward_sum"):
            assert np.allclose(other[col], row[col], atol=1e-12, rtol=0)


def test_diag_linucb_merge_without_base_adds_worker_statistics():
    a, b = DiagLinUCB(dim=2), DiagLinUCB(dim=2)
    a.update(np.array([[1.0, 1.0]]), ["x"], [1.0])
    b.update(np.array([[2.0, 0.0]]), ["y"], [1.0])
    b.update(np.array([[1.0, 3.0]]), ["x"], [0.0])
    rows = {r["arm_id"]: r for r in DiagLinUCB.merged([a, b]).state().tables["arms"].to_pylist()}
    assert rows["x"]["d"] == [3.0, 11.0] and rows["x"]["b"] == [1.0, 1.0]
    assert rows["y"]["d"] == [5.0, 1.0] and rows["x"]["pulls"] == 2


def test_diag_linucb_merge_rejects_mismatched_workers():
    with pytest.raises(ValueError, match=r"workers\[1\]"):
        DiagLinUCB.merged([DiagLinUCB(dim=2), DiagLinUCB(dim=3)])


# -------------------------------------------------------------------- propensities


def test_epsilon_greedy_propensities_are_exact_and_match_frequencies():
    policy = EpsilonGreedy(dim=1, epsilon=0.3, seed=7)
    policy.update(np.ones((3, 1)), ["a", "b", "c"], [0.1, 0.9, 0.5])
    cands = np.array(["a", "b", "c", "d"])
    chosen, props = policy.select(np.ones((20000, 1)), cands, k=2)
    greedy = np.array([1, 2])  # b then c
    expected = 0.7 * (chosen == greedy) + 0.3 / 4
    assert np.array_equal(props, expected)
    for slot in range(2):
        for item in range(4):
            freq = (chosen[:, slot] == item).mean()
            exact = 0.7 * (greedy[slot] == item) + 0.3 / 4
            assert freq == pytest.approx(exact, abs=0.012)


def test_linear_thompson_mc_propensity_matches_normal_formula():
    policy = LinearThompson(dim=1, v=1.0, n_mc=4000, seed=2)
    policy.update(np.ones((4, 1)), ["a", "a", "a", "b"], [1.0, 1.0, 1.0, 0.0])
    mean, var = policy._mean_var(np.ones((1, 1)), np.array([0, 1]))
    p_a = 0.5 * (1 + math.erf((mean[0, 0] - mean[0, 1]) / math.sqrt(2 * (var[0, 0] + var[0, 1]))))
    chosen, props = policy.select(np.ones((6, 1)), np.array(["a", "b"]))
    exact = np.where(chosen[:, 0] == 0, p_a, 1 - p_a)
    assert np.allclose(props[:, 0], exact, atol=0.03)


def test_thompson_slate_propensities_match_slot_frequencies():
    policy = BetaThompson(n_mc=300, seed=4)
    policy.update(None, ["a"] * 3 + ["b"] * 3 + ["c"] * 3, [1, 1, 0, 1, 0, 0, 0, 0, 1])
    chosen, props = policy.select(np.zeros((3000, 1)), np.array(["a", "b", "c"]), k=2)
    assert (chosen[:, 0] != chosen[:, 1]).all()
    for slot in range(2):
        for item in range(3):
            shown = chosen[:, slot] == item
            assert props[shown, slot].mean() == pytest.approx(shown.mean(), abs=0.03)


def test_thompson_n_mc_zero_gives_nan_propensities():
    chosen, props = BetaThompson(n_mc=0).select(np.zeros((2, 1)), np.array(["a", "b"]))
    assert chosen.shape == (2, 1) and np.isnan(props).all()


def test_deterministic_policies_report_propensity_one():
    for policy in (LinUCB(dim=DIM), DiagLinUCB(dim=DIM)):
        _train(policy)
        _, props = policy.select(np.ones((3, DIM)), np.array(["a", "b", "c"]), k=3)
        assert (props == 1.0).all()


# -------------------------------------------------------------------- seeds and state


@pytest.mark.parametrize("index", range(5))
def test_select_same_seed_gives_same_decisions(index):
    runs = []
    for _ in range(2):
        policy = _all_policies(seed=11)[index]
        _train(policy)
        X = np.random.default_rng(9).normal(size=(30, DIM))
        runs.append(policy.select(X, np.array(["a", "b", "c", "new"]), k=2))
    assert np.array_equal(runs[0][0], runs[1][0])
    assert np.array_equal(runs[0][1], runs[1][1], equal_nan=True)


@pytest.mark.parametrize("index", range(5))
def test_state_round_trip_gives_identical_scores_and_decisions(index, tmp_path):
    policy = _all_policies(seed=3, gamma=0.95)[index]
    _train(policy)
    restored = _all_policies(seed=99, gamma=0.95)[index]
    restored.load_state(_round_trip(policy.state(), tmp_path))
    assert restored.arm_ids == policy.arm_ids
    X = np.random.default_rng(8).normal(size=(10, DIM))
    arms = np.array(["a", "b", "c", "a", "zz", "b", "c", "a", "b", "c"])
    assert np.array_equal(restored.predict_arrays(X, arms), policy.predict_arrays(X, arms))
    for _ in range(2):  # the random generator continues identically too
        a, b = (
            policy.select(X, np.array(["a", "b", "c"]), k=2),
            restored.select(X, np.array(["a", "b", "c"]), k=2),
        )
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    # learning after the restore stays identical
    _train(policy, seed=5)
    _train(restored, seed=5)
    assert np.array_equal(restored.predict_arrays(X, arms), policy.predict_arrays(X, arms))


def test_arms_table_has_one_row_per_arm_with_counts():
    policy = DiagLinUCB(dim=2)
    policy.update(np.ones((3, 2)), ["a", "b", "a"], [1.0, 0.0, 1.0])
    table = policy.state().tables["arms"]
    assert table.column_names == ["arm_id", "pulls", "reward_sum", "d", "b", "n", "sx", "sr"]
    assert table.select(["arm_id", "pulls", "reward_sum"]).to_pylist() == [
        {"arm_id": "a", "pulls": 2, "reward_sum": 2.0},
        {"arm_id": "b", "pulls": 1, "reward_sum": 0.0},
    ]
    assert pa.types.is_list(table.schema.field("d").type)


def test_load_state_rejects_other_class_and_dim():
    state = LinUCB(dim=2).state()
    with pytest.raises(SnapshotError, match="'class'"):
        DiagLinUCB(dim=2).load_state(state)
    with pytest.raises(SnapshotError, match="'dim'"):
        LinUCB(dim=3).load_state(state)


# -------------------------------------------------------------------- Learner API


def test_learner_api_learns_items_as_arms_and_predicts_probabilities():
    rows = [
        {"item_id": f"i{j % 3}", "label": float(j % 3 == 0), "features": {"device": "ios"}} for j in range(30)
    ]
    fb = _batch(rows)
    keys_before = fb.keys.copy()
    for policy in _all_policies():
        policy.learn(fb, policy.predict(fb))
        assert sorted(policy.arm_ids) == ["i0", "i1", "i2"]
        unseen = _batch([{"item_id": "fresh", "features": {"device": "ios"}}, *rows[:2]])
        p = policy.predict(unseen)
        assert p.shape == (3,) and ((p >= 0) & (p <= 1)).all()
        assert p[1] > p[2]  # i0 always rewarded, i1 never
        policy.select(np.zeros((1, DIM)), np.array(["i0", "i1", "fresh"]))  # ids find the batch's arms
        assert policy.n_arms == 3  # scoring and deciding add no arm
        assert p[0] == policy.clone().predict(unseen)[0]  # the prior's estimate
        policy.learn(unseen, p)
        assert policy.n_arms == 4 and policy.arm_ids[-1] == "fresh"
    assert np.array_equal(fb.keys, keys_before)


def test_learn_with_importance_weighting_uses_inverse_propensity():
    fb = _batch([{"item_id": "a", "label": 1, "propensity": 0.25}, {"item_id": "b", "label": 0}])
    learned = DiagLinUCB(dim=DIM, importance_weighting=True)
    learned.learn(fb, np.zeros(2))
    direct = DiagLinUCB(dim=DIM)
    direct.update(context_vectors(fb, DIM), ["a", "b"], [1.0, 0.0], weights=[4.0, 1.0])
    assert learned.state().tables["arms"]["d"].to_pylist() == direct.state().tables["arms"]["d"].to_pylist()


def test_registry_builds_every_policy_kind():
    for kind, params in [("linucb", {"dim": 4}), ("diag_linucb", {"dim": 4}), ("beta_ts", {})]:
        assert build_learner(kind, params=params).kind == kind


# -------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: LinUCB(dim=0), "dim"),
        (lambda: LinUCB(dim=2, alpha=-1), "alpha"),
        (lambda: LinUCB(dim=2, lam=0), "lam"),
        (lambda: DiagLinUCB(dim=2, gamma=1.5), "gamma"),
        (lambda: EpsilonGreedy(dim=2, epsilon=2), "epsilon"),
        (lambda: LinearThompson(dim=2, n_mc=-1), "n_mc"),
        (lambda: BetaThompson(alpha_prior=0), "alpha_prior"),
        (lambda: LinUCB(dim=2).select(np.ones((1, 3)), ["a"]), "contexts"),
        (lambda: LinUCB(dim=2).select(np.ones((1, 2)), ["a"], k=2), "k must"),
        (lambda: LinUCB(dim=2).select(np.ones((2, 2)), np.array([["a"]])), "candidates"),
        (lambda: LinUCB(dim=2).update(np.ones((1, 2)), ["a"], [np.nan]), "rewards"),
        (lambda: LinUCB(dim=2).update(np.ones((1, 2)), ["a"], [1.0], weights=[-1.0]), "weights"),
        (lambda: LinUCB(dim=2).update(np.ones((2, 2)), ["a"], [1.0]), "contexts"),
        (lambda: BetaThompson().update(None, ["a"], [2.0]), "rewards"),
        (lambda: LinUCB(dim=2).update(np.ones((1, 2)), [["a"]], [1.0]), "arms"),
        (lambda: LinUCB(dim=2, gauge_window=-1), "gauge_window"),
        (lambda: LinearThompson(dim=2).distribution(np.ones((1, 2)), ["a"], n_mc=0), "n_mc"),
    ],
)
def test_invalid_arguments_raise_naming_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# -------------------------------------------------------------------- regret and drift


def _linear_problem(seed: int, n_arms: int = 5, d: int = 5):
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=(n_arms, d))
    theta /= np.linalg.norm(theta, axis=1, keepdims=True)
    return rng, theta


def _run_linear(policy, T: int = 2000, batch: int = 10, seed: int = 0) -> np.ndarray:
    rng, theta = _linear_problem(seed)
    regret = np.empty(T)
    arms = np.arange(len(theta))
    for t in range(0, T, batch):
        X = rng.normal(size=(batch, theta.shape[1]))
        X /= np.linalg.norm(X, axis=1, keepdims=True)
        exp = X @ theta.T
        a = policy.select(X, arms)[0][:, 0]
        regret[t : t + batch] = exp.max(1) - exp[np.arange(batch), a]
        policy.update(X, a, exp[np.arange(batch), a] + 0.1 * rng.normal(size=batch))
    return regret


@pytest.mark.parametrize(
    "policy",
    [LinUCB(dim=5, alpha=0.5), LinearThompson(dim=5, v=0.2, n_mc=0, seed=1), DiagLinUCB(dim=5, alpha=0.5)],
    ids=["linucb", "linear_ts", "diag_linucb"],
)
def test_regret_on_stationary_problem_grows_sublinearly(policy):
    regret = _run_linear(policy)
    first, second = regret[:1000].sum(), regret[1000:].sum()
    uniform = _run_linear(EpsilonGreedy(dim=5, epsilon=1.0, seed=1))
    assert second < 0.6 * first
    assert regret.sum() < 0.5 * uniform.sum()


def test_beta_thompson_regret_on_stationary_problem_grows_sublinearly():
    rng = np.random.default_rng(0)
    p = np.array([0.2, 0.5, 0.55, 0.3])
    policy = BetaThompson(n_mc=0, seed=0)
    regret = []
    for _ in range(300):
        a = policy.select(np.zeros((10, 1)), np.arange(4))[0][:, 0]
        policy.update(None, a, (rng.random(10) < p[a]).astype(float))
        regret.append(p.max() - p[a])
    regret = np.concatenate(regret)
    assert regret[1500:].sum() < 0.6 * regret[:1500].sum()


def _swap_reward(policy, seed: int = 0) -> float:
    """Reward rate in the 1,500 events after the two arms' Bernoulli rates swap."""
    rng = np.random.default_rng(seed)
    rates = np.array([0.8, 0.2])
    after = []
    for t in range(300):
        if t == 150:
            rates = rates[::-1]
        a = policy.select(np.ones((10, 1)), np.arange(2))[0][:, 0]
        r = (rng.random(10) < rates[a]).astype(float)
        policy.update(np.ones((10, 1)), a, r)
        if t >= 150:
            after.append(r)
    return float(np.concatenate(after).mean())


@pytest.mark.parametrize(
    "make",
    [
        lambda g: BetaThompson(gamma=g, n_mc=0, seed=0, reset_on_drift=False),
        lambda g: LinUCB(dim=1, alpha=0.3, gamma=g, reset_on_drift=False),
        lambda g: DiagLinUCB(dim=1, alpha=0.3, gamma=g, reset_on_drift=False),
        lambda g: LinearThompson(dim=1, v=0.2, n_mc=0, gamma=g, seed=0, reset_on_drift=False),
    ],
    ids=["beta_ts", "linucb", "diag_linucb", "linear_ts"],
)
def test_discounted_policy_recovers_after_reward_swap(make):
    # the drift watch off, to see what discounting alone does; gamma per event: 0.99 over batches of 10 is about the 0.9 per batch this test first used
    discounted, undiscounted = _swap_reward(make(0.99)), _swap_reward(make(1.0))
    assert discounted > 0.7
    assert discounted > undiscounted + 0.15
