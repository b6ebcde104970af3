"""The neural learner's state in and out: snapshot bundles and warm-start checkpoints.

A :class:`~pipeline.learners.base.StateBundle` holds

* ``tensors``: the ranker's weights (``model.*``) and both optimisers' per-parameter state
  (``opt.dense.*``, ``opt.sparse.*``);
* ``tables``: each collision-free vocabulary as an Arrow table ``vocab.<table>`` (key, row,
  last_seen, count) and the off-policy window ``ope``;
* ``arrays``: the admission sketches / double-hash bitmaps and the replay buffer;
* ``meta``: architecture, field slots, clock, step count, generator state, optimiser scalars,
  vocabulary counters.

The frozen warm-start model of the rank penalty is not saved: it is the checkpoint, which the
learner's configuration names and reloads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import torch

from pipeline.learners.base import StateBundle
from pipeline.learners.neural.checkpoint import Checkpoint, CheckpointError
from pipeline.learners.neural.model import RankerSpec
from pipeline.learners.neural.optim import load_optimizer_state, optimizer_state
from pipeline.learners.neural.vocab import VocabState

if TYPE_CHECKING:
    from pipeline.learners.neural.learner import NeuralRanker

__all__ = ["load_bundle", "load_checkpoint_into", "state_bundle", "to_checkpoint"]

_TABLE_COLUMNS = ("key", "row", "last_seen", "count")


def state_bundle(learner: NeuralRanker) -> StateBundle:
    tensors = {f"model.{k}": v.detach().clone() for k, v in learner._model.state_dict().items()}
    dense_t, dense_s = optimizer_state(learner._dense_opt, "opt.dense")
    sparse_t, sparse_s = optimizer_state(learner._sparse_opt, "opt.sparse")
    tensors.update(dense_t)
    tensors.update(sparse_t)
    tables: dict[str, pa.Table] = {"ope": learner._ope.state()}
    arrays: dict[str, np.ndarray] = {}
    counters = {}
    for table, vocab in learner._vocabs.items():
        vs = vocab.state()
        cols = {c: vs.arrays[c] for c in _TABLE_COLUMNS if c in vs.arrays}
        if cols:
            tables[f"vocab.{table}"] = pa.table(cols)
        arrays.update({f"vocab.{table}.{k}": v for k, v in vs.arrays.items() if k not in cols})
        counters[table] = vs.counters
    meta: dict[str, Any] = {
        "spec": learner._spec.to_json(),
        "slots": learner._slots.to_json(),
        "clock": learner._clock,
        "steps": learner._steps,
        "rng": learner._rng.bit_generator.state,
        "optimizer_scalars": {**dense_s, **sparse_s},
        "vocab_counters": counters,
    }
    if learner._replay is not None:
        rep_arrays, rep_meta = learner._replay.state()
        arrays.update(rep_arrays)
        meta["replay"] = rep_meta
    return StateBundle(tables=tables, arrays=arrays, tensors=tensors, meta=meta)


def load_bundle(learner: NeuralRanker, bundle: StateBundle) -> None:
    meta = bundle.meta
    saved = RankerSpec.from_json(meta["spec"])
    if saved != learner._spec:
        raise ValueError(
            f"neural state was saved with architecture {saved}, this learner has {learner._spec}"
        )
    weights = {k[len("model.") :]: v for k, v in bundle.tensors.items() if k.startswith("model.")}
    learner._model.load_state_dict(weights)
    scalars = meta["optimizer_scalars"]
    load_optimizer_state(learner._dense_opt, "opt.dense", bundle.tensors, scalars)
    load_optimizer_state(learner._sparse_opt, "opt.sparse", bundle.tensors, scalars)
    for table, vocab in learner._vocabs.items():
        arrays: dict[str, np.ndarray] = {}
        if f"vocab.{table}" in bundle.tables:
            t = bundle.tables[f"vocab.{table}"]
            arrays.update({c: t.column(c).to_numpy() for c in t.column_names})
        head = f"vocab.{table}."
        arrays.update({k[len(head) :]: v for k, v in bundle.arrays.items() if k.startswith(head)})
        vocab.load_state(VocabState(arrays, dict(meta["vocab_counters"][table])))
    learner._slots.load_json(meta["slots"])
    learner._clock = int(meta["clock"])
    learner._steps = int(meta["steps"])
    learner._rng.bit_generator.state = meta["rng"]
    if learner._replay is not None:
        if "replay" not in meta:
            raise ValueError("neural state has no replay buffer but this learner has replay_size > 0")
        learner._replay.load_state(bundle.arrays, meta["replay"])
    learner._ope.load_state(bundle.tables["ope"])


def to_checkpoint(learner: NeuralRanker, info: dict[str, Any]) -> Checkpoint:
    weights = {k: v.detach().clone() for k, v in learner._model.state_dict().items()}
    vocabs = {t: v.state() for t, v in learner._vocabs.items()}
    return Checkpoint(learner._spec, weights, vocabs, learner._slots.to_json(), learner._clock, dict(info))


def load_checkpoint_into(learner: NeuralRanker, ckpt: Checkpoint) -> None:
    where = learner.checkpoint
    try:
        learner._model.load_state_dict({k: torch.as_tensor(v) for k, v in ckpt.weights.items()})
        for table, vocab in learner._vocabs.items():
            vocab.load_state(ckpt.vocabs[table])
        learner._slots.load_json(ckpt.slots)
    except (KeyError, RuntimeError, ValueError) as exc:
        raise CheckpointError(
            f"{where} does not fit its own architecture: {type(exc).__name__}: {exc}"
        ) from None
    learner._clock = ckpt.clock
