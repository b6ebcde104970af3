"""Hybrid offline + online contexts: the event's features and a pretrained ranker's embeddings.

A ranker pretrained offline (``streamlearn pretrain``) has learned, from the whole log, a dense
vector per user and per item whose interaction predicts clicks. A bandit learns online from its
own decisions only; giving it those vectors as context lets it start from what the log already
says about each user instead of from a hashed user-id slot. The ranker is loaded once and frozen:
the embedding space must not move under the bandit's per-arm statistics, which are fitted in it.

A hybrid context of width ``dim`` is ``[context_vectors(batch, dim - w) | part_1 | part_2 ...]``
with ``w = len(parts) * ranker.spec.dim``. The parts are

* ``"user"``: the event's user embedding;
* ``"item"``: the event's item embedding;
* ``"user_x_item"``: their elementwise product (the terms of the dot product ``u . v``).

Each part is multiplied by one constant fixed when the ranker is loaded
(:func:`embedding_scales`): the one that gives it a root-mean-square norm of 1 over the
checkpoint's known ids (for ``"user_x_item"``, over every (known user, known item) pair), so that
the embedding block weighs about as much as a few unit features whatever scale pretraining left
the embeddings at. A ridge prior (``lam``) then shrinks every part alike. In the simulator's
closed loop (``benchmarks/bandits.py --hybrid-only``: LinUCB, 20,000 requests after a
200,000-event log) this scaling earned a cumulative reward of 6,144, against 5,807 with raw
embeddings, 6,049 with every row normalised to unit norm (both measured once on the same stream;
the benchmark runs only this scaling), and 5,312 with features only.

Examples
--------
>>> import tempfile, pathlib
>>> from pipeline.events import decode_json, EventRules
>>> from pipeline.features import Featurizer
>>> from pipeline.learners.neural import NeuralRanker, pretrain
>>> raw = [b'{"event_id":"e%d","ts":%d,"user_id":"u%d","item_id":"i%d","label":%d,"features":{"d":"x"}}'
...        % (i, i, i % 5, i % 3, (i % 5 + i % 3) % 2) for i in range(600)]
>>> fb = Featurizer().transform(decode_json(raw, EventRules())[0])
>>> ranker = NeuralRanker(dim=4, user_rows=16, item_rows=8, feature_rows=8, hidden=(8,))
>>> _ = pretrain(ranker, [fb], epochs=2, batch_size=100, val_fraction=0.0)
>>> path = ranker.save_checkpoint(pathlib.Path(tempfile.mkdtemp()) / "ranker.ckpt")
>>> emb = FrozenEmbeddings.load(path, parts=("user", "user_x_item"))
>>> x = emb.contexts(fb, dim=12)
>>> x.shape, emb.width, float(x[0, 0])  # 4 feature slots (bias first), then 2 x 4 embedding slots
((600, 12), 8, 1.0)
>>> user, item = ranker.embeddings(fb)
>>> bool(np.allclose(x[:, 4:8], emb.scales[0] * user) and np.allclose(x[:, 8:], emb.scales[1] * user * item))
True
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.features import FeatureBatch
from pipeline.learners.bandits.contexts import context_vectors

if TYPE_CHECKING:
    from pipeline.learners.neural import NeuralRanker

__all__ = [
    "EMBEDDING_PARTS",
    "FrozenEmbeddings",
    "check_parts",
    "embedding_scales",
    "hybrid_contexts",
    "load_frozen_ranker",
]

#: what a hybrid context can take from the ranker (see the module docstring)
EMBEDDING_PARTS = ("user", "item", "user_x_item")


def check_parts(parts: Sequence[str] | str) -> tuple[str, ...]:
    """``parts`` as a tuple, checked: a non-empty list of distinct names from :data:`EMBEDDING_PARTS`."""
    if isinstance(parts, str):
        parts = (parts,)
    try:
        out = tuple(parts)
    except TypeError:
        raise ValueError(f"embedding_parts must be a list of names, got {parts!r}") from None
    bad = [p for p in out if p not in EMBEDDING_PARTS]
    if not out or bad or len(set(out)) != len(out):
        raise ValueError(
            f"embedding_parts must be a non-empty list of distinct names from {', '.join(EMBEDDING_PARTS)}, "
            f"got {list(out)!r}"
        )
    return out


def _known_rows_msq(ranker: NeuralRanker, table: str) -> np.ndarray | None:
    """Mean over the table's known ids of each squared embedding coordinate ``[dim]`` (None: no known id).

    Collision-free tables: exact, over the admitted ids' rows. Double-hash tables: an id is the sum
    of two bucket rows, taken as independent draws from the touched rows (twice their mean square).
    """
    state = ranker._vocabs[table].state()
    if "row" in state.arrays:
        rows, per_key = np.asarray(state.arrays["row"], np.int64), 1
    else:
        rows, per_key = np.flatnonzero(state.arrays["touched"][1:]) + 1, 2
    if not len(rows):
        return None
    weight = getattr(ranker._model, table).weight.detach().numpy()
    w = weight[rows].astype(np.float64)
    return per_key * (w * w).mean(axis=0)


def embedding_scales(ranker: NeuralRanker, parts: Sequence[str]) -> np.ndarray:
    """The constant each part is multiplied by: one over its root-mean-square norm over known ids.

    For ``"user_x_item"`` the mean runs over every (known user, known item) pair, which is
    ``Σ_k E[u_k²] E[v_k²]`` exactly. A part whose table holds no known id (an untrained ranker)
    keeps scale 1.
    """
    msq = {t: _known_rows_msq(ranker, t) for t in ("user", "item")}
    out = np.ones(len(parts))
    for i, part in enumerate(check_parts(parts)):
        if part == "user_x_item":
            ok = msq["user"] is not None and msq["item"] is not None
            mean_sq = float((msq["user"] * msq["item"]).sum()) if ok else 0.0
        else:
            m = msq[part]
            mean_sq = float(m.sum()) if m is not None else 0.0
        if mean_sq > 0:
            out[i] = 1.0 / np.sqrt(mean_sq)
    return out


def hybrid_contexts(
    batch: FeatureBatch,
    dim: int,
    ranker: NeuralRanker,
    parts: Sequence[str] = ("user",),
    exclude: Sequence[str] = (),
    include_user: bool = False,
    scales: np.ndarray | None = None,
) -> np.ndarray:
    """Contexts ``[n, dim]``: hashed features in the first ``dim - w`` slots, then the embedding parts.

    Parameters
    ----------
    batch
        The featurised micro-batch (not modified).
    dim
        Total context width; ``dim - len(parts) * ranker.spec.dim`` must be >= 2 (bias + one slot).
    ranker
        A :class:`~pipeline.learners.neural.NeuralRanker` (e.g. warm-started from a checkpoint);
        nothing is learned or admitted. Keep it frozen while a policy learns on these contexts.
    parts
        Names from :data:`EMBEDDING_PARTS`, in the order their blocks appear.
    exclude, include_user
        As in :func:`~pipeline.learners.bandits.context_vectors` (feature part only).
    scales
        One multiplier per part; None computes :func:`embedding_scales` now (compute it once and
        pass it when calling per batch).

    Notes
    -----
    ``"item"`` and ``"user_x_item"`` describe the event's *own* item. They fit the Learner API
    (``predict`` / ``learn``: one context per (user, item) event), not contexts that are scored
    against other candidates (``select``, ``distribution``, the gauges' value estimate), where
    every candidate would be scored with the logged item's embedding. For decisions, use ``"user"``.
    """
    parts = check_parts(parts)
    d = ranker.spec.dim
    width = len(parts) * d
    if dim - width < 2:
        raise ValueError(
            f"dim={dim} leaves {dim - width} slots for features next to {len(parts)} embedding "
            f"part(s) of width {d}; dim must be >= {width + 2}"
        )
    scales = embedding_scales(ranker, parts) if scales is None else np.asarray(scales, np.float64)
    if scales.shape != (len(parts),):
        raise ValueError(f"scales must have one entry per part ({len(parts)}), got shape {scales.shape}")
    out = np.empty((len(batch), dim))
    out[:, : dim - width] = context_vectors(batch, dim - width, exclude, include_user)
    user, item = ranker.embeddings(batch)
    blocks = {"user": user, "item": item}
    for i, part in enumerate(parts):
        block = user * item if part == "user_x_item" else blocks[part]
        start = dim - width + i * d
        np.multiply(block, scales[i], out=out[:, start : start + d])
    return out


def load_frozen_ranker(path: str | Path, param: str) -> tuple[NeuralRanker, str]:
    """``(ranker, sha256 of the file)`` of a ``streamlearn pretrain`` checkpoint, frozen for autograd.

    ``torch.load(weights_only=True)`` underneath. A missing or unreadable file is a ``ValueError``
    naming ``param`` (the option that gave the path) and the path.
    """
    from pipeline.learners.neural import CheckpointError, NeuralRanker  # torch: only when asked for

    try:
        ranker = NeuralRanker(checkpoint=str(path))
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except (CheckpointError, OSError) as exc:
        raise ValueError(f"{param} could not be loaded: {exc}") from None
    ranker._model.requires_grad_(False)
    return ranker, digest


class FrozenEmbeddings:
    """A pretrain checkpoint loaded once as a frozen source of context embeddings.

    Parameters
    ----------
    ranker
        The ranker (its weights are made read-only for autograd; nothing learns it here).
    parts
        Names from :data:`EMBEDDING_PARTS`.
    sha256
        Digest of the checkpoint file it came from (what snapshots are checked against).
    """

    def __init__(self, ranker: NeuralRanker, parts: Sequence[str], sha256: str = ""):
        self.ranker = ranker
        self.parts = check_parts(parts)
        self.sha256 = sha256
        ranker._model.requires_grad_(False)
        self.scales = embedding_scales(ranker, self.parts)

    @property
    def width(self) -> int:
        """Slots the embedding parts take: ``len(parts) * ranker.spec.dim``."""
        return len(self.parts) * self.ranker.spec.dim

    @classmethod
    def load(cls, path: str | Path, parts: Sequence[str]) -> FrozenEmbeddings:
        """Read a ``streamlearn pretrain`` checkpoint (``torch.load(weights_only=True)``).

        Raises ``ValueError`` naming ``embedding_checkpoint`` and the path when the file is missing
        or is not a readable checkpoint.
        """
        parts = check_parts(parts)
        ranker, digest = load_frozen_ranker(path, "embedding_checkpoint")
        return cls(ranker, parts, digest)

    def contexts(
        self, batch: FeatureBatch, dim: int, exclude: Sequence[str] = (), include_user: bool = False
    ) -> np.ndarray:
        """:func:`hybrid_contexts` of ``batch`` with this ranker, parts and scales."""
        return hybrid_contexts(batch, dim, self.ranker, self.parts, exclude, include_user, self.scales)
