"""The neural ranker as a TorchScript file that scores without streamlearn's learner code.

:func:`export_ranker` traces a module that takes the ranker's *hashed* inputs — user and item id
hashes, the categorical feature keys per field slot and the dense (signed-log) numeric features,
exactly :class:`~pipeline.learners.neural.encode.HashedBatch` with the uint64 hashes viewed as
int64 — looks them up in the vocabularies it carries as buffers, and returns click probabilities.
The file holds, as ``extra_files["streamlearn.json"]``, what an application needs to build those
inputs: the field slot names, the vocabulary kinds and the model version.

Examples
--------
>>> import io, torch
>>> from pipeline.learners.neural import NeuralRanker
>>> buf = io.BytesIO()
>>> meta = export_ranker(NeuralRanker(dim=4, hidden=(8,)), buf)
>>> sorted(meta)
['categorical_slots', 'dense_slots', 'format', 'inputs', 'vocabularies']
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.learners.neural.encode import HashedBatch
from pipeline.learners.neural.learner import TABLES
from pipeline.learners.neural.model import Rows
from pipeline.learners.neural.vocab import CollisionFreeVocab, DoubleHashVocab

__all__ = ["FORMAT", "export_ranker", "exported_inputs", "load_exported"]

FORMAT = "streamlearn-neural-torchscript-1"


def _signed(keys: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(keys, np.uint64).view(np.int64))


class _Lookup(nn.Module):
    """One vocabulary as tensors: collision-free (sorted keys → rows) or double hashing (two buckets)."""

    def __init__(self, vocab):
        super().__init__()
        if isinstance(vocab, CollisionFreeVocab):
            keys = _signed(vocab._sorted_keys)  # the learner's own arrays, read once
            order = torch.argsort(keys)
            self.register_buffer("keys", keys[order].clone())
            self.register_buffer("rows", torch.from_numpy(vocab._sorted_rows.copy())[order].clone())
            self.double = False
            self.empty = keys.numel() == 0  # fixed for the file: a Python constant in the trace
            self.buckets = 0
        elif isinstance(vocab, DoubleHashVocab):
            self.register_buffer("keys", torch.zeros(0, dtype=torch.int64))
            self.register_buffer("rows", torch.zeros(0, dtype=torch.int64))
            self.double = True
            self.empty = False
            self.buckets = int(vocab.capacity) - 1
        else:  # pragma: no cover - every kind of VOCAB_KINDS is handled above
            raise TypeError(f"cannot export a {type(vocab).__name__}")

    def forward(self, keys: torch.Tensor) -> torch.Tensor:
        if self.double:
            low = torch.remainder(keys & 0xFFFFFFFF, self.buckets) + 1
            high = torch.remainder((keys >> 32) & 0xFFFFFFFF, self.buckets) + 1
            out = torch.stack([low, high], dim=1)
            return torch.where((keys == 0).unsqueeze(1), torch.zeros_like(out), out)
        if self.empty:
            return torch.zeros((keys.shape[0], 1), dtype=torch.int64)
        pos = torch.clamp(torch.searchsorted(self.keys, keys), max=self.keys.numel() - 1)
        hit = (self.keys[pos] == keys) & (keys != 0)
        return torch.where(hit, self.rows[pos], torch.zeros_like(pos)).unsqueeze(1)


class _Exported(nn.Module):
    def __init__(self, ranker: nn.Module, vocabs: dict, max_fields: int, fnc: bool = False):
        super().__init__()
        self.ranker = ranker
        self.user_vocab, self.item_vocab, self.feature_vocab = (_Lookup(vocabs[t]) for t in TABLES)
        self.max_fields = max_fields
        self.fnc = fnc  # a Python constant in the trace

    def forward(
        self, user: torch.Tensor, item: torch.Tensor, cat: torch.Tensor, dense: torch.Tensor
    ) -> torch.Tensor:
        n = user.shape[0]
        features = self.feature_vocab(cat.reshape(-1)).reshape(n, self.max_fields, -1)
        rows = Rows(self.user_vocab(user), self.item_vocab(item), features, dense)
        p = torch.sigmoid(self.ranker(rows))
        if self.fnc:  # pipeline.join.weights.fake_negative_calibration, in float32
            b = torch.clamp(p, 0.0, 0.5)
            p = torch.clamp(b / (1.0 - b), max=1.0)
        return p


def exported_inputs(hb: HashedBatch) -> tuple[torch.Tensor, ...]:
    """The exported module's four inputs from a :class:`HashedBatch`."""
    return (
        _signed(hb.user),
        _signed(hb.item),
        _signed(hb.cat),
        torch.from_numpy(np.ascontiguousarray(hb.dense)),
    )


def export_ranker(
    learner, f, version: dict[str, Any] | None = None, calibration: str | None = None
) -> dict[str, Any]:
    """Write ``learner``'s ranker and vocabularies to ``f`` (a path or a binary file) as TorchScript.

    ``calibration = "fnc"`` (a ranker that learned fake negatives under ``join.correction = "fnc"``)
    puts the score calibration into the module, so that it returns what serving returns. Returns
    the metadata written beside the module (``extra_files["streamlearn.json"]``).
    """
    import copy

    model = copy.deepcopy(learner._model).eval()
    vocabs = learner._vocabs
    slots = learner._slots
    spec = learner._spec
    wrapper = _Exported(model, vocabs, spec.max_fields, fnc=calibration == "fnc").eval()
    n = 3
    example = (
        torch.arange(1, n + 1, dtype=torch.int64),
        torch.arange(1, n + 1, dtype=torch.int64),
        torch.zeros((n, spec.max_fields), dtype=torch.int64),
        torch.zeros((n, spec.max_dense), dtype=torch.float32),
    )
    with torch.no_grad(), warnings.catch_warnings():
        # TorchScript is deprecated in favour of torch.export, whose files need torch to rebuild
        # Python objects on load; a TorchScript file loads in any libtorch (C++ too)
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(wrapper, example, check_trace=False)
    meta = {
        "format": FORMAT,
        "inputs": {
            "user": "int64 [n]: hash_strings(user_id, 'user_id') viewed as int64",
            "item": "int64 [n]: hash_strings(item_id, 'item_id') viewed as int64",
            "cat": f"int64 [n, {spec.max_fields}]: combine(hash(name, 'feature'), hash(value, 'value')) per slot, 0 = absent",
            "dense": f"float32 [n, {spec.max_dense}]: signed log1p of each numeric feature per slot, 0 = absent",
        },
        "categorical_slots": list(slots.cat_names),
        "dense_slots": list(slots.dense_names),
        "vocabularies": {t: type(vocabs[t]).__name__ for t in TABLES},
        **({"version": version} if version else {}),
        **({"calibration": calibration} if calibration else {}),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(traced, f, _extra_files={"streamlearn.json": json.dumps(meta)})
    return meta


def load_exported(f) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """``(module, metadata)`` of an exported file (TorchScript: no pickled Python objects)."""
    extra = {"streamlearn.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(f, _extra_files=extra)
    raw = extra["streamlearn.json"]
    meta = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    if meta.get("format") != FORMAT:
        raise ValueError(f"not a streamlearn neural export (format {meta.get('format')!r})")
    return module, meta
