"""Exploration rules that turn a scoring learner's scores into a policy with exact propensities.

A decision of ``k`` items is drawn slot by slot from the candidates not chosen yet: slot ``j``
draws from ``probabilities(rule, scores of the remaining candidates)``, and the item's propensity is
the probability of that draw given the earlier slots. For ``k = 1`` it is the probability of the
choice; the product over the slots is the probability of the whole ordered slate. The rules:

- ``epsilon_greedy`` (``epsilon``, default 0.1): the best remaining item with probability
  ``1 - epsilon + epsilon/m``, every other one ``epsilon/m``;
- ``softmax`` (``temperature``, default 0.05): ``p ∝ exp(score / temperature)``;
- ``squarecb`` (``gamma``, default 100): inverse gap weighting (Foster & Rakhlin, 2020),
  ``p_i = 1 / (m + gamma (s_best - s_i))`` for every item but the best, which gets the rest;
- ``greedy``: the best remaining item, propensity 1 (ties go to the earlier candidate).

Examples
--------
>>> import numpy as np
>>> probabilities(ExplorationRule("epsilon_greedy", 0.2), np.array([0.1, 0.5, 0.3])).round(4).tolist()
[0.0667, 0.8667, 0.0667]
>>> probabilities(ExplorationRule("squarecb", 10.0), np.array([0.5, 0.4])).round(4).tolist()
[0.6667, 0.3333]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["RULES", "ExplorationRule", "draw", "draw_slate", "probabilities"]

#: rule name -> (its parameter's name, default value)
RULES: dict[str, tuple[str | None, float | None]] = {
    "epsilon_greedy": ("epsilon", 0.1),
    "softmax": ("temperature", 0.05),
    "squarecb": ("gamma", 100.0),
    "greedy": (None, None),
}


@dataclass(frozen=True)
class ExplorationRule:
    """One rule of :data:`RULES` with its parameter (None: the rule's default)."""

    name: str = "epsilon_greedy"
    value: float | None = None

    def __post_init__(self):
        if self.name not in RULES:
            raise ValueError(f"unknown exploration rule {self.name!r}; known: {', '.join(RULES)}")
        param, default = RULES[self.name]
        value = default if self.value is None else float(self.value)
        if param is not None:
            bad = (
                not np.isfinite(value)
                or (param == "epsilon" and not 0.0 <= value <= 1.0)
                or (param != "epsilon" and value <= 0.0)
            )
            if bad:
                allowed = "in [0, 1]" if param == "epsilon" else "> 0"
                raise ValueError(f"exploration {param} must be a number {allowed}, got {self.value!r}")
        object.__setattr__(self, "value", value)

    @property
    def label(self) -> str:
        """``"softmax(temperature=0.05)"``: how the rule is named in responses and decision logs."""
        param, _ = RULES[self.name]
        return self.name if param is None else f"{self.name}({param}={self.value:g})"


def probabilities(rule: ExplorationRule, scores: np.ndarray) -> np.ndarray:
    """The rule's distribution over candidates with these ``scores`` (sums to 1)."""
    s = np.asarray(scores, dtype=np.float64)
    m = s.size
    if m == 0:
        raise ValueError("scores must be non-empty")
    best = int(np.argmax(s))
    if rule.name == "greedy":
        p = np.zeros(m)
        p[best] = 1.0
    elif rule.name == "epsilon_greedy":
        p = np.full(m, rule.value / m)
        p[best] += 1.0 - rule.value
    elif rule.name == "softmax":
        z = (s - s[best]) / rule.value
        p = np.exp(z)
        p /= p.sum()
    else:  # squarecb
        p = 1.0 / (m + rule.value * (s[best] - s))
        p[best] = 0.0
        p[best] = 1.0 - p.sum()
    return p


def draw_slate(
    rule: ExplorationRule, scores: np.ndarray, k: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``k`` candidate positions drawn slot by slot, with each draw's probability given the earlier ones.

    >>> items, props = draw_slate(ExplorationRule("greedy"), np.array([0.2, 0.9, 0.5]), 2, np.random.default_rng(0))
    >>> items.tolist(), props.tolist()
    ([1, 2], [1.0, 1.0])
    """
    s = np.asarray(scores, dtype=np.float64)
    remaining = np.arange(s.size)
    chosen, props = np.empty(k, np.int64), np.empty(k)
    for j in range(k):
        p = probabilities(rule, s[remaining])
        pick = draw(p, rng) if rule.name != "greedy" else int(np.argmax(p))
        chosen[j], props[j] = remaining[pick], p[pick]
        if j + 1 < k:
            remaining = np.delete(remaining, pick)
    return chosen, props


def draw(p: np.ndarray, rng: np.random.Generator) -> int:
    """One index drawn with probabilities ``p`` (non-negative, summing to 1 up to rounding).

    The inverse-CDF draw ``Generator.choice(len(p), p=p)`` makes, from the same single uniform
    (so the same index for the same generator state, tested), without its checks of ``p``,
    which cost more than the draw: callers pass distributions they computed.

    >>> draw(np.array([0.0, 1.0, 0.0]), np.random.default_rng(0))
    1
    """
    cdf = np.cumsum(p)
    cdf /= cdf[-1]
    return int(cdf.searchsorted(rng.random(), side="right"))
