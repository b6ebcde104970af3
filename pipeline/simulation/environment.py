"""The closed-loop environment: draw requests, let a policy choose, get true click probabilities and rewards.

The same object drives the logged stream (with the logging policy choosing) and bandit benchmarks
(with the policy under test choosing), so logs and closed-loop runs share one ground truth.

Time is counted in events, as drifts are scheduled: :meth:`Environment.contexts` draws ``n``
requests and advances the clock by ``n * slate_size`` events; every request carries the event
index ``t`` of its first shown item, and :meth:`~Environment.reward_probabilities` answers for the
world at that ``t``, whenever it is asked.

Examples
--------
A uniform-random policy for 1000 requests, its expected reward and its regret against the best
candidate:

>>> from pipeline.simulation.config import SimConfig
>>> env = Environment(SimConfig(seed=1, n_users=50, n_items=20, n_candidates=5))
>>> ctx = env.contexts(1000)
>>> ctx.candidates.shape, env.clock
((1000, 5), 1000)
>>> choice = ctx.candidates[np.arange(1000), np.random.default_rng(0).integers(5, size=1000)]
>>> p = env.reward_probabilities(ctx, choice)
>>> rewards = env.step(ctx, choice)
>>> best_items, best_p = env.best(ctx)
>>> round(float(p.mean()), 3), round(float(rewards.mean()), 3), round(float((best_p - p).mean()), 3)
(0.202, 0.219, 0.23)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pipeline.simulation.config import SimConfig
from pipeline.simulation.records import build_batch
from pipeline.simulation.world import (
    _HOME_DEVICE_P,
    DEVICES,
    STREAM_REWARD,
    STREAM_TRAFFIC,
    World,
    rng_for,
)

__all__ = ["Contexts", "Environment", "sample_without_replacement"]

_MS_PER_HOUR = 3_600_000


@dataclass(frozen=True)
class Contexts:
    """A batch of ``n`` requests (all arrays have length ``n``; ``candidates`` is ``(n, n_candidates)``).

    Attributes
    ----------
    t
        Event index of the request's first shown item (what drifts are scheduled in).
    request
        Request number (``request_id`` is ``"r<request>"``).
    ts
        Event time, ms since the epoch.
    user, device, hour
        User index (``user_id`` is ``"u<user>"``), index into :data:`DEVICES`, local hour 0-23.
    candidates
        Item indices (``item_id`` is ``"i<item>"``), distinct within a row.
    """

    t: np.ndarray
    request: np.ndarray
    ts: np.ndarray
    user: np.ndarray
    device: np.ndarray
    hour: np.ndarray
    candidates: np.ndarray

    def __len__(self) -> int:
        return len(self.t)


def sample_without_replacement(rng: np.random.Generator, n_pool: np.ndarray, k: int) -> np.ndarray:
    """``k`` distinct integers from ``range(n_pool[r])`` for every row ``r``, in uniformly random order.

    Floyd's algorithm vectorised over rows: ``k`` passes, each an ``(n, j)`` membership test, whatever
    the pool size; then a random shuffle of each row.

    >>> out = sample_without_replacement(np.random.default_rng(0), np.array([5, 3]), 3)
    >>> [sorted(r) for r in out.tolist()][1]
    [0, 1, 2]
    """
    n_pool = np.asarray(n_pool, dtype=np.int64)
    if (n_pool < k).any():
        raise ValueError(f"k must be <= every pool size, got k={k} and pool {int(n_pool.min())}")
    out = np.empty((len(n_pool), k), dtype=np.int64)
    u = rng.random((len(n_pool), k))
    for j in range(k):
        top = n_pool - k + j  # draw from [0, top]; on a repeat take `top` itself, never drawn before
        r = np.minimum((u[:, j] * (top + 1)).astype(np.int64), top)
        seen = (out[:, :j] == r[:, None]).any(axis=1)
        out[:, j] = np.where(seen, top, r)
    # Floyd's set is uniform but its order is not (late slots favour high numbers, i.e. new items)
    order = np.argsort(rng.random(out.shape), axis=1)
    return np.take_along_axis(out, order, axis=1)


class Environment:
    """Requests, ground-truth click probabilities and sampled rewards under the drift schedule.

    Parameters
    ----------
    config
        The simulated world (default :class:`SimConfig()`).
    world
        An already built world for ``config`` (to share it between environments).
    """

    def __init__(self, config: SimConfig | None = None, *, world: World | None = None):
        self.config = config or SimConfig()
        self.world = world if world is not None else World(self.config)
        if self.world.config != self.config:
            raise ValueError("world must be built from the same config")
        self._traffic = rng_for(self.config.seed, STREAM_TRAFFIC)
        self._reward = rng_for(self.config.seed, STREAM_REWARD)
        self._requests = 0
        self._clock_ms = 0.0

    @property
    def clock(self) -> int:
        """Events issued so far (= event index of the next request)."""
        return self._requests * self.config.slate_size

    @property
    def drift_points(self) -> tuple[int, ...]:
        """Event indices at which the scheduled drifts start."""
        return tuple(d.at_event for d in self.config.drifts)

    def active_items(self, t: int | None = None) -> np.ndarray:
        """Indices of the items that can be candidates at event index ``t`` (default: now)."""
        return np.arange(self.world.n_active(self.clock if t is None else t), dtype=np.int64)

    def contexts(self, n: int) -> Contexts:
        """Draw the next ``n`` requests (users by activity, device, time, candidates); advances the clock."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        c, w, rng = self.config, self.world, self._traffic
        request = self._requests + np.arange(n, dtype=np.int64)
        t = request * c.slate_size
        clock = self._clock_ms + np.cumsum(rng.exponential(c.mean_gap_ms, n))
        self._clock_ms = float(clock[-1]) if n else self._clock_ms
        late = rng.random(n) < c.late_fraction
        lateness = rng.integers(1, c.max_lateness_ms + 1, size=n)
        ts = c.start_ts + clock.astype(np.int64) - np.where(late, lateness, 0)
        user = np.searchsorted(w.user_activity_cdf, rng.random(n) * w.user_activity_cdf[-1], side="right")
        roam = rng.random(n) >= _HOME_DEVICE_P
        device = np.where(roam, rng.integers(len(DEVICES), size=n), w.user_device[user])
        hour = (ts // _MS_PER_HOUR + w.user_tz[user]) % 24
        n_active = np.array([e.n_active for e in w.epochs])[w.epoch_index(t)]
        candidates = sample_without_replacement(rng, n_active, c.n_candidates)
        self._requests += n
        return Contexts(t, request, ts, user, device.astype(np.int64), hour.astype(np.int64), candidates)

    def reward_probabilities(
        self, ctx: Contexts, items: np.ndarray, positions: np.ndarray | None = None
    ) -> np.ndarray:
        """True click probabilities of showing ``items`` in ``ctx`` at the world of ``ctx.t``.

        ``items`` is ``(n,)`` (shown at position 0) or ``(n, k)`` (a slate, positions ``0 .. k-1``
        unless ``positions`` says otherwise); the result has the shape of ``items``.
        """
        items2 = self._check_items(ctx, items)
        pos = (
            np.arange(items2.shape[1])
            if positions is None
            else np.asarray(positions).reshape(-1, items2.shape[1])
        )
        w = self.world
        p = w.click_probability(ctx.t, ctx.user, ctx.device, ctx.hour, items2, pos)
        return p.reshape(np.shape(items))

    def step(self, ctx: Contexts, items: np.ndarray) -> np.ndarray:
        """Show ``items`` (as in :meth:`reward_probabilities`) and sample 0/1 rewards (float64)."""
        p = self.reward_probabilities(ctx, items)
        return (self._reward.random(p.shape) < p).astype(np.float64)

    def best(self, ctx: Contexts) -> tuple[np.ndarray, np.ndarray]:
        """The best candidate of each request at position 0 and its click probability (for regret)."""
        p = self.reward_probabilities(
            ctx, ctx.candidates, positions=np.zeros(ctx.candidates.shape[1], np.int64)
        )
        j = p.argmax(axis=1)
        rows = np.arange(len(ctx))
        return ctx.candidates[rows, j], p[rows, j]

    def records(
        self,
        ctx: Contexts,
        items: np.ndarray,
        labels: np.ndarray | None = None,
        propensities: np.ndarray | None = None,
    ) -> pa.RecordBatch:
        """Events (in the simulator's Arrow schema) for ``items`` shown in ``ctx``, for the featuriser.

        Labels default to 0 and propensities to null (e.g. to score every candidate).
        """
        items2 = self._check_items(ctx, items)
        labels2 = (
            np.zeros(items2.shape) if labels is None else np.asarray(labels, np.float64).reshape(items2.shape)
        )
        props = None if propensities is None else np.asarray(propensities, np.float64).reshape(items2.shape)
        return build_batch(self.world, ctx, items2, labels2, props)

    def _check_items(self, ctx: Contexts, items: np.ndarray) -> np.ndarray:
        items = np.asarray(items)
        if items.ndim not in (1, 2) or items.shape[0] != len(ctx):
            raise ValueError(f"items must have shape (n,) or (n, k) with n = {len(ctx)}, got {items.shape}")
        if items.size and (items.min() < 0 or items.max() >= self.config.n_items_total):
            raise ValueError(
                f"items must be item indices in [0, {self.config.n_items_total}), got {items.min()}..{items.max()}"
            )
        return items.reshape(len(ctx), -1).astype(np.int64, copy=False)
