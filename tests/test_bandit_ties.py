"""Tied scores are broken at random, and the propensities say so.

Early on every untried arm has the same score; breaking ties by candidate position sends a whole
batch of decisions to the first arm (issue: LinUCB's regret on obp's simulator was 1,282 with
position ties and 482 with shuffled candidates). Ties are now ordered with the policy's own
seeded generator, for single and batched decisions, and every reported probability (``select``'s
propensities, ``distribution``) is the exact probability of that random order.
"""

from __future__ import annotations

import numpy as np
import pytest

from consumers.commands.evaluate import POLICY_KINDS  # every bandit kind (kept equal to POLICIES)
from pipeline.learners.bandits import DiagLinUCB, EpsilonGreedy, LinUCB
from pipeline.learners.bandits.kernels import greedy_distribution, tie_propensities, top_k

ARMS = np.array([f"item{j}" for j in range(6)])


def _cold(kind, seed=3):
    return {"linucb": LinUCB, "diag_linucb": DiagLinUCB, "epsilon_greedy": EpsilonGreedy}[kind](4, seed=seed)


@pytest.mark.parametrize("kind", ["linucb", "diag_linucb", "epsilon_greedy"])
def test_a_cold_batch_spreads_over_the_tied_arms(kind):
    policy = _cold(kind)
    n = 3000
    chosen, props = policy.select(np.ones((n, 4)), ARMS, k=1)
    counts = np.bincount(chosen[:, 0], minlength=len(ARMS))
    # uniform over 6 arms: each count ~ Binomial(3000, 1/6), sd ~ 20; 5 sd is a generous bound
    assert (np.abs(counts - n / 6) < 100).all(), counts
    # ε-greedy: (1 - ε) / 6 from the tied greedy choice + ε / 6 from exploring
    np.testing.assert_allclose(props, 1 / 6)
    probs, _ = policy.distribution(np.ones((2, 4)), ARMS)
    np.testing.assert_allclose(probs, 1 / 6)


@pytest.mark.parametrize("kind", ["linucb", "diag_linucb"])
def test_only_the_tied_best_share_a_slot(kind):
    policy = _cold(kind)
    x = np.ones((1, 4))
    policy.update(np.ones((20, 4)), np.array(["item2"] * 20), np.zeros(20))  # item2 never pays
    chosen, props = policy.select(np.repeat(x, 2000, axis=0), ARMS, k=1)
    assert set(chosen[:, 0].tolist()) == {0, 1, 3, 4, 5}  # the five untried arms, tied
    np.testing.assert_allclose(props, 1 / 5)
    # a whole slate: the untried arms in a random order, then item2 last, for sure
    chosen, props = policy.select(np.repeat(x, 500, axis=0), ARMS, k=6)
    assert (chosen[:, 5] == 2).all() and len(set(chosen[:, 0].tolist())) == 5
    np.testing.assert_allclose(props[:, :5], 1 / 5)
    np.testing.assert_allclose(props[:, 5], 1.0)


def test_the_same_seed_makes_the_same_decisions_and_another_seed_others():
    x = np.ones((50, 4))
    a = _cold("linucb", seed=5).select(x, ARMS)[0]
    b = _cold("linucb", seed=5).select(x, ARMS)[0]
    c = _cold("linucb", seed=6).select(x, ARMS)[0]
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()


def test_tie_propensities_are_the_frequencies_of_random_tie_breaking():
    scores = np.array([[0.9, 0.5, 0.9, 0.1, 0.5, 0.5]])
    rng = np.random.default_rng(1)
    n, k = 30_000, 4
    freq = np.zeros((6, k))  # item, slot
    for _ in range(n // 1000):
        picks = top_k(np.repeat(scores, 1000, axis=0), k, rng)
        for slot in range(k):
            freq[:, slot] += np.bincount(picks[:, slot], minlength=6)
    freq /= n
    chosen = np.array([[0, 2, 1, 4], [2, 0, 5, 1], [0, 2, 4, 5]])
    expected = tie_propensities(np.repeat(scores, 3, axis=0), chosen)
    # by hand: items 0 and 2 share slots 0-1 (1/2 each), items 1, 4, 5 share slots 2-3 (1/3 each)
    np.testing.assert_allclose(
        expected, [[0.5, 0.5, 1 / 3, 1 / 3], [0.5, 0.5, 1 / 3, 1 / 3], [0.5, 0.5, 1 / 3, 1 / 3]]
    )
    for row in range(3):
        for slot in range(k):
            assert abs(freq[chosen[row, slot], slot] - expected[row, slot]) < 0.015
    assert freq[3].sum() == 0  # the worst item never makes a slate of 4
    np.testing.assert_allclose(greedy_distribution(scores), [[0.5, 0, 0.5, 0, 0, 0]])


def test_without_a_generator_ties_still_go_to_the_lower_position():
    np.testing.assert_array_equal(top_k(np.zeros((2, 3)), 2), [[0, 1], [0, 1]])


@pytest.mark.parametrize("kind", POLICY_KINDS)
def test_discounting_is_per_event_whatever_the_batch_size(kind, request):
    from pipeline.learners.bandits import POLICIES

    def make():
        params = {"gamma": 0.97, "seed": 0}
        if kind.startswith("neural_"):  # contexts only count rows; the item features come from a ranker
            params["checkpoint"] = request.getfixturevalue("ranker_checkpoint")
        elif kind != "beta_ts":
            params["dim"] = 3
        return POLICIES[kind](**params)

    rng = np.random.default_rng(4)
    n = 60
    X = rng.normal(size=(n, 3))
    arms = rng.choice(["a", "b", "c"], n)
    r = (rng.random(n) < 0.4).astype(float)
    w = rng.uniform(0.5, 2.0, n)
    one_by_one, in_batches, whole = make(), make(), make()
    for i in range(n):
        one_by_one.update(X[i : i + 1], arms[i : i + 1], r[i : i + 1], w[i : i + 1])
    for at in range(0, n, 7):
        in_batches.update(X[at : at + 7], arms[at : at + 7], r[at : at + 7], w[at : at + 7])
    whole.update(X, arms, r, w)
    probe = rng.normal(size=(5, 3))
    want = one_by_one.predict_arrays(probe, ["a", "b", "c", "a", "b"])
    for other in (in_batches, whole):
        np.testing.assert_allclose(
            other.predict_arrays(probe, ["a", "b", "c", "a", "b"]), want, rtol=1e-9, atol=1e-12
        )
