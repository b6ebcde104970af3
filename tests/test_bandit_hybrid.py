"""Shared-parameter policies (hybrid LinUCB, hybrid Thompson sampling) against a brute-force joint ridge."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.errors import SnapshotError
from pipeline.events import EventRules, decode_json
from pipeline.features import FeatureSpec, Featurizer
from pipeline.learners.bandits import POLICIES, HybridLinUCB, HybridThompson, LinUCB, action_vectors
from pipeline.learners.base import StateBundle

D, ACT = 3, 2
ARMS = np.array(["a", "b", "c", "d"])


def _data(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = np.column_stack([np.ones(n), rng.normal(size=(n, D - 1))])
    arms = rng.choice(ARMS, n)
    feats = {a: rng.normal(size=ACT) for a in ARMS}
    A = np.array([feats[a] for a in arms])
    r = (rng.random(n) < 0.5).astype(float)
    w = rng.uniform(0.5, 2.0, n)
    return X, arms, A, r, w


def _cross(x: np.ndarray, a: np.ndarray) -> np.ndarray:
    return np.kron(x, np.concatenate([[1.0], a]))


def _joint_ridge(X, arms, A, r, w, lam: float, per_arm: bool):
    """The hybrid model as one ridge regression over [β, θ_a for every arm], solved directly."""
    k = D * (ACT + 1)
    width = k + (D * len(ARMS) if per_arm else 0)

    def phi(x, arm, a):
        out = np.zeros(width)
        out[:k] = _cross(x, a)
        if per_arm:
            j = k + D * int(np.flatnonzero(ARMS == arm)[0])
            out[j : j + D] = x
        return out

    P = np.array([phi(x, arm, a) for x, arm, a in zip(X, arms, A)])
    M = lam * np.eye(width) + (P * w[:, None]).T @ P
    theta = np.linalg.solve(M, P.T @ (w * r))
    M_inv = np.linalg.inv(M)
    return lambda x, arm, a: (phi(x, arm, a) @ theta, phi(x, arm, a) @ M_inv @ phi(x, arm, a))


@pytest.mark.parametrize("per_arm", [True, False])
def test_hybrid_linucb_is_the_joint_ridge_regression(per_arm):
    X, arms, A, r, w = _data(120)
    policy = HybridLinUCB(dim=D, action_dim=ACT, alpha=0.7, lam=0.8, per_arm=per_arm)
    for at in range(0, len(arms), 17):  # batches with repeated arms
        sl = slice(at, at + 17)
        policy.update(X[sl], arms[sl], r[sl], w[sl], action_features=A[sl])
    ref = _joint_ridge(X, arms, A, r, w, lam=0.8, per_arm=per_arm)
    probe_x = np.column_stack([np.ones(6), np.random.default_rng(9).normal(size=(6, D - 1))])
    probe_a = np.random.default_rng(10).normal(size=(len(ARMS), ACT))
    rows = policy._known_rows(ARMS, "arms")
    mean, var = policy._mean_var(policy._attach_actions(probe_x, probe_a, rows), rows)
    for i, x in enumerate(probe_x):
        for j, arm in enumerate(ARMS):
            want_mean, want_var = ref(x, arm, probe_a[j])
            assert mean[i, j] == pytest.approx(want_mean, abs=1e-9)
            assert var[i, j] == pytest.approx(want_var, abs=1e-9)
    # the public estimate is the same mean, and a decision is the argmax of the bound
    np.testing.assert_allclose(
        policy.predict_arrays(probe_x[:4], ARMS, action_features=probe_a), mean[np.arange(4), np.arange(4)]
    )
    chosen, props = policy.select(probe_x, ARMS, action_features=probe_a)
    bound = mean + 0.7 * np.sqrt(var)
    np.testing.assert_array_equal(chosen[:, 0], bound.argmax(axis=1))
    np.testing.assert_array_equal(props, 1.0)


def test_without_features_a_decision_uses_what_each_arm_was_learned_with():
    X, arms, A, r, w = _data(80, seed=1)
    policy = HybridLinUCB(dim=D, action_dim=ACT)
    policy.update(X, arms, r, w, action_features=A)
    last = {arm: A[np.flatnonzero(arms == arm)[-1]] for arm in ARMS}
    given = np.array([last[a] for a in ARMS])
    probe = X[:5]
    stored = policy.distribution(probe, ARMS)[1]
    np.testing.assert_allclose(policy.distribution(probe, ARMS, action_features=given)[1], stored)
    # an all-zero row stands for "not given" too, row by row
    mixed = given.copy()
    mixed[1] = 0.0
    np.testing.assert_allclose(policy.distribution(probe, ARMS, action_features=mixed)[1], stored)


def test_a_new_item_starts_warm_from_its_features():
    """Items with feature +1 pay, items with feature -1 do not: an unseen +1 item is preferred at once,
    while per-arm LinUCB has nothing to tell an unseen item from another."""
    rng = np.random.default_rng(3)
    n = 400
    X = np.column_stack([np.ones(n), rng.normal(size=n)])
    arms = rng.choice([f"i{j}" for j in range(10)], n)
    good = np.array([int(a[1:]) % 2 == 0 for a in arms])
    A = np.where(good, 1.0, -1.0)[:, None]
    r = (rng.random(n) < np.where(good, 0.8, 0.1)).astype(float)
    policy = HybridLinUCB(dim=2, action_dim=1, alpha=0.0)
    policy.update(X, arms, r, action_features=A)
    probe = X[:50]
    chosen, _ = policy.choose(probe, ["new_bad", "new_good"], action_features=np.array([[-1.0], [1.0]]))
    assert (chosen[:, 0] == "new_good").all()
    mean = policy.predict_arrays(probe[:1], ["new_good"], action_features=[[1.0]])[0]
    assert mean > 0.6  # near the good items' 0.8, from the shared part alone
    assert "new_good" not in policy.arm_ids  # scoring adds no arm


def test_batched_updates_equal_one_at_a_time_with_discounting():
    X, arms, A, r, w = _data(45, seed=2)
    one, many = (HybridLinUCB(dim=D, action_dim=ACT, gamma=0.95) for _ in range(2))
    for i in range(len(arms)):
        one.update(X[i : i + 1], arms[i : i + 1], r[i : i + 1], w[i : i + 1], action_features=A[i : i + 1])
    for at in range(0, len(arms), 9):
        sl = slice(at, at + 9)
        many.update(X[sl], arms[sl], r[sl], w[sl], action_features=A[sl])
    probe = X[:6]
    a, b = one.distribution(probe, ARMS)[1], many.distribution(probe, ARMS)[1]
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("cls", [HybridLinUCB, HybridThompson])
def test_state_round_trip_gives_the_same_decisions(cls):
    X, arms, A, r, w = _data(60, seed=4)
    policy = cls(dim=D, action_dim=ACT, seed=7)
    policy.update(X, arms, r, w, action_features=A)
    bundle = policy.state()
    assert "shared" in bundle.tables
    restored = cls(dim=D, action_dim=ACT, seed=7)
    restored.load_state(bundle)
    probe = X[:8]
    np.testing.assert_allclose(restored.distribution(probe, ARMS)[1], policy.distribution(probe, ARMS)[1])
    np.testing.assert_array_equal(restored.select(probe, ARMS)[0], policy.select(probe, ARMS)[0])
    broken = StateBundle(tables={k: v for k, v in bundle.tables.items() if k != "shared"}, meta=bundle.meta)
    with pytest.raises(SnapshotError, match="shared"):
        cls(dim=D, action_dim=ACT).load_state(broken)


def test_thompson_propensities_agree_with_its_distribution():
    X, arms, A, r, w = _data(60, seed=5)
    policy = HybridThompson(dim=D, action_dim=ACT, v=1.0, n_mc=400, seed=1)
    policy.update(X, arms, r, w, action_features=A)
    probe = np.repeat(X[:1], 3000, axis=0)
    chosen, props = policy.select(probe, ARMS)
    freq = np.bincount(chosen[:, 0], minlength=len(ARMS)) / len(probe)
    dist = policy.distribution(X[:1], ARMS, n_mc=4000)[0][0]
    np.testing.assert_allclose(freq, dist, atol=0.03)
    for j in np.unique(chosen[:, 0]):  # the logged propensity of each choice estimates its frequency
        assert props[chosen[:, 0] == j, 0].mean() == pytest.approx(freq[j], abs=0.05)
    assert policy.gauges()[0][2] == len(ARMS)


def test_learn_takes_item_features_out_of_the_context():
    events = [
        json.dumps(
            {
                "event_id": f"e{i}",
                "ts": i,
                "user_id": f"u{i % 3}",
                "item_id": f"i{i % 4}",
                "label": int(i % 4 == 0),
                "features": {"device": ["ios", "web"][i % 2], "cuisine": ["thai", "pizza"][i % 4 == 0]},
            }
        ).encode()
        for i in range(40)
    ]
    decoded, errors = decode_json(events, EventRules())
    assert not errors
    batch = Featurizer(FeatureSpec()).transform(decoded)
    policy = POLICIES["hybrid_linucb"](dim=4, action_dim=4, item_features=["cuisine"])
    twin = HybridLinUCB(dim=4, action_dim=4, item_features=["cuisine"])
    policy.learn(batch)
    actions = action_vectors(batch, 4, ["cuisine"])
    assert np.abs(actions).sum(axis=1).tolist() == [1.0] * len(batch)
    twin.update(
        twin.batch_contexts(batch),
        batch.events.column("item_id").to_pylist(),
        batch.labels,
        action_features=actions,
    )
    np.testing.assert_allclose(policy.predict(batch), twin.predict(batch))
    assert policy.predict(batch)[::4].mean() > policy.predict(batch)[1::4].mean()


def test_per_arm_policies_refuse_item_features():
    with pytest.raises(ValueError, match="takes no action_features"):
        LinUCB(dim=2).select(np.ones((1, 2)), ["a", "b"], action_features=np.ones((2, 1)))
    with pytest.raises(ValueError, match="action_features must have shape"):
        HybridLinUCB(dim=2, action_dim=3).select(np.ones((1, 2)), ["a", "b"], action_features=np.ones((2, 1)))
    with pytest.raises(ValueError, match="finite"):
        HybridLinUCB(dim=2, action_dim=1).select(
            np.ones((1, 2)), ["a", "b"], action_features=[[np.nan], [1.0]]
        )
