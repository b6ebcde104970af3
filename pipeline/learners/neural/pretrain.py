"""Offline training of the ranker on a log: the "offline" half of offline -> online.

The log is ordered by event time and split: the last ``val_fraction`` of it validates, the rest
trains — a random split would let the model peek at the future it is later judged on. The
vocabularies are filled by walking the training part once in time order with the same
admission/eviction rules as online (so the checkpoint's vocabularies are what an online learner
would have built); then each epoch is a seeded shuffle of the training events in mini-batches.
After every epoch the validation logloss decides: ``patience`` epochs without improvement stop
training, and the best epoch's weights are kept.

Examples
--------
>>> from pipeline.simulate import Simulator
>>> from pipeline.events import decode_arrow, EventRules
>>> from pipeline.features import Featurizer
>>> fz = Featurizer()
>>> batches = [fz.transform(decode_arrow(b, EventRules())[0])
...            for b in Simulator(seed=0, n_users=50, n_items=20).batches(4000, chunk_size=1000)]
>>> learner = NeuralRanker(dim=8, user_rows=64, item_rows=32, feature_rows=64, hidden=(16,))
>>> report = pretrain(learner, batches, epochs=3, batch_size=256, val_fraction=0.25)
>>> report.n_train, report.n_val, report.epochs_run, 0.5 < report.history[-1]["val_auc"] <= 1.0
(3000, 1000, 3, True)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from pipeline.evaluation import auc, logloss
from pipeline.features import FeatureBatch
from pipeline.learners.checks import integer
from pipeline.learners.neural.encode import HashedBatch
from pipeline.learners.neural.learner import NeuralRanker
from pipeline.learners.neural.optim import make_optimizers

__all__ = ["PretrainReport", "pretrain"]

_EVAL_CHUNK = 8192


@dataclass(frozen=True)
class PretrainReport:
    """What offline training did: sizes, epochs, per-epoch history, the chosen epoch."""

    n_train: int
    n_val: int
    epochs_run: int
    best_epoch: int
    stopped_early: bool
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _check(epochs: int, batch_size: int, val_fraction: float, patience: int) -> None:
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("patience", patience)):
        integer(name, value, 1)
    if not (isinstance(val_fraction, (int, float)) and 0.0 <= val_fraction < 1.0):
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")


def _collect(
    learner: NeuralRanker, batches: Iterable[FeatureBatch]
) -> tuple[HashedBatch, np.ndarray, np.ndarray]:
    parts, labels, ts = [], [], []
    for b in batches:
        if len(b):
            parts.append(learner._hash(b, grow=True))
            labels.append(np.clip(np.asarray(b.labels, np.float64), 0.0, 1.0))
            ts.append(np.asarray(b.events.ts))
    if not parts:
        raise ValueError("the training log holds no valid events")
    return HashedBatch.concat(parts), np.concatenate(labels).astype(np.float32), np.concatenate(ts)


def _evaluate(learner: NeuralRanker, hb: HashedBatch, y: np.ndarray) -> dict[str, float]:
    if len(hb) == 0:
        return {"val_auc": math.nan, "val_logloss": math.nan}
    with torch.no_grad():
        z = np.concatenate(
            [
                learner._model(learner._rows(hb.take(np.arange(s, min(s + _EVAL_CHUNK, len(hb))))))
                .double()
                .numpy()
                for s in range(0, len(hb), _EVAL_CHUNK)
            ]
        )
    p = 1.0 / (1.0 + np.exp(-z))
    return {"val_auc": auc(y, p), "val_logloss": logloss(y, p)}


def pretrain(
    learner: NeuralRanker,
    batches: Iterable[FeatureBatch],
    epochs: int = 10,
    batch_size: int = 1024,
    val_fraction: float = 0.1,
    patience: int = 2,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> PretrainReport:
    """Train ``learner`` in place on ``batches``; see the module docstring.

    A cold learner trains from scratch; a trained one continues from its weights and vocabularies
    (periodic warm-start retraining).

    ``on_epoch`` is called with each epoch's row of the history (epoch, train_logloss, val_auc,
    val_logloss, seconds). Afterwards the learner holds the best epoch's weights and fresh
    optimiser state, exactly as a learner warm-started from its checkpoint would.
    """
    _check(epochs, batch_size, val_fraction, patience)
    started = time.perf_counter()
    hb, y, ts = _collect(learner, batches)
    order = np.argsort(ts, kind="stable")
    n_val = int(len(order) * val_fraction)
    train, val = order[: len(order) - n_val], order[len(order) - n_val :]
    for s in range(0, len(train), batch_size):  # admission in time order, as online
        chunk = train[s : s + batch_size]
        learner._clock += len(chunk)
        learner._rows(hb.take(chunk), admit=True)
    hb_val, y_val = hb.take(val), y[val]
    history: list[dict[str, float]] = []
    best, best_epoch, best_state, waited = math.inf, 0, None, 0
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        shuffled = train[learner._rng.permutation(len(train))]
        total = 0.0
        for s in range(0, len(shuffled), batch_size):
            idx = shuffled[s : s + batch_size]
            total += learner._fit(learner._rows(hb.take(idx)), torch.from_numpy(y[idx])) * len(idx)
        row = {
            "epoch": epoch,
            "train_logloss": total / max(len(train), 1),
            **_evaluate(learner, hb_val, y_val),
        }
        row["seconds"] = time.perf_counter() - t0
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)
        score = row["val_logloss"] if n_val else -epoch  # without validation: keep the last epoch
        if score < best - 1e-6:
            best, best_epoch, waited = score, epoch, 0
            best_state = {k: v.detach().clone() for k, v in learner._model.state_dict().items()}
        else:
            waited += 1
            if waited >= patience:
                break
    if best_state is not None:
        learner._model.load_state_dict(best_state)
    learner._dense_opt, learner._sparse_opt = make_optimizers(
        learner._model, learner.optimizer, learner.lr, learner.embedding_lr
    )
    return PretrainReport(
        n_train=len(train),
        n_val=n_val,
        epochs_run=len(history),
        best_epoch=best_epoch,
        stopped_early=len(history) < epochs,
        seconds=time.perf_counter() - started,
        history=history,
    )
