"""Grubhub-style online fine-tuning of a neural ranker (docs/design.md §5, ``neural``).

``streamlearn pretrain`` trains the ranker offline (:mod:`.pretrain`) and writes a checkpoint
(:mod:`.checkpoint`); the ``neural`` learner (:mod:`.learner`) warm-starts from it and keeps
fine-tuning on every micro-batch. Ids live in vocabularies (:mod:`.vocab`): collision-free with
frequency admission and age/size eviction, or double-hashed buckets. :mod:`.policy_eval` turns the
ranker into a ranking policy for off-policy evaluation.
"""

from __future__ import annotations

from collections.abc import Callable

from pipeline.learners.neural.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from pipeline.learners.neural.learner import NeuralRanker
from pipeline.learners.neural.model import Ranker, RankerSpec
from pipeline.learners.neural.pretrain import PretrainReport, pretrain
from pipeline.learners.neural.vocab import CollisionFreeVocab, DoubleHashVocab

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "CollisionFreeVocab",
    "DoubleHashVocab",
    "NeuralRanker",
    "PretrainReport",
    "Ranker",
    "RankerSpec",
    "load_checkpoint",
    "pretrain",
    "register_learners",
    "save_checkpoint",
]


def register_learners(register: Callable[[str, Callable], None]) -> None:
    """Hook for :mod:`pipeline.learners.registry`: make ``neural`` buildable."""
    register(NeuralRanker.kind, NeuralRanker)
