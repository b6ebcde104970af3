"""The runner as the checkpointer sees it, plus the worker's per-partition counters.

:class:`TrackedRunner` wraps a :class:`pipeline.runner.Runner` and adds one state bundle,
``"_worker"``, whose metadata holds the worker's id and, per partition, the records read and the
events applied, dead-lettered and skipped as duplicates. Because the counters travel inside the
same snapshot as the model and the positions, they are exactly as durable as the effect they
count: after any crash, "applied per partition" in the newest snapshot says how many events of
each partition the restored state contains (the integration tests check exactly-once with it).

Examples
--------
>>> from pipeline.config import load_config
>>> from pipeline.runner import RawBatch, Runner
>>> tracked = TrackedRunner(Runner.from_config(load_config()), worker_id="w-1")
>>> raw = RawBatch(values=[b'{"event_id":"a","ts":1,"user_id":"u","item_id":"i","label":1}', b"x"],
...                positions={"t:0": 2})
>>> _ = tracked.process_partition("t:0", raw)
>>> tracked.partitions, tracked.state()["_worker"].meta["worker_id"]
({'t:0': {'records': 2, 'applied': 1, 'dead_letters': 1, 'duplicates': 0}}, 'w-1')
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pipeline.learners.base import StateBundle
from pipeline.runner import BatchResult, RawBatch, Runner

__all__ = ["WORKER_BUNDLE", "TrackedRunner", "partition_counts"]

WORKER_BUNDLE = "_worker"
_FIELDS = ("records", "applied", "dead_letters", "duplicates")


class TrackedRunner:
    """A runner whose state also carries per-partition counters (bundle ``"_worker"``).

    Everything not defined here (``counters``, ``positions``, ``learners``, ``take_history``, …)
    is the wrapped runner's, so a :class:`state.checkpoint.Checkpointer` snapshots and restores
    it like a runner.
    """

    def __init__(self, runner: Runner, worker_id: str):
        self.runner = runner
        self.worker_id = worker_id
        self.partitions: dict[str, dict[str, int]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.runner, name)

    def process_partition(self, key: str, raw: RawBatch) -> BatchResult:
        """Process one partition's micro-batch and count it under ``key``."""
        result = self.runner.process(raw)
        counts = self.partitions.setdefault(key, dict.fromkeys(_FIELDS, 0))
        counts["records"] += result.records
        counts["applied"] += result.applied
        counts["dead_letters"] += len(result.dead_letters)
        counts["duplicates"] += result.duplicates
        return result

    def state(self) -> dict[str, StateBundle]:
        bundles = self.runner.state()
        meta = {"worker_id": self.worker_id, "partitions": {k: dict(v) for k, v in self.partitions.items()}}
        bundles[WORKER_BUNDLE] = StateBundle(meta=meta)
        return bundles

    def load_state(self, bundles: dict[str, StateBundle], cold: Sequence[str] = ()) -> None:
        self.runner.load_state({k: v for k, v in bundles.items() if k != WORKER_BUNDLE}, cold=cold)
        own = bundles.get(WORKER_BUNDLE)
        parts = own.meta.get("partitions", {}) if own is not None else {}
        self.partitions = {k: {f: int(v.get(f, 0)) for f in _FIELDS} for k, v in parts.items()}

    def __repr__(self) -> str:
        return f"TrackedRunner({self.runner!r}, worker_id={self.worker_id!r})"


def partition_counts(manifest: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Per-partition counters recorded in a snapshot manifest ({} for snapshots without them)."""
    info = manifest.get("learners", {}).get(WORKER_BUNDLE, {})
    return {k: dict(v) for k, v in info.get("meta", {}).get("partitions", {}).items()}
