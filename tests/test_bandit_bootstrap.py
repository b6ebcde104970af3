"""Bootstrap exploration (online bagging with Poisson weights) over the linear bandit policies."""

from __future__ import annotations

import copy
import doctest

import numpy as np
import pytest

from pipeline.learners.bandits import POLICIES, BootstrapPolicy, HybridLinUCB, LinUCB
from pipeline.learners.bandits import bootstrap as bootstrap_module

D = 3
ARMS = np.array(["a", "b", "c", "d"])


def _few(seed: int = 3):
    """Four events per arm with coin-flip rewards: little data, so the bags disagree (seed 3
    also leaves some bag with no weight on an arm, whose prior score 0 ties: ties are covered)."""
    rng = np.random.default_rng(seed)
    X = np.column_stack([np.ones(16), rng.normal(size=(16, D - 1))])
    return X, np.array(list(ARMS) * 4), (rng.random(16) < 0.5).astype(float), np.ones(16)


def _data(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = np.column_stack([np.ones(n), rng.normal(size=(n, D - 1))])
    arms = rng.choice(ARMS, n)
    r = (rng.random(n) < np.where(arms == "a", 0.6, 0.4)).astype(float)
    w = rng.uniform(0.5, 2.0, n)
    return X, arms, r, w


@pytest.mark.parametrize(("base", "gamma"), [("linucb", 1.0), ("diag_linucb", 0.95), ("hybrid_linucb", 0.97)])
def test_every_bag_is_the_base_policy_learned_with_poisson_weights(base, gamma):
    X, arms, r, w = _data(90)
    policy = BootstrapPolicy(base=base, bags=3, dim=D, gamma=gamma, seed=7)
    rng = copy.deepcopy(policy._rng)  # the wrapper's generator, replayed to recompute the weights
    plain = [POLICIES[base](dim=D, gamma=gamma, alpha=0.0) for _ in range(3)]
    for at in range(0, len(arms), 13):
        sl = slice(at, at + 13)
        policy.update(X[sl], arms[sl], r[sl], w[sl])
        poisson = rng.poisson(1.0, size=(len(arms[sl]), 3))
        for b, p in enumerate(plain):
            p.update(X[sl], arms[sl], r[sl], w[sl] * poisson[:, b])
    probe = np.column_stack([np.ones(8), np.random.default_rng(1).normal(size=(8, D - 1))])
    probe_arms = np.array(["a", "b", "c", "d"] * 2)
    rows = policy._arms.lookup(probe_arms, "arms")
    means = []
    for bag, p in zip(policy._bags, plain):
        got = bag._mean_var(probe, rows[:, None], need_var=False)[0][:, 0]
        np.testing.assert_allclose(got, p.predict_arrays(probe, probe_arms), rtol=1e-9, atol=1e-12)
        means.append(got)
    # predictions are the bags' mean, and the bags differ (the resampling is not a no-op)
    np.testing.assert_allclose(policy.predict_arrays(probe, probe_arms), np.mean(means, axis=0), atol=1e-12)
    assert np.ptp(means, axis=0).max() > 1e-3


@pytest.mark.parametrize(
    ("base", "base_params"),
    [("linucb", {}), ("diag_linucb", {"alpha": 0.3}), ("epsilon_greedy", {"epsilon": 0.3})],
)
def test_propensities_are_exact_choice_frequencies(base, base_params):
    X, arms, r, w = _few()
    policy = BootstrapPolicy(base=base, base_params=base_params, bags=4, dim=D, seed=2)
    policy.update(X, arms, r, w)
    x = np.repeat(X[:1], 4000, axis=0)
    chosen, props = policy.select(x, ARMS, k=1)
    freq = np.bincount(chosen[:, 0], minlength=len(ARMS)) / len(x)
    logged = np.array(
        [props[chosen[:, 0] == j, 0].mean() if (chosen[:, 0] == j).any() else 0.0 for j in range(4)]
    )
    probs, means = policy.distribution(X[:1], ARMS)
    # every row has the same context, so each choice is always logged with the same propensity
    for j in range(4):
        if (chosen[:, 0] == j).any():
            assert np.ptp(props[chosen[:, 0] == j, 0]) < 1e-12
    np.testing.assert_allclose(freq, probs[0], atol=0.02)
    np.testing.assert_allclose(logged[freq > 0], probs[0][freq > 0], atol=1e-12)
    np.testing.assert_allclose(probs.sum(), 1.0)
    assert (probs[0] < 0.9).all(), probs  # the test only means something if the bags disagree
    np.testing.assert_allclose(means, policy.predict_arrays(X[:1].repeat(4, 0), ARMS)[None], atol=1e-12)


def test_slate_propensities_are_exact_slot_frequencies():
    X, arms, r, w = _few()
    policy = BootstrapPolicy(bags=4, dim=D, seed=5)
    policy.update(X, arms, r, w)
    n = 4000
    chosen, props = policy.select(np.repeat(X[:1], n, axis=0), ARMS, k=2)
    for slot in range(2):
        freq = np.bincount(chosen[:, slot], minlength=4) / n
        for j in np.flatnonzero(freq):
            p = props[chosen[:, slot] == j, slot]
            assert np.ptp(p) < 1e-12
            assert abs(p[0] - freq[j]) < 0.02, (slot, j, p[0], freq[j])


def test_a_cold_batch_spreads_over_the_arms():
    policy = BootstrapPolicy(bags=5, dim=4, seed=1)
    arms = np.array([f"item{j}" for j in range(6)])
    chosen, props = policy.select(np.ones((3000, 4)), arms)
    counts = np.bincount(chosen[:, 0], minlength=6)
    assert (np.abs(counts - 500) < 100).all(), counts
    np.testing.assert_allclose(props, 1 / 6)


@pytest.mark.parametrize(
    ("base", "base_params"),
    [
        ("linucb", {}),
        ("linear_ts", {"n_mc": 16}),
        ("epsilon_greedy", {"epsilon": 0.2}),
        ("hybrid_linucb", {"action_dim": 2}),
        ("hybrid_ts", {"action_dim": 2, "n_mc": 8}),
    ],
)
def test_a_state_round_trip_decides_and_predicts_identically(base, base_params):
    X, arms, r, w = _data(60, seed=4)
    params = {"base": base, "base_params": base_params, "bags": 3, "dim": D, "gamma": 0.99, "seed": 11}
    policy = BootstrapPolicy(**params)
    policy.update(X[:40], arms[:40], r[:40], w[:40])
    policy.select(X[:5], ARMS)  # the generators have moved on before the snapshot
    restored = BootstrapPolicy(**params)
    restored.load_state(policy.state())
    for p in (policy, restored):  # learning after the restore uses the same Poisson draws
        p.update(X[40:], arms[40:], r[40:], w[40:])
    a, b = policy.select(X, ARMS, k=2), restored.select(X, ARMS, k=2)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(policy.predict_arrays(X, arms), restored.predict_arrays(X, arms))
    columns = set(policy.state().tables["arms"].column_names)
    assert {"bag0.b", "bag2.b"} <= columns or {"bag0.act", "bag2.act"} <= columns


def test_a_snapshot_of_another_configuration_is_refused():
    from pipeline.errors import SnapshotError

    policy = BootstrapPolicy(bags=3, dim=D)
    policy.update(*_data(10)[:3])
    with pytest.raises(SnapshotError, match="bags"):
        BootstrapPolicy(bags=2, dim=D).load_state(policy.state())


def test_hybrid_base_learns_from_item_features():
    policy = BootstrapPolicy(
        base="hybrid_linucb", base_params={"action_dim": 1, "per_arm": False}, bags=4, dim=2
    )
    assert policy.uses_action_features
    x = np.array([[1.0, 0.0]] * 40)
    policy.update(x[:20], ["a"] * 20, np.ones(20), action_features=np.ones((20, 1)))
    policy.update(x[20:], ["b"] * 20, np.zeros(20), action_features=-np.ones((20, 1)))
    assert "bag3.shared" in policy.state().tables
    # an unseen item "c" with the good item's feature wins in every bag
    chosen, props = policy.select(x[:50], ["b", "c"], action_features=np.array([[-1.0], [1.0]]))
    assert (chosen[:, 0] == 1).all() and np.allclose(props, 1.0)
    pred = policy.predict_arrays(x[:2], ["a", "b"])  # remembered features
    assert pred[0] > 0.8 and pred[1] < 0.2
    with pytest.raises(ValueError, match="action_features"):
        BootstrapPolicy(dim=2).select(x[:1], ["a"], action_features=np.ones((1, 1)))


@pytest.mark.parametrize(
    ("base", "match"), [("beta_ts", "context-free"), ("bootstrap", "bootstraps"), ("nope", "not a known")]
)
def test_unsuitable_bases_are_refused(base, match):
    with pytest.raises(ValueError, match=match):
        BootstrapPolicy(base=base)


def test_wrapper_parameters_are_refused_in_base_params():
    with pytest.raises(ValueError, match=r"base_params must not set \['dim'\]"):
        BootstrapPolicy(base_params={"dim": 4})


def test_bag_exploration_is_off_unless_asked_and_seeds_differ():
    policy = BootstrapPolicy(bags=3)
    assert [bag.alpha for bag in policy._bags] == [0.0, 0.0, 0.0]
    assert BootstrapPolicy(base_params={"alpha": 0.5})._bags[0].alpha == 0.5
    assert BootstrapPolicy(base="epsilon_greedy")._bags[0].epsilon == 0.0
    seeds = [bag.seed for bag in policy._bags]
    assert len(set(seeds)) == 3 and seeds == [bag.seed for bag in BootstrapPolicy(bags=3)._bags]
    assert isinstance(policy._bags[0], LinUCB) and not isinstance(policy._bags[0], HybridLinUCB)


def test_module_doctest():
    result = doctest.testmod(bootstrap_module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
