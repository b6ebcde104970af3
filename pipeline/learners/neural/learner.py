"""``neural``: a DCN-v2 ranker fine-tuned online on every micro-batch (Grubhub-style, arXiv 2107.07106).

Warm start: with ``checkpoint=PATH`` (written by ``streamlearn pretrain``) the learner begins
exactly where offline training ended — same weights, vocabularies and field slots — and predicts
exactly like the checkpoint until its first update. Cold start: without one it begins from
seeded random weights and empty vocabularies.

Each :meth:`NeuralRanker.learn` is one optimiser step on the micro-batch: ids seen often enough get
rows (freshly admitted rows start from the shared unknown-id row), optionally a sample of the
replay buffer joins the batch, and the loss is the logloss plus, optionally, ``rank_penalty`` times
a pairwise rank-preserving term against the frozen warm-start model (the FINEST idea: for random
pairs (i, j) of the batch, the logistic loss of ``z_i - z_j`` towards ``sigmoid(a_i - a_j)``, where
``a`` are the warm-start logits) — it keeps the ranking from churning while calibration and new ids
still move freely.

Defaults: ``adam`` with ``lr=3e-3`` for the dense layers and ``embedding_lr=0.1`` for the
embeddings, no replay, no rank penalty. They are the best setting of the sweep in
``benchmarks/neural.py`` on the simulator's drifting stream (AUC 0.707 over 300k events; Adam at
1e-3/1e-2 0.684, at 1e-2/0.3 0.689; Adagrad 0.695; SGD 0.649). The embeddings need the large step:
most ids are seen a few times per thousand events, and after a drift each row must move within
those few updates. Adam's constant step keeps adapting, while Adagrad matches it before the first
drifts and falls behind after each later one as its accumulated squared gradients shrink its
steps. Replay (50k events, ratio 0.5) added 0.001 AUC for 28 % more CPU; the rank penalty
(0.5) cost 0.026 AUC — it is for limiting churn, not for accuracy — so both are off by default.

Examples
--------
>>> from pipeline.events import decode_json, EventRules
>>> from pipeline.features import Featurizer
>>> rows = [b'{"event_id":"e%d","ts":%d,"user_id":"u%d","item_id":"i%d","label":%d}' % (i, i, i % 7, i % 2, i % 2)
...         for i in range(256)]
>>> fb = Featurizer().transform(decode_json(rows, EventRules())[0])
>>> model = NeuralRanker(dim=8, user_rows=64, item_rows=64, feature_rows=16, hidden=(16,), seed=1)
>>> for _ in range(20):
...     model.learn(fb, model.predict(fb))
>>> after = model.predict(fb)
>>> bool(after[fb.labels == 1].mean() > 0.9 > 0.1 > after[fb.labels == 0].mean()), model.representation(fb).shape
(True, (256, 68))
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.features import FeatureBatch
from pipeline.learners.base import Learner, StateBundle
from pipeline.learners.checks import example_weights, integer, number
from pipeline.learners.neural import persist
from pipeline.learners.neural.checkpoint import Checkpoint, load_checkpoint
from pipeline.learners.neural.encode import FieldSlots, HashedBatch, hash_batch
from pipeline.learners.neural.model import Ranker, RankerSpec, Rows
from pipeline.learners.neural.optim import OPTIMIZERS, make_optimizers, reset_rows
from pipeline.learners.neural.policy_eval import PolicyValueWindow, logged_rounds
from pipeline.learners.neural.replay import ReplayBuffer
from pipeline.learners.neural.vocab import Vocabulary, make_vocab

__all__ = ["TABLES", "NeuralRanker"]

TABLES = ("user", "item", "feature")


class NeuralRanker(Learner):
    """Online fine-tuning of a neural ranker, warm-started from a pretrain checkpoint or cold.

    Parameters
    ----------
    checkpoint
        Path of a ``streamlearn pretrain`` checkpoint to warm-start from (None: cold start).
    vocab, dim, user_rows, item_rows, feature_rows, max_fields, max_dense, hidden, cross_layers, cross_rank
        The architecture (:class:`~pipeline.learners.neural.model.RankerSpec`); None takes the
        checkpoint's value (or the default); a value that contradicts the checkpoint is an error.
    min_count, max_age
        Vocabulary admission (occurrences before an id gets its own row) and age eviction (rows
        whose id was not seen in the last ``max_age`` learned events are freed; 0 = off), for
        ``collision_free`` vocabularies.
    optimizer, lr, embedding_lr
        ``adam`` | ``adagrad`` | ``sgd``, and the step sizes of dense layers and embeddings.
    replay_size, replay_ratio
        Replay buffer of the last ``replay_size`` events (0 = off); each update adds
        ``replay_ratio x batch size`` events sampled from it.
    rank_penalty
        Weight of the rank-preserving term against the warm-start model (needs ``checkpoint``).
    ope_temperature, ope_window
        Softmax temperature of the ranking policy evaluated off-policy, and the window (rounds).
    seed
        Seeds the initial weights and every sample the learner draws.
    name
        Label in metrics and snapshots.
    """

    kind = "neural"

    def __init__(
        self,
        checkpoint: str | None = None,
        vocab: str | None = None,
        dim: int | None = None,
        user_rows: int | None = None,
        item_rows: int | None = None,
        feature_rows: int | None = None,
        max_fields: int | None = None,
        max_dense: int | None = None,
        hidden: list[int] | tuple[int, ...] | None = None,
        cross_layers: int | None = None,
        cross_rank: int | None = None,
        min_count: int = 1,
        max_age: int = 0,
        optimizer: str = "adam",
        lr: float = 3e-3,
        embedding_lr: float = 0.1,
        replay_size: int = 0,
        replay_ratio: float = 0.5,
        rank_penalty: float = 0.0,
        ope_temperature: float = 0.5,
        ope_window: int = 10_000,
        seed: int = 0,
        name: str | None = None,
    ):
        super().__init__(name)
        self.checkpoint = None if checkpoint is None else str(checkpoint)
        arch = dict(vocab=vocab, dim=dim, user_rows=user_rows, item_rows=item_rows, feature_rows=feature_rows)
        arch.update(max_fields=max_fields, max_dense=max_dense, hidden=hidden)
        arch.update(cross_layers=cross_layers, cross_rank=cross_rank)
        for key, value in arch.items():
            setattr(self, key, value)
        self.min_count = integer("min_count", min_count, 1)
        self.max_age = integer("max_age", max_age, 0)
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
        self.optimizer = optimizer
        self.lr = number("lr", lr, 0.0, low_open=True)
        self.embedding_lr = number("embedding_lr", embedding_lr, 0.0, low_open=True)
        self.replay_size = integer("replay_size", replay_size, 0)
        self.replay_ratio = number("replay_ratio", replay_ratio, 0.0)
        self.rank_penalty = number("rank_penalty", rank_penalty, 0.0)
        self.ope_temperature = number("ope_temperature", ope_temperature, 0.0)
        self.ope_window = ope_window
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        self.seed = seed
        if self.rank_penalty > 0 and self.checkpoint is None:
            raise ValueError(
                "rank_penalty > 0 needs a checkpoint (the warm-start model whose ranking it keeps)"
            )
        ckpt = load_checkpoint(self.checkpoint) if self.checkpoint is not None else None
        self._spec = self._resolve_spec(arch, ckpt)
        self._build(ckpt)

    # ------------------------------------------------------------------------------ construction
    def _resolve_spec(self, arch: dict[str, Any], ckpt: Checkpoint | None) -> RankerSpec:
        given = {k: v for k, v in arch.items() if v is not None}
        if isinstance(given.get("hidden"), list):
            given["hidden"] = tuple(given["hidden"])
        if ckpt is None:
            return RankerSpec(**given)
        saved = ckpt.spec.to_json()
        saved["hidden"] = tuple(saved["hidden"])
        for key, value in given.items():
            if value != saved[key]:
                raise ValueError(
                    f"{key}={value!r} contradicts the checkpoint {self.checkpoint} ({key}={saved[key]!r}); "
                    "leave it unset to take the checkpoint's"
                )
        return ckpt.spec

    def _build(self, ckpt: Checkpoint | None) -> None:
        spec = self._spec
        self._model = Ranker(spec, seed=self.seed)
        self._vocabs: dict[str, Vocabulary] = {
            t: make_vocab(spec.vocab, rows, self.min_count, self.max_age)
            for t, rows in zip(TABLES, (spec.user_rows, spec.item_rows, spec.feature_rows))
        }
        self._slots = FieldSlots(spec.max_fields, spec.max_dense)
        self._clock = 0
        self._steps = 0
        self._rng = np.random.default_rng(np.random.SeedSequence([self.seed, 0x6E6E]))
        self._replay = (
            ReplayBuffer(self.replay_size, spec.max_fields, spec.max_dense) if self.replay_size else None
        )
        self._ope = PolicyValueWindow(self.ope_window)
        self._anchor: tuple[Ranker, dict[str, Vocabulary]] | None = None
        if ckpt is not None:
            persist.load_checkpoint_into(self, ckpt)
            if self.rank_penalty > 0:
                self._anchor = (copy.deepcopy(self._model).requires_grad_(False), copy.deepcopy(self._vocabs))
        self._dense_opt, self._sparse_opt = make_optimizers(
            self._model, self.optimizer, self.lr, self.embedding_lr
        )

    @property
    def spec(self) -> RankerSpec:
        """The architecture in use (from the constructor arguments or the checkpoint)."""
        return self._spec

    # ------------------------------------------------------------------------------ encoding
    def _hash(self, batch: FeatureBatch, grow: bool) -> HashedBatch:
        return hash_batch(batch, self._slots, grow)

    def _rows(
        self, hb: HashedBatch, vocabs: dict[str, Vocabulary] | None = None, admit: bool = False
    ) -> Rows:
        """Embedding rows of ``hb``; with ``admit`` the vocabularies count, admit and evict first."""
        v = vocabs or self._vocabs
        out = []
        for table, keys in zip(TABLES, (hb.user, hb.item, hb.cat.reshape(-1))):
            if admit:
                rows, fresh = v[table].update(keys, self._clock)
                if len(fresh):
                    self._reset_rows(table, torch.from_numpy(fresh))
            else:
                rows = v[table].lookup(keys)
            out.append(torch.from_numpy(rows))
        n = len(hb)
        feats = out[2].reshape(n, self._spec.max_fields, -1)
        return Rows(out[0], out[1], feats, torch.from_numpy(hb.dense))

    def _reset_rows(self, table: str, rows: torch.Tensor) -> None:
        weight = getattr(self._model, table).weight
        with torch.no_grad():
            weight[rows] = weight[0].clone()  # start from the shared unknown-id embedding
        reset_rows(self._sparse_opt, weight, rows)

    # ------------------------------------------------------------------------------ Learner API
    def predict(self, batch: FeatureBatch) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.logits(batch)))

    def logits(self, batch: FeatureBatch) -> np.ndarray:
        """Click logits (float64) from the current weights; nothing is admitted or learned."""
        if len(batch) == 0:
            return np.zeros(0)
        with torch.no_grad():
            return self._model(self._rows(self._hash(batch, grow=False))).double().numpy()

    def representation(self, batch: FeatureBatch) -> np.ndarray:
        """The last hidden layer ``[n, spec.representation_width]`` (float32), e.g. as an error-memory key."""
        if len(batch) == 0:
            return np.zeros((0, self._spec.representation_width), np.float32)
        with torch.no_grad():
            return self._model.representation(self._rows(self._hash(batch, grow=False))).numpy()

    def embeddings(self, batch: FeatureBatch) -> tuple[np.ndarray, np.ndarray]:
        """The user and the item embedding of every event, from the current weights.

        Nothing is admitted or learned: an id without a row of its own gets the shared unknown-id
        row (row 0), exactly as :meth:`predict` sees it. Under ``double_hash`` vocabularies an
        embedding is the sum of the id's two bucket rows, as in the model's input.

        Parameters
        ----------
        batch
            The featurised micro-batch (only its user and item hashes are read).

        Returns
        -------
        user, item
            ``[n, spec.dim]`` float32 arrays each (new arrays: later learning leaves them alone).

        Examples
        --------
        >>> from pipeline.events import decode_json, EventRules
        >>> from pipeline.features import Featurizer
        >>> raw = [b'{"event_id":"e%d","ts":%d,"user_id":"u%d","item_id":"i0","label":1}' % (i, i, i)
        ...        for i in range(3)]
        >>> fb = Featurizer().transform(decode_json(raw, EventRules())[0])
        >>> model = NeuralRanker(dim=4, user_rows=8, item_rows=8, feature_rows=8, hidden=(8,))
        >>> user, item = model.embeddings(fb)  # nothing learned yet: every id is unknown
        >>> user.shape, user.dtype, bool((user == model._model.user.weight[0].detach().numpy()).all())
        ((3, 4), dtype('float32'), True)
        """
        d = self._spec.dim
        if len(batch) == 0:
            return np.zeros((0, d), np.float32), np.zeros((0, d), np.float32)
        out = []
        with torch.no_grad():
            for table, keys in (("user", batch.user_hash), ("item", batch.item_hash)):
                rows = torch.from_numpy(self._vocabs[table].lookup(np.asarray(keys, np.uint64)))
                out.append(
                    getattr(self._model, table)(rows).numpy()
                )  # a new tensor, not a view of the weights
        return out[0], out[1]

    def predict_with_representation(self, batch: FeatureBatch) -> tuple[np.ndarray, np.ndarray]:
        """``(predict(batch), representation(batch))`` from one forward pass (an error memory's key and score)."""
        if len(batch) == 0:
            return np.zeros(0), np.zeros((0, self._spec.representation_width), np.float32)
        with torch.no_grad():
            rep = self._model.representation(self._rows(self._hash(batch, grow=False)))
            logits = self._model.head(rep).squeeze(1).double().numpy()
        return 1.0 / (1.0 + np.exp(-logits)), rep.numpy()

    def learn(self, batch: FeatureBatch, predictions: np.ndarray) -> None:
        """One optimiser step on ``batch`` (and a replay sample), its loss weighted per example.

        With example weights (``FeatureBatch.weights``) the logloss is ``mean(w · loss)`` over the
        events of the step, the normalisation of the unweighted loss; replayed events keep the
        weight they were learned with. Events of weight 0 are dropped first, so they have no
        effect at all (no id admission, no replay, not counted in the mean), and a batch without
        a positive weight is no step (Adam would move the weights even with a zero gradient).
        Field slots are still assigned from every event's feature names. The rank penalty is not
        weighted: it ties the model to the warm start, it is not a loss of the examples.
        """
        n = len(batch)
        if n == 0:
            return
        weights = example_weights(batch)
        hb = self._hash(batch, grow=True)
        labels = np.clip(np.asarray(batch.labels, np.float64), 0.0, 1.0).astype(np.float32)
        if weights is not None:
            keep = np.flatnonzero(weights > 0)
            if not len(keep):
                return
            if len(keep) < n:
                hb, labels, n = hb.take(keep), labels[keep], len(keep)
            weights = weights[keep].astype(np.float32)
        self._clock += n
        rows = self._rows(hb, admit=True)
        y = torch.from_numpy(labels)
        w = None if weights is None else torch.from_numpy(weights)
        if self._replay is not None and len(self._replay) and self.replay_ratio > 0:
            k = max(1, round(self.replay_ratio * n))
            old, old_y, old_w = self._replay.sample_weighted(k, self._rng)
            rows = rows.cat(self._rows(old))
            y = torch.cat([y, torch.from_numpy(old_y)])
            hb = HashedBatch.concat([hb, old])
            if w is not None or (old_w != 1.0).any():
                w = torch.cat([torch.ones(n) if w is None else w, torch.from_numpy(old_w)])
        self._fit(rows, y, hb, w)
        if self._replay is not None:
            self._replay.push(hb.take(np.arange(n)), labels, weights)

    def _fit(
        self, rows: Rows, y: torch.Tensor, hb: HashedBatch | None = None, weights: torch.Tensor | None = None
    ) -> float:
        """One optimiser step on ``rows`` / ``y`` (logloss ``mean(weights · loss)``); returns that loss."""
        logits = self._model(rows)
        loss = F.binary_cross_entropy_with_logits(logits, y, weight=weights)
        total = loss
        if self._anchor is not None and hb is not None:
            anchor, anchor_vocabs = self._anchor
            with torch.no_grad():
                a = anchor(self._rows(hb, vocabs=anchor_vocabs))
            perm = torch.from_numpy(self._rng.permutation(len(y)))
            target = torch.sigmoid(a - a[perm])
            total = loss + self.rank_penalty * F.binary_cross_entropy_with_logits(
                logits - logits[perm], target
            )
        self._dense_opt.zero_grad(set_to_none=True)
        self._sparse_opt.zero_grad(set_to_none=True)
        total.backward()
        self._dense_opt.step()
        self._sparse_opt.step()
        self._steps += 1
        return float(loss.detach())

    # ------------------------------------------------------------------------------ off-policy evaluation
    def evaluate_policy(self, logged: FeatureBatch, candidates: FeatureBatch) -> dict[str, Any]:
        """Feed the window of off-policy estimates with requests whose candidate sets are known.

        ``candidates`` holds ``K`` rows per logged event, request-major (row ``i*K + j`` is candidate
        j of event i), with the features each candidate would have had; the logged item must be
        among its request's candidates and ``propensity`` must be logged (rows without are skipped).
        Call it before :meth:`learn` on ``logged`` to keep the estimate prequential. Returns the
        window's ``{estimator: Interval}``.
        """
        n = len(logged)
        if n == 0:
            return self._ope.last
        if len(candidates) % n:
            raise ValueError(f"candidates must hold K rows per logged event, got {len(candidates)} for {n}")
        k = len(candidates) // n
        match = candidates.item_hash.reshape(n, k) == logged.item_hash[:, None]
        if not match.any(axis=1).all():
            bad = int(np.flatnonzero(~match.any(axis=1))[0])
            raise ValueError(f"logged item of event {bad} is not among its candidates")
        pscore = logged.events.propensity
        ok = np.isfinite(pscore)
        logits = self.logits(candidates).reshape(n, k)
        rounds = logged_rounds(
            logits[ok], match.argmax(axis=1)[ok], logged.labels[ok], pscore[ok], self.ope_temperature
        )
        return self._ope.update(rounds)

    def gauges(self) -> list[tuple[str, dict[str, str], float]]:
        """Embedding rows and evictions per table, and the ranking policy's off-policy estimates."""
        out: list[tuple[str, dict[str, str], float]] = []
        for table, v in self._vocabs.items():
            labels = {"table": f"{self.name}.{table}"}
            out.append(("streamlearn_embedding_rows", labels, float(v.rows_in_use())))
            out.append(("streamlearn_embedding_evictions_total", labels, float(v.evictions)))
        for estimator, value in self._ope.values().items():
            if estimator != "ESS":
                labels = {"policy": self.name, "estimator": estimator}
                out.append(("streamlearn_policy_value_estimate", labels, value))
        return out

    def policy_values(self) -> dict[str, float]:
        """The last window's estimates ``{IPS, SNIPS, DR, ESS}``."""
        return self._ope.values()

    # ------------------------------------------------------------------------------ state
    def state(self) -> StateBundle:
        return persist.state_bundle(self)

    def load_state(self, bundle: StateBundle) -> None:
        persist.load_bundle(self, bundle)

    def to_checkpoint(self, info: dict[str, Any] | None = None) -> Checkpoint:
        """The current model as a warm-start checkpoint (see :mod:`.checkpoint`)."""
        return persist.to_checkpoint(self, info or {})

    def n_parameters(self) -> int:
        return self._model.n_parameters()

    def save_checkpoint(self, path: str | Path, info: dict[str, Any] | None = None) -> Path:
        from pipeline.learners.neural.checkpoint import save_checkpoint

        return save_checkpoint(path, self.to_checkpoint(info))
