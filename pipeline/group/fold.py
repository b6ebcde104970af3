"""The group's one order of updates: which deltas of the updates topic count, decided alike by all.

Every worker reads the same single-partition topic in the same order and applies the same rule to
each delta, so all of them accept the same deltas. The rule keeps one **frontier** per source
partition, the offset up to which the group's model holds that partition's events:

* a delta is **accepted** when each of its ranges starts exactly at its partition's frontier (a
  partition not seen yet accepts any start); the frontiers move to the ranges' ends;
* it is a **duplicate** when every range ends at or before its frontier (a producer retry, or a
  worker that replayed a range another already published): nothing of it is applied;
* anything else is a **conflict** (a range that overlaps the frontier, or leaves a gap): nothing
  of it is applied either. Its author finds its own delta refused, rolls back to its last
  snapshot and consumes the partition again from the frontier.

So each event's effect enters the group's model at most once (one accepted range holds it) and
at least once (a partition's frontier only moves over accepted ranges; its owner consumes from
the frontier).

Examples
--------
>>> fold = Fold()
>>> [fold.offer({"t:0": (0, 5)}, {}), fold.offer({"t:0": (0, 5)}, {}), fold.offer({"t:0": (3, 9)}, {})]
['accepted', 'duplicate', 'conflict']
>>> fold.offer({"t:0": (5, 9), "t:1": (0, 2)}, {"t:0": {"applied": 4}}), fold.frontier
('accepted', {'t:0': 9, 't:1': 2})
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["ACCEPTED", "CONFLICT", "DUPLICATE", "Fold"]

ACCEPTED, DUPLICATE, CONFLICT = "accepted", "duplicate", "conflict"


class Fold:
    """Frontiers per source partition, group-wide event counts and the updates-topic position."""

    def __init__(self) -> None:
        self.offset = 0  # next offset of the updates topic to read
        self.frontier: dict[str, int] = {}
        self.counts: dict[str, dict[str, int]] = {}  # per partition: records, applied, ... (accepted only)

    def judge(self, ranges: Mapping[str, tuple[int, int]]) -> str:
        """The outcome :meth:`offer` would give, without changing anything."""
        if all(end <= self.frontier.get(key, -1) for key, (_, end) in ranges.items()) and ranges:
            return DUPLICATE
        if all(key not in self.frontier or start == self.frontier[key] for key, (start, _) in ranges.items()):
            return ACCEPTED
        return CONFLICT

    def offer(self, ranges: Mapping[str, tuple[int, int]], counts: Mapping[str, Mapping[str, int]]) -> str:
        """Judge one delta's ranges and, when accepted, move the frontiers and add its counts."""
        outcome = self.judge(ranges)
        if outcome == ACCEPTED:
            for key, (_, end) in ranges.items():
                self.frontier[key] = end
            for key, fields in counts.items():
                mine = self.counts.setdefault(key, {})
                for name, n in fields.items():
                    mine[name] = mine.get(name, 0) + int(n)
        return outcome

    def state(self) -> dict[str, Any]:
        return {
            "offset": self.offset,
            "frontier": dict(self.frontier),
            "counts": {k: dict(v) for k, v in self.counts.items()},
        }

    def load_state(self, meta: Mapping[str, Any]) -> None:
        self.offset = int(meta.get("offset", 0))
        self.frontier = {str(k): int(v) for k, v in meta.get("frontier", {}).items()}
        self.counts = {
            str(k): {str(f): int(n) for f, n in v.items()} for k, v in meta.get("counts", {}).items()
        }

    def __repr__(self) -> str:
        return f"Fold(offset={self.offset}, frontier={self.frontier})"
