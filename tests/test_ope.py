"""Off-policy estimators against hand-computed cases, unbiasedness on a simulated uniform log,
and Li et al.'s replay of a learning policy."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.learners.bandits import EpsilonGreedy, LinUCB
from pipeline.ope import (
    IPS,
    SNIPS,
    DoublyRobust,
    LoggedBandit,
    Replay,
    effective_sample_size,
    evaluate,
    replay_policy,
)

Z95 = 1.959963984540054

# w = π_e / π₀ = [2, 2, 0.5, 0.5]
CASE = LoggedBandit(
    reward=[1.0, 0.0, 1.0, 0.5],
    pscore=[0.5, 0.25, 0.2, 0.5],
    target_prob=[1.0, 0.5, 0.1, 0.25],
    q_hat=[0.5, 0.5, 0.5, 0.5],
    q_target=[0.6, 0.4, 0.3, 0.5],
    action=[0, 1, 2, 1],
    target_action=[0, 2, 2, 0],
)


def test_ips_equals_hand_computed_value_and_interval():
    # rounds w·r = [2, 0, 0.5, 0.25]: mean 0.6875, squared deviations sum to 2.421875
    iv = IPS().estimate_interval(CASE)
    se = math.sqrt(2.421875 / 3 / 4)
    assert iv.value == pytest.approx(0.6875, abs=1e-12)
    assert iv.std_error == pytest.approx(se, abs=1e-12)
    assert (iv.lower, iv.upper) == pytest.approx((0.6875 - Z95 * se, 0.6875 + Z95 * se), abs=1e-9)
    assert iv.ess == pytest.approx(25 / 8.5, abs=1e-12)
    assert iv.n == 4 and iv.method == "normal"


def test_clipped_ips_caps_weights():
    # weights capped at 1: [1, 1, 0.5, 0.5] -> (1 + 0 + 0.5 + 0.25) / 4
    assert IPS(max_weight=1.0).estimate_policy_value(CASE) == pytest.approx(1.75 / 4, abs=1e-12)


def test_snips_equals_hand_computed_value_and_delta_method_error():
    iv = SNIPS().estimate_interval(CASE, alpha=0.1)
    # Σ w r / Σ w = 2.75 / 5; Σ w² (r - V)² = 4·0.2025 + 4·0.3025 + 0.25·0.2025 + 0.25·0.0025
    se = math.sqrt(2.07125) / 5
    z90 = 1.6448536269514722
    assert iv.value == pytest.approx(0.55, abs=1e-12)
    assert iv.std_error == pytest.approx(se, abs=1e-12)
    assert (iv.lower, iv.upper) == pytest.approx((0.55 - z90 * se, 0.55 + z90 * se), abs=1e-9)


def test_dr_equals_hand_computed_value():
    # q_e + w (r - q̂) = [1.6, -0.6, 0.55, 0.5]
    iv = DoublyRobust().estimate_interval(CASE)
    rounds = np.array([1.6, -0.6, 0.55, 0.5])
    assert iv.value == pytest.approx(0.5125, abs=1e-12)
    assert iv.std_error == pytest.approx(rounds.std(ddof=1) / 2, abs=1e-12)


def test_dr_with_exact_reward_model_has_no_residual_term():
    data = LoggedBandit(
        reward=[0.3, 0.7], pscore=[0.5, 0.5], target_prob=[1.0, 0.0], q_hat=[0.3, 0.7], q_target=[0.4, 0.2]
    )
    assert DoublyRobust().estimate_policy_value(data) == pytest.approx(0.3, abs=1e-12)


def test_replay_averages_rewards_of_matching_rounds():
    iv = Replay().estimate_interval(
        LoggedBandit(reward=[1.0, 0.0, 1.0], action=[0, 1, 1], target_action=[0, 1, 0])
    )
    assert iv.value == pytest.approx(0.5, abs=1e-12)
    assert iv.ess == 2.0
    assert iv.std_error == pytest.approx(math.sqrt(0.5) / 2, abs=1e-12)
    assert Replay().estimate_policy_value(CASE) == pytest.approx(1.0, abs=1e-12)


def test_replay_without_matches_is_nan():
    assert math.isnan(
        Replay().estimate_policy_value(LoggedBandit(reward=[1.0], action=[0], target_action=[1]))
    )


def test_effective_sample_size_of_uniform_weights_is_n():
    assert effective_sample_size(np.full(7, 0.3)) == pytest.approx(7.0, abs=1e-12)
    assert effective_sample_size(np.zeros(3)) == 0.0


def test_evaluate_runs_every_applicable_estimator_over_the_same_data():
    out = evaluate(CASE)
    assert list(out) == ["IPS", "SNIPS", "DR", "Replay"]
    assert out["SNIPS"].value == pytest.approx(0.55, abs=1e-12)
    assert list(evaluate(LoggedBandit(reward=[1.0], pscore=[0.5], target_prob=[1.0]))) == ["IPS", "SNIPS"]


def test_bootstrap_interval_is_seeded_and_close_to_normal_on_large_log():
    rng = np.random.default_rng(0)
    n = 4000
    data = LoggedBandit(reward=rng.random(n), pscore=np.full(n, 0.25), target_prob=rng.random(n))
    a = IPS().estimate_interval(data, method="bootstrap", n_bootstrap=300, seed=4)
    b = IPS().estimate_interval(data, method="bootstrap", n_bootstrap=300, seed=4)
    normal = IPS().estimate_interval(data)
    assert a == b
    assert a.lower < a.value < a.upper
    assert a.std_error == pytest.approx(normal.std_error, rel=0.15)


def test_snips_bootstrap_renormalises_each_resample():
    data = LoggedBandit(reward=[1.0, 1.0, 1.0], pscore=[0.5, 0.5, 0.5], target_prob=[1.0, 0.2, 0.0])
    iv = SNIPS().estimate_interval(data, method="bootstrap", n_bootstrap=200, seed=1)
    # every resample with a positive weight estimates exactly 1 (all rewards are 1)
    assert iv.lower == pytest.approx(1.0) and iv.upper == pytest.approx(1.0)


def test_ips_is_unbiased_on_simulated_uniform_log():
    rng = np.random.default_rng(12)
    n, k = 200_000, 5
    x = rng.random(n)
    rates = np.clip(0.1 + 0.15 * np.arange(k)[None, :] * x[:, None], 0, 1)  # [n, k]
    logged = rng.integers(0, k, n)
    reward = (rng.random(n) < rates[np.arange(n), logged]).astype(float)
    # target: arm 4 when x > 0.5 else a uniform choice among arms 0 and 1
    target = np.zeros((n, k))
    target[x > 0.5, 4] = 1.0
    target[x <= 0.5, :2] = 0.5
    truth = float((target * rates).sum(1).mean())
    data = LoggedBandit(reward=reward, pscore=np.full(n, 1 / k), target_prob=target[np.arange(n), logged])
    for est in (IPS(), SNIPS()):
        iv = est.estimate_interval(data)
        assert abs(iv.value - truth) < 3 * iv.std_error, est.name
        assert iv.std_error < 0.005


def test_replay_policy_hand_computed_learning_trace():
    # LinUCB with alpha=0, warmed on one reward of a (θ_a = 1/2; b untried at 0, so no ties).
    # Round 0: picks a, logged a, r=0 (θ_a = 1/3). Round 1: picks a, logged b: skipped.
    # Round 2: picks a, logged a, r=1 (θ_a = 2/4). Round 3: picks a, logged b: skipped.
    # Value = mean(0, 1).
    policy = LinUCB(dim=1, alpha=0.0)
    policy.update(np.ones((1, 1)), np.array(["a"]), np.array([1.0]))
    iv = replay_policy(
        policy, np.ones((4, 1)), np.array(["a", "b"]), np.array([0, 1, 0, 1]), [0.0, 1.0, 1.0, 0.0]
    )
    assert iv.value == 0.5 and iv.ess == 2.0
    assert policy.predict_arrays(np.ones((1, 1)), ["a"])[0] == pytest.approx(1 / 2, abs=1e-12)
    # b was only ever a candidate, never learned from: deciding adds no arm
    assert policy.arm_ids == ["a"] and policy.state().tables["arms"]["pulls"].to_pylist() == [3]


def test_replay_policy_of_learning_policy_beats_uniform_on_random_log():
    rng = np.random.default_rng(3)
    n, k = 6000, 4
    rates = np.array([0.1, 0.2, 0.6, 0.3])
    actions = rng.integers(0, k, n)
    rewards = (rng.random(n) < rates[actions]).astype(float)
    iv = replay_policy(
        EpsilonGreedy(dim=1, epsilon=0.1, seed=0),
        np.ones((n, 1)),
        np.arange(k),
        actions,
        rewards,
        batch_size=20,
    )
    assert 0.5 < iv.value < 0.62  # close to the best arm's 0.6, far above the log's 0.3
    assert 1000 < iv.ess < 2000  # about n / k matches


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"reward": [np.nan]}, "reward must be finite"),
        ({"reward": [[1.0]]}, "reward must be 1-D"),
        ({"reward": [1.0], "pscore": [0.0]}, r"pscore must lie in \(0, 1\]"),
        ({"reward": [1.0], "target_prob": [1.5]}, r"target_prob must lie in \[0, 1\]"),
        ({"reward": [1.0, 0.0], "q_hat": [0.5]}, "q_hat must have length 2"),
        ({"reward": [1.0], "action": [0, 1]}, r"action must have shape \(1,\)"),
    ],
)
def test_logged_bandit_rejects_invalid_arrays_naming_them(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LoggedBandit(**kwargs)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda: DoublyRobust().estimate_policy_value(LoggedBandit([1.0], [0.5], [1.0])),
            "q_hat is required by DR",
        ),
        (
            lambda: Replay().estimate_policy_value(LoggedBandit([1.0])),
            "action is required",
        ),
        (lambda: IPS().estimate_interval(CASE, alpha=1.5), "alpha"),
        (lambda: IPS().estimate_interval(CASE, method="exact"), "method"),
        (lambda: IPS().estimate_interval(CASE, method="bootstrap", n_bootstrap=1), "n_bootstrap"),
        (lambda: IPS(max_weight=0), "max_weight"),
        (lambda: evaluate(CASE, [IPS(), IPS()]), "distinct names"),
        (
            lambda: replay_policy(LinUCB(dim=1), np.ones((2, 1)), ["a"], np.array([0.5, 0.5]), [1, 1]),
            "actions",
        ),
        (
            lambda: replay_policy(
                LinUCB(dim=1), np.ones((2, 1)), ["a"], np.array([0, 0]), [1, 1], batch_size=0
            ),
            "batch_size",
        ),
    ],
)
def test_estimators_reject_invalid_arguments_naming_them(call, match):
    with pytest.raises(ValueError, match=match):
        call()
