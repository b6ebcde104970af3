"""The learner protocol (docs/design.md §4–5) and the state bundle that snapshots persist.

Every learner is batch-first: ``predict`` scores a whole :class:`~pipeline.features.FeatureBatch`
with the current state, ``learn`` absorbs the same batch afterwards (prequential: test, then
train). Learned state leaves only through :meth:`Learner.state` as a :class:`StateBundle` of
Arrow tables, numpy arrays, torch tensors and small JSON metadata — never pickles — and comes
back through :meth:`Learner.load_state`.
"""

from __future__ import annotations

import abc
import copy
import inspect
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.features import FeatureBatch

__all__ = ["Learner", "Policy", "StateBundle"]


@dataclass
class StateBundle:
    """Serializable state: named Arrow tables, numpy arrays, torch tensors and JSON metadata.

    The snapshot writer stores tables as Parquet, arrays as ``.npy`` (loaded with
    ``allow_pickle=False``), tensors as ``.pt`` (loaded with ``weights_only=True``) and ``meta``
    inside the manifest.
    """

    tables: dict[str, pa.Table] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    tensors: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def nbytes(self) -> int:
        total = sum(t.nbytes for t in self.tables.values()) + sum(a.nbytes for a in self.arrays.values())
        return total + sum(t.element_size() * t.nelement() for t in self.tensors.values())


class Learner(abc.ABC):
    """A model that scores events and learns from them online.

    Subclasses store their constructor arguments under the same names (that is their
    configuration, shown by ``repr`` and used by :meth:`clone`) and keep learned state in
    ``_private`` attributes.
    """

    #: short kind, used in metric labels and snapshot paths (set per subclass)
    kind: str = "learner"

    def __init__(self, name: str | None = None):
        self.name = name or self.kind

    @abc.abstractmethod
    def predict(self, batch: FeatureBatch) -> np.ndarray:
        """Click/reward probabilities (float64, one per event) from the current state."""

    @abc.abstractmethod
    def learn(self, batch: FeatureBatch, predictions: np.ndarray) -> None:
        """Update the state from a batch whose ``predictions`` were just made by :meth:`predict`."""

    @abc.abstractmethod
    def state(self) -> StateBundle:
        """Everything learned so far (a copy, or arrays the learner will not mutate in place)."""

    @abc.abstractmethod
    def load_state(self, bundle: StateBundle) -> None:
        """Replace the learned state with ``bundle``."""

    # -- configuration ------------------------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        """Constructor arguments, read back from the attributes of the same names."""
        sig = inspect.signature(type(self).__init__)
        return {p: getattr(self, p) for p in sig.parameters if p != "self" and hasattr(self, p)}

    def clone(self) -> Learner:
        """A fresh, untrained learner with the same configuration."""
        return type(self)(**copy.deepcopy(self.params()))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


class Policy(Learner):
    """A learner that also chooses items (bandits).

    ``select`` returns, for each context row, ``k`` chosen item indices into ``candidates`` and
    the probability with which the policy chose each of them, so that every decision can be
    logged and evaluated off-policy.
    """

    kind = "policy"

    @abc.abstractmethod
    def select(
        self, contexts: np.ndarray, candidates: np.ndarray, k: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        """Choose ``k`` items per context: ``(items[n, k], propensities[n, k])``."""
