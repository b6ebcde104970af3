"""The bandits' array API without friction: ids out, context-free selects without a context."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.learners.bandits import POLICIES, BetaThompson, LinUCB


def test_choose_answers_with_the_candidates_themselves():
    policy = LinUCB(dim=2, seed=0)
    policy.update(np.ones((5, 2)), np.array(["b"] * 5), np.ones(5))
    x = np.ones((4, 2))
    chosen, props = policy.select(x, np.array(["a", "b", "c"]), k=2)
    policy2 = LinUCB(dim=2, seed=0)
    policy2.update(np.ones((5, 2)), np.array(["b"] * 5), np.ones(5))
    items, props2 = policy2.choose(x, np.array(["a", "b", "c"]), k=2)
    np.testing.assert_array_equal(items, np.array(["a", "b", "c"])[chosen])
    np.testing.assert_array_equal(props, props2)
    per_row = np.array([["a", "b"], ["c", "d"], ["e", "f"], ["g", "h"]])
    items, _ = LinUCB(dim=2, seed=1).choose(x, per_row)
    assert [items[i, 0] in per_row[i] for i in range(4)] == [True] * 4


def test_a_context_free_policy_selects_without_a_context():
    policy = BetaThompson(seed=0, n_mc=0)
    policy.update(None, np.array(["a", "b"]), np.array([1.0, 0.0]))
    chosen, _ = policy.select(None, np.array(["a", "b", "c"]))
    assert chosen.shape == (1, 1)
    chosen, _ = policy.select(None, np.array([["a", "b"], ["b", "c"], ["a", "c"]]))
    assert chosen.shape == (3, 1)
    probs, _ = policy.distribution(None, np.array(["a", "b"]))
    assert probs.shape == (1, 2) and probs.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("kind", sorted(k for k, cls in POLICIES.items() if cls.uses_context))
def test_a_contextual_policy_asked_without_a_context_says_what_it_needs(kind):
    with pytest.raises(ValueError, match=r"needs contexts of shape \[n, dim=3\]"):
        POLICIES[kind](dim=3).select(None, np.array(["a"]))
