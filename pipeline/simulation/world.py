"""The simulated world: users, items, context effects and the true click probability at any event index.

The truth is a pure function of ``(t, user, device, hour, item, position)``, where ``t`` is the
event index of the request (drifts are scheduled in events):

    logit = base + preference_scale * u(t) . v_item + popularity(t)[item]
            + device_category[device, cat] + hour_amp[cat] * cos(2 pi (hour - hour_phase[cat]) / 24)
            - price_sensitivity[user] * log(price[item] / 12)
    P(click) = eta + (1 - 2 eta) * exam(position) * sigmoid(logit),   exam(pos) = 1 / log2(2 + pos)

``eta`` is the label noise (a click flips with probability eta). Preference drifts rotate every
user vector towards an independent one, ``u(t) = cos(a(t)) u_from + sin(a(t)) u_to`` with
``a(t) = strength * pi/2 * ramp(t)`` (a step for ``abrupt``, linear over ``span`` for ``gradual``),
which keeps the scale of ``u . v`` constant. The world is rebuilt in *epochs*, one per drift, so the
probability at any ``t`` can be asked at any time (the environment and the stream share it).

>>> from pipeline.simulation.config import SimConfig, Drift
>>> w = World(SimConfig(n_users=5, n_items=4, n_candidates=2, drifts=(Drift(10, "new_items", n_items=2),)))
>>> [w.n_active(t) for t in (0, 9, 10)]
[4, 4, 6]
>>> w.item_ids(np.array([0, 5])).to_pylist()
['i0', 'i5']
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.simulation.config import PREFERENCE_KINDS, SimConfig

__all__ = ["CATEGORIES", "DEVICES", "Epoch", "World", "examination"]

DEVICES = ("ios", "android", "web")
CATEGORIES = ("books", "electronics", "fashion", "food", "games", "home", "music", "sports")
_DEVICE_SHARE = (0.45, 0.35, 0.20)
_HOME_DEVICE_P = 0.8
_MEDIAN_PRICE = 12.0

# Independent random streams, one per purpose, so that e.g. injecting invalid records or changing the
# lateness never changes the world or the traffic.
(
    STREAM_WORLD,
    STREAM_DRIFT,
    STREAM_TRAFFIC,
    STREAM_REWARD,
    STREAM_LOGGING,
    STREAM_INVALID,
    STREAM_LOGMODEL,
    STREAM_DELAY,
) = range(8)


def rng_for(seed: int, *key: int) -> np.random.Generator:
    """The generator of one purpose (``key``) under ``seed``."""
    return np.random.default_rng(np.random.SeedSequence([seed, *key]))


def examination(position: np.ndarray) -> np.ndarray:
    """Probability that a user looks at the given position: ``1 / log2(2 + position)``.

    >>> examination(np.array([0, 1, 2])).round(3).tolist()
    [1.0, 0.631, 0.5]
    """
    return 1.0 / np.log2(2.0 + np.asarray(position, dtype=np.float64))


@dataclasses.dataclass(frozen=True)
class Epoch:
    """The drifting part of the world from event ``start`` on (until the next epoch)."""

    start: int
    user_from: np.ndarray
    user_to: np.ndarray | None
    ramp_start: int
    ramp_span: int
    angle: float
    n_active: int
    popularity: np.ndarray

    def angles(self, t: np.ndarray) -> np.ndarray:
        """Rotation angle of the user vectors at event indices ``t`` (inside this epoch)."""
        if self.ramp_span == 0:
            return np.full(len(t), self.angle)
        return self.angle * np.clip((t - self.ramp_start) / self.ramp_span, 0.0, 1.0)

    def final_users(self) -> np.ndarray:
        """User vectors once this epoch's ramp is complete."""
        if self.user_to is None:
            return self.user_from
        return math.cos(self.angle) * self.user_from + math.sin(self.angle) * self.user_to


class World:
    """Static attributes of users and items, and the epochs that the drift schedule creates."""

    def __init__(self, config: SimConfig):
        self.config = config
        c = config
        rng = rng_for(c.seed, STREAM_WORLD)
        n_total, n_cat = c.n_items_total, len(CATEGORIES)
        # entries of N(0, sigma) with sigma = dim^-1/4 give u . v a unit standard deviation
        self.sigma = c.dim**-0.25
        self.item_category = rng.integers(n_cat, size=n_total)
        centers = rng.normal(0.0, self.sigma, (n_cat, c.dim))
        self.item_vec = math.sqrt(0.6) * centers[self.item_category] + math.sqrt(0.4) * rng.normal(
            0.0, self.sigma, (n_total, c.dim)
        )
        self.item_price = np.round(np.exp(rng.normal(math.log(_MEDIAN_PRICE), 0.6, n_total)), 2)
        popularity = rng.normal(0.0, c.popularity_scale, n_total)
        popularity[c.n_items :] += c.new_item_boost
        self.user_activity_cdf = np.cumsum(rng.lognormal(0.0, 1.0, c.n_users))
        self.user_device = rng.choice(len(DEVICES), size=c.n_users, p=_DEVICE_SHARE)
        self.user_tz = rng.integers(-8, 10, size=c.n_users)
        self.price_sensitivity = np.clip(rng.normal(0.5, 0.25, c.n_users), 0.0, None) * c.context_scale
        self.device_category = rng.normal(0.0, 0.4, (len(DEVICES), n_cat)) * c.context_scale
        self.hour_amp = rng.normal(0.0, 0.4, n_cat) * c.context_scale
        self.hour_phase = rng.uniform(0.0, 24.0, n_cat)
        self.log_price = np.log(self.item_price / _MEDIAN_PRICE)
        users = rng.normal(0.0, self.sigma, (c.n_users, c.dim))
        self.epochs = self._build_epochs(Epoch(0, users, None, 0, 0, 0.0, c.n_items, popularity))
        self._epoch_starts = np.array([e.start for e in self.epochs], dtype=np.int64)
        self._user_ids = _prefixed("u", c.n_users)
        self._item_ids = _prefixed("i", n_total)

    def _build_epochs(self, first: Epoch) -> list[Epoch]:
        epochs = [first]
        for k, d in enumerate(self.config.drifts):
            rng = rng_for(self.config.seed, STREAM_DRIFT, k)
            prev = epochs[-1]
            if d.kind in PREFERENCE_KINDS:
                fresh = rng.normal(0.0, self.sigma, prev.user_from.shape)
                angle = d.strength * math.pi / 2
                nxt = dataclasses.replace(
                    prev,
                    user_from=prev.final_users(),
                    user_to=fresh,
                    ramp_start=d.at_event,
                    ramp_span=d.span,
                    angle=angle,
                )
            elif d.kind == "new_items":
                nxt = dataclasses.replace(prev, n_active=prev.n_active + d.n_items)
            else:  # popularity
                pop = prev.popularity.copy()
                pop[: prev.n_active] = pop[: prev.n_active][rng.permutation(prev.n_active)]
                nxt = dataclasses.replace(prev, popularity=pop)
            epochs.append(dataclasses.replace(nxt, start=d.at_event))
        return epochs

    # -- lookups ------------------------------------------------------------------------------------
    def epoch_index(self, t: np.ndarray) -> np.ndarray:
        """Index into :attr:`epochs` of the epoch in force at each event index."""
        return np.searchsorted(self._epoch_starts, t, side="right") - 1

    def n_active(self, t: int) -> int:
        """Number of items that are candidates at event index ``t`` (items ``0 .. n-1``)."""
        return self.epochs[int(self.epoch_index(np.array([t]))[0])].n_active

    def user_ids(self, users: np.ndarray) -> pa.Array:
        return self._user_ids.take(pa.array(users, type=pa.int64()))

    def item_ids(self, items: np.ndarray) -> pa.Array:
        return self._item_ids.take(pa.array(np.ravel(items), type=pa.int64()))

    # -- the truth ----------------------------------------------------------------------------------
    def context_logit(
        self, user: np.ndarray, device: np.ndarray, hour: np.ndarray, items: np.ndarray
    ) -> np.ndarray:
        """The part of the logit that never drifts (base, device, hour, price), shape of ``items``."""
        cat = self.item_category[items]
        hour_effect = self.hour_amp[cat] * np.cos(2 * np.pi * (hour[:, None] - self.hour_phase[cat]) / 24.0)
        price_effect = self.price_sensitivity[user][:, None] * self.log_price[items]
        return (
            self.config.base_logit + self.device_category[device[:, None], cat] + hour_effect - price_effect
        )

    def drifting_logit(self, t: np.ndarray, user: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Preference and popularity part of the logit at event indices ``t``."""
        out = np.empty(items.shape, dtype=np.float64)
        idx = self.epoch_index(t)
        epochs = np.unique(idx).tolist()
        for e in epochs:
            rows = slice(None) if len(epochs) == 1 else idx == e
            ep = self.epochs[e]
            v = self.item_vec[items[rows]]
            dot = np.einsum("nd,nkd->nk", ep.user_from[user[rows]], v)
            if ep.user_to is not None:
                a = ep.angles(t[rows])[:, None]
                dot = np.cos(a) * dot + np.sin(a) * np.einsum("nd,nkd->nk", ep.user_to[user[rows]], v)
            out[rows] = self.config.preference_scale * dot + ep.popularity[items[rows]]
        return out

    def click_probability(
        self,
        t: np.ndarray,
        user: np.ndarray,
        device: np.ndarray,
        hour: np.ndarray,
        items: np.ndarray,
        positions,
    ) -> np.ndarray:
        """True click probability, shape of ``items`` (n, k); ``positions`` broadcasts against it."""
        logit = self.context_logit(user, device, hour, items) + self.drifting_logit(t, user, items)
        eta = self.config.label_noise
        return eta + (1.0 - 2.0 * eta) * examination(positions) / (1.0 + np.exp(-logit))


def _prefixed(prefix: str, n: int) -> pa.Array:
    return pc.binary_join_element_wise(
        prefix, pc.cast(pa.array(np.arange(n, dtype=np.int64)), pa.string()), ""
    )
