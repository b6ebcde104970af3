"""A read-only view of a model: its featurizer and learners at one moment, and the version they are.

A :class:`ModelView` is built once (from the live runner after a batch, or from a snapshot) and
never changes: requests read it from many threads at once, and a newer model is a new view that
replaces the old one in a :class:`ViewHolder` in one reference swap, so a request sees either the
old model or the new one, never a mix. Scoring goes through the learners' read-only paths
(``Featurizer.transform`` and ``predict``/``distribution``, which the conformance suite checks
leave ``state()`` byte-identical), so no request changes what was learned.

Decisions: a bandit decides with its own rule (``distribution``: LinUCB and Diag-LinUCB are
deterministic, ε-greedy exact, Thompson sampling a Monte-Carlo estimate); any other learner
decides through an :class:`~pipeline.serving.exploration.ExplorationRule` over its scores. Either
way a slate is drawn slot by slot from the remaining candidates with the view's own generator,
and each item's propensity is the probability of its draw given the earlier slots.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.features import FeatureSpec, Featurizer
from pipeline.join.weights import calibrated_scores, calibrates
from pipeline.learners.bandits.base import BanditPolicy
from pipeline.learners.base import Learner, StateBundle
from pipeline.serving.exploration import ExplorationRule, draw, draw_slate
from pipeline.serving.request_features import request_features
from pipeline.serving.requests import Request

__all__ = [
    "Decision",
    "ModelVersion",
    "ModelView",
    "UnknownModelError",
    "ViewHolder",
]

#: how a scoring learner decides when the request names no exploration rule
DEFAULT_EXPLORATION = ExplorationRule("epsilon_greedy", 0.1)


class UnknownModelError(LookupError):
    """The request names a model the view does not hold (HTTP 404)."""


@dataclass(frozen=True)
class ModelVersion:
    """Which model answered: the configuration, the events it has learned, the snapshot it is or follows."""

    config_hash: str
    events_applied: int
    snapshot_seq: int | None
    built_at_ms: int
    origin: str  # "live" (the worker's model after a batch), "snapshot", or "updates" (a group's topic)
    updates_offset: int | None = None  # under [group]: the updates topic's offset the model folds up to

    def to_dict(self) -> dict[str, Any]:
        out = {
            "config_hash": self.config_hash,
            "events_applied": self.events_applied,
            "snapshot_seq": self.snapshot_seq,
            "built_at_ms": self.built_at_ms,
            "origin": self.origin,
        }
        if self.updates_offset is not None:
            out["updates_offset"] = self.updates_offset
        return out


@dataclass
class Decision:
    """``k`` chosen items with their propensities and scores, and what chose them."""

    decision_id: str
    request: Request
    policy: str
    items: list[str]
    positions: list[int]  # index of each chosen item among the request's candidates
    propensities: list[float]
    scores: list[float]
    version: ModelVersion
    ts_ms: int = field(default_factory=lambda: int(time.time() * 1000))

    def exposure_id(self, slot: int) -> str:
        """The ``event_id`` of the exposure logged for ``slot``: what an outcome names in its
        ``exposure_id`` (``[join] link = "exposure_id"``)."""
        return f"{self.decision_id}:{slot}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "decision_id": self.decision_id,
            "request_id": self.request.request_id,
            "model": self.request.model,
            "policy": self.policy,
            "items": [
                {
                    "item_id": i,
                    "slot": s,
                    "candidate": c,
                    "propensity": p,
                    "score": v,
                    "exposure_id": self.exposure_id(s),
                }
                for s, (i, c, p, v) in enumerate(
                    zip(self.items, self.positions, self.propensities, self.scores)
                )
            ],
            "version": self.version.to_dict(),
        }


class ModelView:
    """The featurizer and learners of one moment, read-only; see the module docstring.

    Parameters
    ----------
    featurizer
        Features as the model was trained with (only ``transform`` is called).
    learners
        The models by name; they must not be trained any more (views hold their own copies).
    version
        What the model is.
    seed
        Seed of the generator that draws decisions (mixed with the version's events so that two
        views draw differently).
    calibration
        ``"fnc"`` when the learners learned fake negatives under ``join.correction = "fnc"``:
        their scores are then calibrated (:func:`pipeline.join.weights.calibrated_scores`).
    """

    def __init__(
        self,
        featurizer: Featurizer,
        learners: Mapping[str, Learner],
        version: ModelVersion,
        seed: int = 0,
        calibration: str | None = None,
    ):
        self.featurizer = featurizer
        self.learners = dict(learners)
        self.version = version
        self.calibration = calibration
        self._rng = np.random.default_rng([seed, version.events_applied, version.built_at_ms])
        self._rng_lock = threading.Lock()  # numpy generators are not thread-safe

    # -- construction ----------------------------------------------------------------------------------
    @classmethod
    def from_state(
        cls,
        templates: list[Learner],
        feature_spec: FeatureSpec,
        bundles: Mapping[str, StateBundle],
        version: ModelVersion,
        seed: int = 0,
        calibration: str | None = None,
    ) -> ModelView:
        """Fresh copies of ``templates`` loaded with ``bundles`` (a snapshot's or a runner's ``state()``)."""
        featurizer = Featurizer(feature_spec)
        featurizer.load_state(bundles["_runner"].tables["features"])
        learners = {}
        for template in templates:
            if template.name in bundles:
                copy = template.clone()
                copy.name = template.name
                copy.load_state(bundles[template.name])
                learners[template.name] = copy
        return cls(featurizer, learners, version, seed, calibration)

    @classmethod
    def from_runner(
        cls, runner, config_hash: str, snapshot_seq: int | None = None, seed: int = 0
    ) -> ModelView:
        """The runner's model as it is now (call between batches)."""
        version = ModelVersion(
            config_hash=config_hash,
            events_applied=int(runner.counters["applied"]),
            snapshot_seq=snapshot_seq,
            built_at_ms=int(time.time() * 1000),
            origin="live",
        )
        return cls.from_state(
            runner.learners, runner.featurizer.spec, runner.state(), version, seed, runner.calibration
        )

    # -- reading ---------------------------------------------------------------------------------------
    def learner(self, name: str) -> Learner:
        try:
            return self.learners[name]
        except KeyError:
            raise UnknownModelError(
                f"no model {name!r}; loaded: {', '.join(self.learners) or 'none'}"
            ) from None

    def describe(self) -> list[dict[str, Any]]:
        """What ``GET /v1/models`` lists: every model, its kind and whether it decides on its own."""
        now = int(time.time() * 1000)
        out = []
        for name, lr in self.learners.items():
            row = {
                "name": name,
                "kind": lr.kind,
                "policy": isinstance(lr, BanditPolicy),
                "version": self.version.to_dict(),
                "age_s": round((now - self.version.built_at_ms) / 1000, 3),
            }
            if calibrates(lr, self.calibration):
                row["calibration"] = self.calibration
            out.append(row)
        return out

    def score(self, req: Request) -> np.ndarray:
        """Each candidate's score (click/reward probability) from the request's model."""
        return self.score_many([req])[0]

    def score_many(self, reqs: list[Request]) -> list[np.ndarray]:
        """:meth:`score` of several requests of one model in one featurizer and model call.

        Rows are scored independently, so each request gets the scores it would get alone; one
        call pays the fixed cost of featurizing and predicting once (dynamic batching).
        """
        learners = {r.model for r in reqs}
        if len(learners) != 1:
            raise ValueError(f"score_many takes requests of one model, got {sorted(learners)}")
        learner = self.learner(reqs[0].model)
        batch = request_features(self.featurizer, reqs)
        scores = calibrated_scores(
            learner, np.asarray(learner.predict(batch), dtype=np.float64), self.calibration
        )
        bounds = np.cumsum([0] + [len(r.item_ids) for r in reqs])
        return [scores[a:b] for a, b in itertools.pairwise(bounds)]

    def decides_by_itself(self, req: Request) -> bool:
        """Whether the request's model is a bandit (it scores each decision itself)."""
        return isinstance(self.learner(req.model), BanditPolicy)

    def decide(
        self, req: Request, decision_id: str | None = None, scores: np.ndarray | None = None
    ) -> Decision:
        """``req.k`` items chosen from the candidates, with their propensities.

        ``scores`` are the request's scores when already computed (:meth:`score_many`) for a
        learner that is not a bandit.
        """
        learner = self.learner(req.model)
        if isinstance(learner, BanditPolicy):
            return self.decide_many([req], [decision_id])[0]
        rule = req.exploration or DEFAULT_EXPLORATION
        scores_all = self.score(req) if scores is None else np.asarray(scores, dtype=np.float64)
        with self._rng_lock:
            chosen, props = draw_slate(rule, scores_all, req.k, self._rng)
        return self._decision(
            req, decision_id, f"{learner.kind}+{rule.label}", chosen, props, scores_all[chosen]
        )

    def decide_many(
        self, reqs: list[Request], decision_ids: list[str | None] | None = None
    ) -> list[Decision]:
        """:meth:`decide` of several requests of one bandit, featurized in one call.

        A bandit explores with its own rule, so a request naming an exploration rule is a
        ``ValueError``. Each request's context is its first candidate's row, as when it is alone.
        The first slot of all requests with as many candidates is one ``[g, m]``
        :meth:`~pipeline.learners.bandits.base.BanditPolicy.distribution_of_hashes` call; a
        deterministic policy's decisions are then exactly those of each request alone (tested).
        """
        learner = self.learner(reqs[0].model)
        if not isinstance(learner, BanditPolicy) or any(r.model != reqs[0].model for r in reqs):
            raise ValueError("decide_many takes requests of one bandit")
        for req in reqs:
            if req.exploration is not None:
                raise ValueError(
                    f"{req.model} is a bandit: it explores with its own rule, not {req.exploration.name}"
                )
        batch = request_features(self.featurizer, reqs)
        contexts = learner.batch_contexts(batch)
        # shared-parameter policies score each candidate with its own item features
        actions = learner.batch_action_features(batch)
        starts = np.cumsum([0] + [len(r.item_ids) for r in reqs])[:-1]
        decision_ids = decision_ids or [None] * len(reqs)
        by_size: dict[int, list[int]] = {}
        for i, req in enumerate(reqs):
            by_size.setdefault(len(req.item_ids), []).append(i)
        out: list[Decision] = [None] * len(reqs)  # type: ignore[list-item]
        for m, group in by_size.items():
            # the first slot of every request with m candidates in one call: [g, m] candidates
            at = starts[group]
            cells = at[:, None] + np.arange(m)
            acts = None if actions is None else actions[cells]
            probs, means = learner.distribution_of_hashes(
                contexts[at], batch.item_hash[cells], action_features=acts
            )
            # the first slot's distributions normalized together; a deterministic policy's are
            # one-hot, and its pick needs no draw
            p = probs / probs.sum(axis=1, keepdims=True)
            one_hot = (np.count_nonzero(p, axis=1) == 1).tolist()
            best = np.argmax(p, axis=1).tolist()
            for j, i in enumerate(group):
                start = int(at[j])
                chosen, props, scores = self._draw_bandit(
                    learner,
                    contexts[start : start + 1],
                    batch.item_hash[start : start + m],
                    reqs[i].k,
                    None if actions is None else actions[start : start + m],
                    first=(p[j], means[j], best[j] if one_hot[j] else None),
                )
                out[i] = self._decision(reqs[i], decision_ids[i], learner.kind, chosen, props, scores)
        return out

    def _decision(self, req, decision_id, policy, chosen, props, scores) -> Decision:
        return Decision(
            decision_id=decision_id or uuid.uuid4().hex,
            request=req,
            policy=policy,
            items=[req.item_ids[c] for c in chosen],
            positions=[int(c) for c in chosen],
            propensities=[float(p) for p in props],
            scores=[float(s) for s in scores],
            version=self.version,
        )

    def _draw_bandit(
        self, policy: BanditPolicy, contexts: np.ndarray, hashes: np.ndarray, k: int, actions=None, first=None
    ) -> tuple[list[int], list[float], list[float]]:
        """A slate of ``k`` from the candidates whose item-id hashes are ``hashes``, slot by slot;
        ``first`` is the first slot's ``(probabilities, means, pick or None)`` over all of them
        when already computed (the pick where the distribution is one-hot)."""
        remaining = np.arange(hashes.size)
        chosen, props, scores = [], [], []
        for slot in range(k):
            if slot == 0 and first is not None:
                p, mean, pick = first
            else:
                acts = None if actions is None else actions[remaining]
                probs, means = policy.distribution_of_hashes(
                    contexts, hashes[remaining], action_features=acts
                )
                p, mean = probs[0] / probs[0].sum(), means[0]
                pick = int(np.argmax(p)) if np.count_nonzero(p) == 1 else None
            if pick is None:
                with self._rng_lock:
                    pick = draw(p, self._rng)
            chosen.append(int(remaining[pick]))
            props.append(float(p[pick]))
            scores.append(float(mean[pick]))
            if slot + 1 < k:
                remaining = np.delete(remaining, pick)
        return chosen, props, scores


class ViewHolder:
    """The current :class:`ModelView`; replaced whole, read without a lock.

    >>> holder = ViewHolder()
    >>> holder.current is None
    True
    """

    def __init__(self, view: ModelView | None = None):
        self.current = view
        self.swaps = 0

    def swap(self, view: ModelView) -> None:
        self.current = view  # one reference assignment: readers see the old view or the new one
        self.swaps += 1
