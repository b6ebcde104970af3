"""ReLoop2-style error memory (Zhu et al., KDD 2023): a fast, bounded LSH memory of recent errors
that corrects a slowly updated base learner.

* :mod:`~pipeline.learners.error_memory.keys` — event keys (hashed features or the base's
  representation) and their SimHash buckets;
* :mod:`~pipeline.learners.error_memory.memory` — the ``K × 2**L`` tables of (count, Σy, Σy_base),
  vectorised read (compensation) and write;
* :mod:`~pipeline.learners.error_memory.learner` — the ``error_memory`` learner wrapping any base.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from pipeline.learners.error_memory.keys import KeyCenter, SimHash, hashed_keys, item_keys
from pipeline.learners.error_memory.learner import ErrorMemoryLearner, Served
from pipeline.learners.error_memory.memory import ErrorMemory

__all__ = [
    "ErrorMemory",
    "ErrorMemoryLearner",
    "KeyCenter",
    "Served",
    "SimHash",
    "hashed_keys",
    "item_keys",
    "register_learners",
]


def _build(name: str | None = None, **params) -> ErrorMemoryLearner:
    # the registry passes the kind as the name when none was configured; keep the descriptive default
    return ErrorMemoryLearner(name=None if name == ErrorMemoryLearner.kind else name, **params)


_build.__signature__ = inspect.signature(ErrorMemoryLearner)  # the parameters the registry checks


def register_learners(register: Callable[[str, Callable], None]) -> None:
    """Hook for :mod:`pipeline.learners.registry`: make ``error_memory`` buildable."""
    register(ErrorMemoryLearner.kind, _build)
