"""The embedding API: :func:`load` and :class:`Model` (see the package docstring)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from consumers.commands.serve import SnapshotFollower
from pipeline.errors import ConfigError, SnapshotError
from pipeline.serving.decisions import JsonlDecisionLog, exposure_events, exposure_records
from pipeline.serving.requests import Limits, RequestError, parse_request
from pipeline.serving.view import Decision, ModelVersion, ModelView, ViewHolder

__all__ = ["ConfigError", "Decision", "Model", "ModelVersion", "RequestError", "SnapshotError", "load"]

log = logging.getLogger("streamlearn")


def load(state_dir: str | Path, **options: Any) -> Model:
    """The newest committed snapshot of a state directory, read-only.

    Parameters
    ----------
    state_dir
        A worker's or replay's ``state.dir``.
    options
        Keywords of :class:`Model`:
    config
        The configuration the snapshots were written with; needed only for snapshots that do not
        record it (written before snapshots carried their configuration).
    follow
        Swap in each newer snapshot from a background thread, every ``poll_s`` seconds (a call in
        progress finishes on the model it started with). Without it, :meth:`Model.refresh` does it.
    decisions
        A JSONL file to append every decision's exposure records to, as ``streamlearn serve
        --decisions`` writes them (or log :meth:`Model.exposures` yourself).
    limits
        Candidates, features and id lengths a call may pass (the HTTP server's defaults).

    Raises
    ------
    SnapshotError
        ``state_dir`` holds no snapshot that reads and verifies.
    ConfigError
        The snapshot does not record its configuration and none was given, or ``config`` is wrong.
    """
    return Model(state_dir, **options)


class Model:
    """A state directory's model, read-only (built by :func:`load`; see there for the parameters)."""

    def __init__(
        self,
        state_dir: str | Path,
        *,
        config: str | Path | None = None,
        follow: bool = False,
        poll_s: float = 1.0,
        decisions: str | Path | None = None,
        limits: Limits | None = None,
    ):
        from pipeline.config import load_config

        self.state_dir = Path(state_dir)
        if not self.state_dir.is_dir():
            raise SnapshotError(f"state directory {self.state_dir} does not exist")
        fallback = load_config(str(config)) if config is not None else None
        self._holder = ViewHolder()
        self._follower = SnapshotFollower(
            str(self.state_dir), self._holder, fallback, poll_s, announce=log.info
        )
        if not self.refresh():
            raise SnapshotError(f"no valid snapshot in {self.state_dir}")
        self.limits = limits or Limits()
        self._log = JsonlDecisionLog(decisions) if decisions is not None else None
        if follow:
            self._follower.start()

    # -- what is loaded ------------------------------------------------------------------------------
    @property
    def view(self) -> ModelView:
        """The model view calls read now (replaced whole by a refresh, never changed)."""
        return self._holder.current

    @property
    def version(self) -> ModelVersion:
        """Config hash, events learned and snapshot seq of the loaded model."""
        return self.view.version

    @property
    def names(self) -> list[str]:
        """The models (learner names) a call may name."""
        return list(self.view.learners)

    def describe(self) -> list[dict[str, Any]]:
        """What ``GET /v1/models`` lists: each model's name, kind, whether it is a policy, version and age."""
        return self.view.describe()

    def refresh(self) -> bool:
        """Load the newest valid snapshot if it is newer than the loaded one; True when it was."""
        return self._follower.refresh()  # the follower serialises its own refreshes

    # -- calls -------------------------------------------------------------------------------------------
    def score(
        self,
        model: str,
        user_id: str | int,
        candidates: Sequence[str | int | dict[str, Any]],
        features: dict[str, Any] | None = None,
    ) -> list[float]:
        """Each candidate's score (click or reward probability) from the named model.

        ``candidates`` are item ids, or objects ``{"item_id": ..., "features": {...}}`` with
        features of their own, as in ``POST /v1/score``.
        """
        req = self._request(model, user_id, candidates, features, decide=False)
        return self.view.score(req).tolist()

    def decide(
        self,
        model: str,
        user_id: str | int,
        candidates: Sequence[str | int | dict[str, Any]],
        k: int = 1,
        features: dict[str, Any] | None = None,
        request_id: str | None = None,
        exploration: str | dict[str, Any] | None = None,
    ) -> Decision:
        """``k`` items chosen from the candidates, each with the probability of its choice.

        Bandits decide with their own rule; any other model through ``exploration``
        (``epsilon_greedy``, ``softmax``, ``squarecb`` or ``greedy``, e.g. ``{"rule": "softmax",
        "temperature": 0.05}``; default epsilon-greedy with 0.1), as ``POST /v1/decide`` does.
        With ``decisions`` given to :func:`load`, the decision's exposures are appended there.
        """
        req = self._request(model, user_id, candidates, features, True, k, request_id, exploration)
        decision = self.view.decide(req)
        if self._log is not None:
            self._log.write(exposure_records(decision))
        return decision

    @staticmethod
    def exposures(decision: Decision) -> list[dict[str, Any]]:
        """A decision as exposure events (one per chosen item, with its propensity and candidates),
        the records of the decision log: send them to the stream the worker learns from."""
        return exposure_events(decision)

    def _request(self, model, user_id, candidates, features, decide, k=1, request_id=None, exploration=None):
        body: dict[str, Any] = {"model": model, "user_id": user_id, "candidates": list(candidates), "k": k}
        if features is not None:
            body["features"] = features
        if request_id is not None:
            body["request_id"] = request_id
        if exploration is not None:
            body["exploration"] = exploration
        return parse_request(body, self.limits, decide=decide)

    # -- lifetime ----------------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop following snapshots and close the decision log."""
        self._follower.stop()
        if self._log is not None:
            self._log.close()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        v = self.version
        return (
            f"Model({str(self.state_dir)!r}, snapshot {v.snapshot_seq}, {v.events_applied:,} events, "
            f"models: {', '.join(self.names)})"
        )
