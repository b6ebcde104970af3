"""Neural-linear policies: explore around a pretrained neural ranker with a linear model on its last layer.

A ranker pretrained offline (``streamlearn pretrain``) already ranks well; a bandit that starts
from nothing spends thousands of decisions relearning what the ranker knows, and per-item models
share nothing. Neural-linear (Riquelme et al., ICLR 2018, "Deep Bayesian Bandits Showdown") keeps
the network as a frozen representation and puts an exact Bayesian linear model on its last hidden
layer, which explores where the network's representation is uncertain. Here the linear model
also starts *at* the ranker: its prior mean is the ranker's own prediction, so before any
feedback the policy decides as the ranker does, and feedback learns only the correction.

For a (context, item) pair with the ranker's last hidden layer ``h`` (cross network and MLP,
:meth:`~pipeline.learners.neural.NeuralRanker.representation`), head weights ``w`` and click
probability ``p``, the pair's item features are

    ``a = [w ⊙ h, p]``  (``action_dim = representation_width + 1``),

the terms of the ranker's logit ``wᵀh + b`` (so every slot is in logit units, whatever scale
training left ``h`` at, and the ridge prior shrinks every term alike; fixed by the checkpoint, so
workers and restarts agree) and the probability itself. The estimated reward is

    ``p + [1, a]ᵀβ``  (a shared ridge model, prior ``N(0, λ⁻¹I)`` on ``β``),

learned from ``r - p``: the residual of the ranker. The shared model is the hybrid one of
:mod:`.hybrid` with a constant context ``[1]``; ``per_arm`` adds a scalar bias per item.
:class:`NeuralLinUCB` chooses by the upper confidence bound of that estimate,
:class:`NeuralThompson` by a draw from its posterior.

The ranker is loaded once (``torch.load(weights_only=True)``) and frozen: the statistics live in
its representation. A snapshot records the checkpoint's path and SHA-256 and is refused by a
policy with another file. Decisions need no context: every pair's features come from the
ranker, which reads the event's (or the request's) user, item and features.

Measured on the project's simulator (``benchmarks/bandits_peers.py``, 40,000 requests of 10
candidates after a 200,000-event log, 3 seeds): see the README's bandits section.

Examples
--------
>>> import tempfile, pathlib
>>> from pipeline.events import decode_json, EventRules
>>> from pipeline.features import Featurizer
>>> from pipeline.learners.neural import NeuralRanker, pretrain
>>> raw = [b'{"event_id":"e%d","ts":%d,"user_id":"u%d","item_id":"i%d","label":%d}'
...        % (i, i, i % 5, i % 3, (i % 5 + i % 3) % 2) for i in range(600)]
>>> fb = Featurizer().transform(decode_json(raw, EventRules())[0])
>>> ranker = NeuralRanker(dim=4, user_rows=16, item_rows=8, feature_rows=8, hidden=(8,))
>>> _ = pretrain(ranker, [fb], epochs=2, batch_size=100, val_fraction=0.0)
>>> path = ranker.save_checkpoint(pathlib.Path(tempfile.mkdtemp()) / "ranker.ckpt")
>>> policy = NeuralLinUCB(checkpoint=str(path), alpha=0.0)
>>> bool(np.allclose(policy.predict(fb), ranker.predict(fb)))  # nothing learned: the ranker's own
True
>>> policy.learn(fb)
>>> policy.predict(fb).shape, policy.n_arms
((600,), 3)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.features import FeatureBatch
from pipeline.learners.bandits.base import DEFAULT_DRIFT_DELTA
from pipeline.learners.bandits.embeddings import load_frozen_ranker
from pipeline.learners.bandits.hybrid import HybridLinear, HybridLinUCB, HybridThompson

__all__ = ["NeuralLinUCB", "NeuralLinear", "NeuralThompson"]


class NeuralLinear(HybridLinear):
    """What :class:`NeuralLinUCB` and :class:`NeuralThompson` share: the frozen ranker, the pair
    features and the ranker's prediction as the prior mean.

    Parameters
    ----------
    checkpoint
        Path of a ``streamlearn pretrain`` checkpoint (required): the ranker explored around.
    per_arm
        Add a per-item bias to the shared model (Li et al.'s hybrid model with a constant context).
    lam
        Ridge prior (> 0) of the correction's weights: how much feedback it takes to move away
        from the ranker.
    gamma, seed, importance_weighting, max_weight, gauge_window, reset_on_drift, drift_delta, name
        See :class:`~pipeline.learners.bandits.base.BanditPolicy`; discounting and a drift reset
        move the correction back to zero, i.e. the policy back to the ranker.

    Notes
    -----
    The live value gauge (:meth:`gauges`) and ``streamlearn evaluate`` score a logged event's
    other candidates with the features each item was last learned with (another user's pair, as
    for the hybrid policies' item features); decisions (:meth:`select`, serving) compute every
    candidate's own.
    """

    #: the context is the constant [1]: a decision needs none
    uses_context = False

    def __init__(
        self,
        checkpoint: str | None = None,
        per_arm: bool = False,
        lam: float = 1.0,
        gamma: float = 1.0,
        seed: int = 0,
        importance_weighting: bool = False,
        max_weight: float = 100.0,
        gauge_window: int = 10_000,
        reset_on_drift: bool = True,
        drift_delta: float = DEFAULT_DRIFT_DELTA,
        name: str | None = None,
        **policy_params: Any,
    ):
        if checkpoint is None:
            raise ValueError(
                "checkpoint is required: the path of a `streamlearn pretrain` checkpoint (the ranker explored around)"
            )
        ranker, digest = load_frozen_ranker(checkpoint, "checkpoint")
        super().__init__(
            dim=1,
            action_dim=ranker.spec.representation_width + 1,
            per_arm=per_arm,
            lam=lam,
            gamma=gamma,
            seed=seed,
            importance_weighting=importance_weighting,
            max_weight=max_weight,
            gauge_window=gauge_window,
            reset_on_drift=reset_on_drift,
            drift_delta=drift_delta,
            name=name,
            **policy_params,
        )
        self.checkpoint = str(checkpoint)
        self._ranker, self._sha256 = ranker, digest
        self._head = ranker._model.head.weight.detach().numpy().astype(np.float64).reshape(-1)

    # -- inputs ---------------------------------------------------------------------------------------
    def pair_features(self, batch: FeatureBatch) -> np.ndarray:
        """``[n, action_dim]``: ``[w ⊙ h, p]`` of every event's (user, item, features), from the ranker."""
        p, h = self._ranker.predict_with_representation(batch)
        return np.concatenate([h.astype(np.float64) * self._head, p[:, None]], axis=1)

    def batch_action_features(self, batch: FeatureBatch) -> np.ndarray:
        return self.pair_features(batch)

    def batch_contexts(self, batch: FeatureBatch) -> np.ndarray:
        return np.ones((len(batch), 1))

    def _check_contexts(self, contexts, n: int | None = None) -> np.ndarray:
        # any contexts given only say how many rows there are: the context is the constant [1]
        return np.ones((super()._check_contexts(contexts, n).shape[0], 1))

    def _prior_mean(self, X: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """The ranker's probability of each pair (the last item-feature slot), ``[n, m]``."""
        return self._split(X, rows)[1][..., -1]

    # -- the ranker as the prior mean -----------------------------------------------------------------
    def _mean_var(self, X: np.ndarray, rows: np.ndarray, need_var: bool = True):
        mean, var = super()._mean_var(X, rows, need_var)
        return mean + self._prior_mean(X, rows), var

    def _update_stats(
        self, X: np.ndarray, rows: np.ndarray, rewards: np.ndarray, weights: np.ndarray
    ) -> None:
        if X.shape[1] > self.dim:
            offset = X[:, -1]
        else:  # no features given: the arm's remembered ones, as the hybrid statistics take them
            offset = self._act[rows, -1]
        super()._update_stats(X, rows, rewards - offset, weights)

    def embedding_meta(self) -> dict[str, Any]:
        """What a snapshot records of the ranker: its path and file digest (checked on restore)."""
        return {"checkpoint": self.checkpoint, "parts": ["representation"], "sha256": self._sha256}


class NeuralLinUCB(NeuralLinear, HybridLinUCB):
    """Neural-linear UCB: top-k of ``p + [1, a]ᵀβ + α·sqrt(variance)`` (see the module docstring).

    Deterministic; tied scores in a random order with the policy's generator.

    Parameters
    ----------
    checkpoint
        Path of a ``streamlearn pretrain`` checkpoint (required).
    alpha
        Width of the confidence bound (>= 0; 0 is greedy on the corrected estimate).
    per_arm, lam, gamma, seed, importance_weighting, max_weight, gauge_window, reset_on_drift,
    drift_delta, name
        See :class:`NeuralLinear`.
    """

    kind = "neural_linucb"

    def __init__(
        self,
        checkpoint: str | None = None,
        alpha: float = 0.5,
        per_arm: bool = False,
        lam: float = 1.0,
        gamma: float = 1.0,
        seed: int = 0,
        importance_weighting: bool = False,
        max_weight: float = 100.0,
        gauge_window: int = 10_000,
        reset_on_drift: bool = True,
        drift_delta: float = DEFAULT_DRIFT_DELTA,
        name: str | None = None,
    ):
        super().__init__(
            checkpoint,
            per_arm=per_arm,
            lam=lam,
            gamma=gamma,
            seed=seed,
            importance_weighting=importance_weighting,
            max_weight=max_weight,
            gauge_window=gauge_window,
            reset_on_drift=reset_on_drift,
            drift_delta=drift_delta,
            name=name,
            alpha=alpha,
        )


class NeuralThompson(NeuralLinear, HybridThompson):
    """Neural-linear Thompson sampling: a draw of ``p + [1, a]ᵀβ̃`` from the posterior per decision.

    Parameters
    ----------
    checkpoint
        Path of a ``streamlearn pretrain`` checkpoint (required).
    v, n_mc
        Posterior scale and Monte-Carlo draws per decision for the propensity, as in
        :class:`~pipeline.learners.bandits.hybrid.HybridThompson`.
    per_arm, lam, gamma, seed, importance_weighting, max_weight, gauge_window, reset_on_drift,
    drift_delta, name
        See :class:`NeuralLinear`.
    """

    kind = "neural_ts"

    def __init__(
        self,
        checkpoint: str | None = None,
        v: float = 0.3,
        n_mc: int = 32,
        per_arm: bool = False,
        lam: float = 1.0,
        gamma: float = 1.0,
        seed: int = 0,
        importance_weighting: bool = False,
        max_weight: float = 100.0,
        gauge_window: int = 10_000,
        reset_on_drift: bool = True,
        drift_delta: float = DEFAULT_DRIFT_DELTA,
        name: str | None = None,
    ):
        super().__init__(
            checkpoint,
            per_arm=per_arm,
            lam=lam,
            gamma=gamma,
            seed=seed,
            importance_weighting=importance_weighting,
            max_weight=max_weight,
            gauge_window=gauge_window,
            reset_on_drift=reset_on_drift,
            drift_delta=drift_delta,
            name=name,
            v=v,
            n_mc=n_mc,
        )

    def _sampler(self, X: np.ndarray, rows: np.ndarray, rng: np.random.Generator):
        draw, mean = super()._sampler(X, rows, rng)
        prior = self._prior_mean(X, rows)
        return (lambda s: draw(s) + prior), mean + prior
