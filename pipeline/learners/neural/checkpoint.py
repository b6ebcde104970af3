"""Pretrain checkpoints: the ranker's weights, its vocabularies and field slots, in one file.

The file is ``torch.save`` of a plain dict — ``format``, ``version``, ``meta`` (a JSON string: the
architecture, field slots, clock, vocabulary counters and array dtypes, the training report) and
``tensors`` (name -> tensor) — and is read back with ``torch.load(..., weights_only=True)``, so
loading never runs pickled code. Vocabulary arrays are stored as tensors (uint64 ids viewed as
int64, since torch's uint64 support is thin) with their numpy dtype recorded in ``meta``.
Anything wrong with a file raises :class:`CheckpointError` naming the file and the problem.

Examples
--------
>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "model.ckpt"
>>> _ = path.write_bytes(b"not a checkpoint")
>>> load_checkpoint(path)  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
pipeline.learners.neural.checkpoint.CheckpointError: .../model.ckpt is not a readable checkpoint file (...): UnpicklingError
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.errors import StreamlearnError
from pipeline.learners.neural.model import RankerSpec
from pipeline.learners.neural.vocab import VocabState

__all__ = ["FORMAT", "VERSION", "Checkpoint", "CheckpointError", "load_checkpoint", "save_checkpoint"]

FORMAT = "streamlearn.neural.checkpoint"
VERSION = 1
_VIEW = {"uint64": torch.int64, "uint32": torch.int32}  # numpy dtypes torch cannot hold natively


class CheckpointError(StreamlearnError, ValueError):
    """A checkpoint file is missing, unreadable or inconsistent; the message names the file."""


@dataclass
class Checkpoint:
    """What warm-starts a neural learner: architecture, weights, vocabularies, field slots."""

    spec: RankerSpec
    weights: dict[str, torch.Tensor]
    vocabs: dict[str, VocabState]
    slots: dict[str, list[str]]
    clock: int = 0
    info: dict[str, Any] = field(default_factory=dict)


def _to_tensor(arr: np.ndarray) -> torch.Tensor:
    arr = np.ascontiguousarray(arr)
    view = _VIEW.get(arr.dtype.name)
    if view is not None:
        arr = arr.view(np.dtype(str(view).replace("torch.", "")))
    return torch.from_numpy(arr.copy())


def save_checkpoint(path: str | Path, ckpt: Checkpoint) -> Path:
    """Write ``ckpt`` atomically (a temporary file renamed over ``path``); returns the path."""
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {
        f"model.{k}": v.detach().cpu().clone() for k, v in ckpt.weights.items()
    }
    dtypes: dict[str, str] = {}
    for table, vs in ckpt.vocabs.items():
        for name, arr in vs.arrays.items():
            key = f"vocab.{table}.{name}"
            tensors[key] = _to_tensor(arr)
            dtypes[key] = np.asarray(arr).dtype.name
    meta = {
        "spec": ckpt.spec.to_json(),
        "slots": ckpt.slots,
        "clock": int(ckpt.clock),
        "vocab_counters": {t: vs.counters for t, vs in ckpt.vocabs.items()},
        "dtypes": dtypes,
        "info": ckpt.info,
    }
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "meta": json.dumps(meta, sort_keys=True),
        "tensors": tensors,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        torch.save(payload, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated, foreign or unsafe files
        lines = str(exc).strip().splitlines()
        detail = type(exc).__name__
        if lines and "weights_only" not in lines[0] and "Weights only" not in lines[0]:
            detail += f": {lines[0][:200]}"  # torch's advice to load unsafely is not repeated
        raise CheckpointError(
            f"{path} is not a readable checkpoint file (truncated, not written by `streamlearn pretrain`, "
            f"or holding more than tensors): {detail}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a streamlearn neural checkpoint (no format tag {FORMAT!r})")
    if payload.get("version") != VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {payload.get('version')!r}, this build reads {VERSION}"
        )
    try:
        meta = json.loads(payload["meta"])
        tensors = payload["tensors"]
        spec = RankerSpec.from_json(meta["spec"])
        vocabs: dict[str, VocabState] = {}
        for table, counters in meta["vocab_counters"].items():
            arrays = {}
            for key, dtype in meta["dtypes"].items():
                prefix = f"vocab.{table}."
                if key.startswith(prefix):
                    arrays[key[len(prefix) :]] = tensors[key].numpy().view(np.dtype(dtype)).copy()
            vocabs[table] = VocabState(arrays, {k: int(v) for k, v in counters.items()})
        weights = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
        slots = {"cat": list(meta["slots"]["cat"]), "dense": list(meta["slots"]["dense"])}
        return Checkpoint(spec, weights, vocabs, slots, int(meta["clock"]), dict(meta.get("info", {})))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{path} is a damaged checkpoint: {type(exc).__name__}: {exc}") from None
