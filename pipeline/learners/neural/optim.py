"""Optimisers of the ranker, and their state as named tensors (for snapshots, never pickles).

The embedding tables get sparse gradients, so they need an optimiser that updates only the rows a
batch touched; the dense layers get its dense counterpart:

* ``adam`` (default): ``SparseAdam`` for embeddings, ``Adam`` for dense layers. A constant step
  size with moment estimates over the last ~1/(1-beta2) steps keeps tracking a drifting world.
* ``adagrad``: ``Adagrad`` for both. Its per-coordinate step shrinks as squared gradients
  accumulate, which suits a stationary problem and slows re-adaptation after each drift
  (``benchmarks/neural.py``: level with Adam before and just after the first drift, behind after
  the later ones).
* ``sgd``: plain SGD for both (sparse-capable, no state); far behind on sparse ids.
"""

from __future__ import annotations

from typing import Any

import torch

from pipeline.learners.neural.model import Ranker

__all__ = ["OPTIMIZERS", "load_optimizer_state", "make_optimizers", "optimizer_state", "reset_rows"]

OPTIMIZERS = ("adam", "adagrad", "sgd")


def make_optimizers(
    model: Ranker, optimizer: str, lr: float, embedding_lr: float
) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    """(dense optimiser, embedding optimiser) for ``model``."""
    dense = model.dense_parameters()
    tables = [t.weight for t in model.embedding_tables()]
    if optimizer == "adam":
        return torch.optim.Adam(dense, lr=lr), torch.optim.SparseAdam(tables, lr=embedding_lr)
    if optimizer == "adagrad":
        return torch.optim.Adagrad(dense, lr=lr), torch.optim.Adagrad(tables, lr=embedding_lr)
    if optimizer == "sgd":
        return torch.optim.SGD(dense, lr=lr), torch.optim.SGD(tables, lr=embedding_lr)
    raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")


def optimizer_state(
    opt: torch.optim.Optimizer, prefix: str
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The optimiser's per-parameter state as ``{prefix.i.key: tensor}`` plus JSON scalars."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for idx, entry in opt.state_dict()["state"].items():
        for key, value in entry.items():
            name = f"{prefix}.{idx}.{key}"
            if isinstance(value, torch.Tensor):
                tensors[name] = value.detach().clone()
            else:
                scalars[name] = value
    return tensors, scalars


def load_optimizer_state(
    opt: torch.optim.Optimizer, prefix: str, tensors: dict[str, torch.Tensor], scalars: dict[str, Any]
) -> None:
    """Inverse of :func:`optimizer_state` (the parameter groups stay as configured)."""
    state: dict[int, dict[str, Any]] = {}
    head = prefix + "."
    for source in (tensors, scalars):
        for name, value in source.items():
            if not name.startswith(head):
                continue
            idx, key = name[len(head) :].split(".", 1)
            state.setdefault(int(idx), {})[key] = value.clone() if isinstance(value, torch.Tensor) else value
    opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})


def reset_rows(opt: torch.optim.Optimizer, param: torch.Tensor, rows: torch.Tensor) -> None:
    """Forget the optimiser's per-row statistics of ``param`` at ``rows`` (a reused embedding row)."""
    for key, value in opt.state.get(param, {}).items():
        if isinstance(value, torch.Tensor) and value.shape == param.shape:
            fill = opt.defaults.get("initial_accumulator_value", 0.0) if key == "sum" else 0.0
            value[rows] = fill
