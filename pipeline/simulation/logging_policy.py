"""The logging policy that produced the simulated log, with exact propensities.

It is a frozen, imperfect model: a noisy copy of the world's *initial* preference vectors and
popularity (items that arrive later score as an average item), plus the exact context effects.
Its scores are never refreshed, so drifts make it worse, as they would a deployed model.

How the propensities are computed (exact, in (0, 1]):

* Lead item (position 0), and the only item in the default top-1 mode: for the ``K`` candidates
  of a request, ``p_i = (1 - epsilon) * softmax(score / temperature)_i + epsilon / K``; the item is
  drawn from ``p`` by inverse CDF and its propensity is ``p_i``, the probability of that choice
  given the request.
* Slates (``slate_size > 1``): positions ``1 .. k-1`` are filled with a uniformly random ordering
  of the other candidates, so the probability that item ``i`` is shown at position ``j >= 1`` is
  ``sum_{m != i} p_m / (K - 1) = (1 - p_i) / (K - 1)``, which is the recorded propensity.

Either way the propensity is the probability that the logging policy put *that item at that
position*, so ``E[1 / propensity] = K`` at every position, a check the tests use.

>>> from pipeline.simulation.config import SimConfig
>>> from pipeline.simulation.environment import Environment
>>> env = Environment(SimConfig(seed=3, n_users=20, n_items=8, n_candidates=4))
>>> policy = LoggingPolicy(env.world)
>>> ctx = env.contexts(3)
>>> p = policy.probabilities(ctx)
>>> p.shape, bool(np.allclose(p.sum(axis=1), 1.0)), bool((p >= 0.05 / 4).all())
((3, 4), True, True)
"""

from __future__ import annotations

import numpy as np

from pipeline.simulation.world import STREAM_LOGGING, STREAM_LOGMODEL, World, rng_for

__all__ = ["LoggingPolicy"]


class LoggingPolicy:
    """Softmax-with-temperature over stale noisy scores, mixed with epsilon-uniform exploration.

    Parameters
    ----------
    world
        The world whose initial state the policy's model was fitted to; ``temperature``,
        ``epsilon``, ``logging_noise`` and ``seed`` come from its config.
    """

    def __init__(self, world: World):
        c = world.config
        self.world = world
        self.temperature = c.temperature
        self.epsilon = c.epsilon
        model_rng = rng_for(c.seed, STREAM_LOGMODEL)
        first = world.epochs[0]
        known = c.n_items
        noise = c.logging_noise
        self._user_vec = first.user_from + model_rng.normal(0.0, noise * world.sigma, first.user_from.shape)
        self._item_vec = np.zeros_like(world.item_vec)
        self._item_vec[:known] = world.item_vec[:known] + model_rng.normal(
            0.0, noise * world.sigma, (known, c.dim)
        )
        self._popularity = np.full(len(world.item_vec), float(first.popularity[:known].mean()))
        self._popularity[:known] = first.popularity[:known] + model_rng.normal(
            0.0, noise * c.popularity_scale, known
        )
        self._rng = rng_for(c.seed, STREAM_LOGGING)

    def scores(self, ctx) -> np.ndarray:
        """The policy's logits for every candidate, ``(n, K)``."""
        cand = ctx.candidates
        w = self.world
        pref = np.einsum("nd,nkd->nk", self._user_vec[ctx.user], self._item_vec[cand])
        return (
            w.config.preference_scale * pref
            + self._popularity[cand]
            + w.context_logit(ctx.user, ctx.device, ctx.hour, cand)
        )

    def probabilities(self, ctx) -> np.ndarray:
        """Probability of each candidate being the lead item, ``(n, K)``; rows sum to 1."""
        z = self.scores(ctx) / self.temperature
        z -= z.max(axis=1, keepdims=True)
        soft = np.exp(z)
        soft /= soft.sum(axis=1, keepdims=True)
        k = soft.shape[1]
        return (1.0 - self.epsilon) * soft + self.epsilon / k

    def select(self, ctx, slate_size: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Choose a slate per request: ``(items[n, slate_size], propensities[n, slate_size])``."""
        p = self.probabilities(ctx)
        n, k = p.shape
        if not 1 <= slate_size <= k:
            raise ValueError(f"slate_size must be in [1, {k}], got {slate_size}")
        cum = np.cumsum(p, axis=1)
        u = self._rng.random(n) * cum[:, -1]
        lead = np.minimum((cum <= u[:, None]).sum(axis=1), k - 1)
        rows = np.arange(n)
        cols = lead[:, None]
        props = p[rows, lead][:, None]
        if slate_size > 1:
            keys = self._rng.random((n, k))
            keys[rows, lead] = -1.0  # the lead sorts first; the others in uniformly random order
            cols = np.argsort(keys, axis=1)[:, :slate_size]
            rest = (1.0 - p[rows[:, None], cols[:, 1:]]) / (k - 1)
            props = np.concatenate([props, rest], axis=1)
        return ctx.candidates[rows[:, None], cols], props
