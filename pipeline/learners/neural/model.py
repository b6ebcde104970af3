"""The ranker: (user, item, context) -> click logit, a compact DCN-v2 (Wang et al., WWW 2021) for CPUs.

Inputs per event: the embedding rows of the user, the item and up to ``max_fields`` categorical
features (one shared feature table; each row is ``rows_per_key`` rows summed, 2 under double
hashing), and ``max_dense`` numeric features (``sign(x) log1p|x|``, 0 when absent). Their
concatenation ``x0`` (width ``(2 + max_fields) dim + max_dense``) feeds, in parallel, a low-rank
cross network ``x_{l+1} = x0 * (U_l V_l^T x_l + b_l) + x_l`` (explicit feature crosses of degree
l + 1) and a ReLU MLP; the head is linear over both outputs, whose concatenation is the
representation other learners can key on (ReLoop2's error memory).

Embeddings are ``nn.EmbeddingBag(mode="sum", sparse=True)``: a micro-batch touches a few thousand
of the table's rows, and sparse gradients let the optimiser update only those.

Examples
--------
>>> spec = RankerSpec(dim=4, user_rows=10, item_rows=10, feature_rows=10, max_fields=2, max_dense=1,
...                   hidden=(8,), cross_layers=1, cross_rank=2)
>>> model = Ranker(spec, seed=0)
>>> rows = Rows(torch.tensor([[1], [2]]), torch.tensor([[3], [0]]), torch.zeros(2, 2, 1, dtype=torch.long),
...             torch.zeros(2, 1))
>>> model(rows).shape, model.representation(rows).shape, spec.n_parameters() == model.n_parameters()
(torch.Size([2]), torch.Size([2, 25]), True)
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from pipeline.learners.checks import integer
from pipeline.learners.neural.vocab import VOCAB_KINDS

__all__ = ["ARCHITECTURE_FIELDS", "Ranker", "RankerSpec", "Rows"]


@dataclass(frozen=True)
class RankerSpec:
    """The architecture: everything that fixes the shapes of the weights (a checkpoint carries it).

    Parameters
    ----------
    vocab
        ``collision_free`` (one row per admitted id) or ``double_hash`` (two buckets per id).
    dim
        Embedding dimension.
    user_rows, item_rows, feature_rows
        Rows of the user, item and categorical-feature tables (row 0 included).
    max_fields, max_dense
        Categorical and numeric feature slots (features beyond them are ignored).
    hidden
        Widths of the MLP layers.
    cross_layers, cross_rank
        Depth and rank of the low-rank cross network.
    """

    vocab: str = "collision_free"
    dim: int = 32
    user_rows: int = 16384
    item_rows: int = 8192
    feature_rows: int = 4096
    max_fields: int = 4
    max_dense: int = 4
    hidden: tuple[int, ...] = (128, 64)
    cross_layers: int = 2
    cross_rank: int = 16

    def __post_init__(self) -> None:
        hidden = self.hidden
        if not isinstance(hidden, (list, tuple)) or not all(
            isinstance(h, int) and not isinstance(h, bool) for h in hidden
        ):
            raise ValueError(f"hidden must be a non-empty list of widths >= 1, got {hidden!r}")
        object.__setattr__(self, "hidden", tuple(hidden))
        if self.vocab not in VOCAB_KINDS:
            raise ValueError(f"vocab must be one of {', '.join(VOCAB_KINDS)}, got {self.vocab!r}")
        for name, low in (("dim", 1), ("user_rows", 2), ("item_rows", 2), ("feature_rows", 2)):
            integer(name, getattr(self, name), low)
        for name in ("max_fields", "max_dense", "cross_layers"):
            integer(name, getattr(self, name), 0)
        integer("cross_rank", self.cross_rank, 1)
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError(f"hidden must be a non-empty list of widths >= 1, got {list(self.hidden)}")

    @property
    def rows_per_key(self) -> int:
        return 2 if self.vocab == "double_hash" else 1

    @property
    def width(self) -> int:
        """Width of ``x0``, the concatenated input."""
        return (2 + self.max_fields) * self.dim + self.max_dense

    @property
    def representation_width(self) -> int:
        return self.width + self.hidden[-1]

    def n_parameters(self) -> int:
        emb = (self.user_rows + self.item_rows + self.feature_rows) * self.dim
        w = self.width
        cross = self.cross_layers * (2 * w * self.cross_rank + w)
        widths = (w, *self.hidden)
        mlp = sum(a * b + b for a, b in itertools.pairwise(widths))
        return emb + cross + mlp + self.representation_width + 1

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RankerSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown architecture keys {unknown}; known: {sorted(known)}")
        return cls(**data)


#: RankerSpec fields, which are also constructor parameters of the neural learner
ARCHITECTURE_FIELDS = tuple(f.name for f in dataclasses.fields(RankerSpec))


class Rows(NamedTuple):
    """A batch's model inputs: embedding rows ``[n, r]``, ``[n, r]``, ``[n, F, r]`` and dense ``[n, D]``."""

    user: torch.Tensor
    item: torch.Tensor
    features: torch.Tensor
    dense: torch.Tensor

    def __len__(self) -> int:  # type: ignore[override]
        return int(self.user.shape[0])

    def cat(self, other: Rows) -> Rows:
        return Rows(*(torch.cat([a, b]) for a, b in zip(self, other)))

    def take(self, index: torch.Tensor) -> Rows:
        return Rows(*(t[index] for t in self))


class _Cross(nn.Module):
    """One low-rank DCN-v2 cross layer."""

    def __init__(self, width: int, rank: int):
        super().__init__()
        self.v = nn.Linear(width, rank, bias=False)
        self.u = nn.Linear(rank, width)

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x0 * self.u(self.v(x)) + x


class Ranker(nn.Module):
    """DCN-v2 click model over embedded ids and features (see the module docstring).

    Parameters
    ----------
    spec
        The architecture.
    seed
        Seeds the initial weights (the global torch generator is left as it was).
    """

    def __init__(self, spec: RankerSpec, seed: int = 0):
        super().__init__()
        self.spec = spec
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.user = nn.EmbeddingBag(spec.user_rows, spec.dim, mode="sum", sparse=True)
            self.item = nn.EmbeddingBag(spec.item_rows, spec.dim, mode="sum", sparse=True)
            self.feature = nn.EmbeddingBag(spec.feature_rows, spec.dim, mode="sum", sparse=True)
            for table in self.embedding_tables():
                # small: at 0.01 the initial logits are ~0 and the first updates set the scale
                nn.init.normal_(table.weight, 0.0, 0.01)
            w = spec.width
            self.cross = nn.ModuleList(_Cross(w, spec.cross_rank) for _ in range(spec.cross_layers))
            layers: list[nn.Module] = []
            for a, b in zip((w, *spec.hidden[:-1]), spec.hidden):
                layers += [nn.Linear(a, b), nn.ReLU()]
            self.mlp = nn.Sequential(*layers)
            self.head = nn.Linear(spec.representation_width, 1)

    def embedding_tables(self) -> tuple[nn.EmbeddingBag, nn.EmbeddingBag, nn.EmbeddingBag]:
        return self.user, self.item, self.feature

    def dense_parameters(self) -> list[nn.Parameter]:
        tables = {id(t.weight) for t in self.embedding_tables()}
        return [p for p in self.parameters() if id(p) not in tables]

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _x0(self, rows: Rows) -> torch.Tensor:
        n = rows.user.shape[0]
        parts = [self.user(rows.user), self.item(rows.item)]
        if self.spec.max_fields:
            f = rows.features.reshape(n * self.spec.max_fields, -1)
            parts.append(self.feature(f).reshape(n, -1))
        if self.spec.max_dense:
            parts.append(rows.dense)
        return torch.cat(parts, dim=1)

    def representation(self, rows: Rows) -> torch.Tensor:
        """The last hidden layer: cross-network output and MLP output, concatenated."""
        x0 = self._x0(rows)
        x = x0
        for layer in self.cross:
            x = layer(x0, x)
        return torch.cat([x, self.mlp(x0)], dim=1)

    def forward(self, rows: Rows) -> torch.Tensor:
        """Click logits, shape ``[n]``."""
        return self.head(self.representation(rows)).squeeze(1)
