"""Every decision as exposure events, and the logs they are written to.

A decision of ``k`` items becomes ``k`` events of the event schema, so that a later outcome can be
joined to them and off-policy evaluation knows what the policy could have chosen::

    {"event_id": "<decision_id>:0", "ts": 1733420000000, "user_id": "u1", "item_id": "i7",
     "label": 0, "event_type": "impression", "position": 0, "propensity": 0.9,
     "request_id": "r-17", "features": {"device": "ios"},
     "decision_id": "<decision_id>", "policy": "ftrl+epsilon_greedy(epsilon=0.1)", "model": "ftrl",
     "model_version": {"config_hash": "…", "events_applied": 120000, "snapshot_seq": 12, …},
     "candidates": ["i3", "i7", "i9"]}

``label`` is 0 (an exposure has no outcome yet), ``position`` the slot, ``propensity`` the
probability of the draw given the earlier slots, ``candidates`` the request's items (the event
schema's optional field: off-policy evaluation decides among exactly these). The other fields after
``features`` are extra to the event schema; decoders ignore them, so the records replay as they are.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Protocol

import orjson

from pipeline.serving.view import Decision

__all__ = ["DecisionLog", "JsonlDecisionLog", "exposure_events", "exposure_records"]


def exposure_events(decision: Decision) -> list[dict[str, Any]]:
    """The decision's exposure events (one per chosen item)."""
    req = decision.request
    version = decision.version.to_dict()
    return [
        {
            "event_id": decision.exposure_id(slot),
            "ts": decision.ts_ms,
            "user_id": req.user_id,
            "item_id": item,
            "label": 0,
            "event_type": "impression",
            "position": slot,
            "propensity": prop,
            "request_id": req.request_id or decision.decision_id,
            "features": {**req.features, **req.item_features[cand]},
            "decision_id": decision.decision_id,
            "policy": decision.policy,
            "model": req.model,
            "model_version": version,
            "candidates": req.item_ids,
        }
        for slot, (item, cand, prop) in enumerate(
            zip(decision.items, decision.positions, decision.propensities)
        )
    ]


def exposure_records(decision: Decision) -> list[bytes]:
    """:func:`exposure_events` as JSON bytes."""
    return [orjson.dumps(e) for e in exposure_events(decision)]


class DecisionLog(Protocol):
    """Where decisions go: ``write`` must not block a request for long."""

    def write(self, records: list[bytes], key: str | None = None) -> None: ...

    def close(self) -> None: ...


class JsonlDecisionLog:
    """Appends exposure records to a JSONL file, one line each (thread-safe).

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "decisions.jsonl")
    >>> log = JsonlDecisionLog(path)
    >>> log.write([b'{"a":1}'])
    >>> log.close()
    >>> open(path).read()
    '{"a":1}\\n'
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("ab")
        self._lock = threading.Lock()
        self.written = 0

    def write(self, records: list[bytes], key: str | None = None) -> None:
        if not records:
            return
        data = b"".join(r + b"\n" for r in records)
        with self._lock:
            self._file.write(data)
            self._file.flush()
            self.written += len(records)

    def close(self) -> None:
        with self._lock:
            self._file.close()
