"""One worker's side of the shared model, without any I/O: make its deltas, take its peers'.

:class:`ModelSync` keeps a *base* capture of the shared parts (:mod:`pipeline.group.parts`): the
state the group already knows. What the worker learns from its own partitions is ``live - base``;
:meth:`take_delta` turns it into a :class:`~pipeline.group.delta.ModelDelta` over the offset
ranges consumed since the previous one and moves the base to the live state. :meth:`receive`
judges each delta read back from the updates topic (:class:`~pipeline.group.fold.Fold`) and adds
an accepted peer's delta into the live learners. The caller keeps one order — take, publish,
receive, :meth:`rebase` — with no learning in between, so the base never holds a peer's change
that the next delta would send back.

Examples
--------
>>> from pipeline.config import load_config
>>> from pipeline.runner import RawBatch, Runner
>>> cfg = load_config(overrides={"learners": [{"kind": "beta_ts", "params": {"reset_on_drift": False}}]})
>>> a, b = Runner.from_config(cfg), Runner.from_config(cfg)
>>> sa, sb = ModelSync(a, "w-a", "h"), ModelSync(b, "w-b", "h")
>>> sa.claim("t:0", 0, {})
>>> raw = RawBatch(values=[b'{"event_id":"e1","ts":1,"user_id":"u","item_id":"i7","label":1}'], positions={"t:0": 1})
>>> _ = a.process(raw)
>>> delta = sa.take_delta({"t:0": 1}, {"t:0": {"applied": 1}})
>>> sb.receive(0, delta), sb.fold.frontier, b.learners[0].arm_ids
('accepted', {'t:0': 1}, ['i7'])
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Mapping
from typing import Any

from pipeline.group.delta import DeltaError, ModelDelta, decode, diff
from pipeline.group.fold import ACCEPTED, Fold
from pipeline.group.parts import RunnerShare

__all__ = ["INCOMPATIBLE", "REFUSED", "UNREADABLE", "ModelSync"]

#: outcomes besides the fold's: a delta of another configuration, one of ours the group refused,
#: and a message that is no delta
INCOMPATIBLE, REFUSED, UNREADABLE = "incompatible", "refused", "unreadable"


class ModelSync:
    """Deltas out, peers' deltas in (see the module docstring).

    Parameters
    ----------
    runner
        The live :class:`~pipeline.runner.Runner` whose learners and featuriser are shared.
    worker_id
        This worker's id (authors its deltas).
    config_hash
        Deltas of another configuration are never applied (counted as ``incompatible``).
    """

    def __init__(self, runner, worker_id: str, config_hash: str):
        self.share = RunnerShare(runner)
        self.worker_id, self.config_hash = worker_id, config_hash
        self.incarnation = uuid.uuid4().hex[:12]  # this process's deltas, told apart from a predecessor's
        self.fold = Fold()
        self.seq = 0
        self.base = self.share.capture()
        self.published: dict[str, int] = {}  # own partition -> end of its last published range
        self._counted: dict[str, dict[str, int]] = {}
        self.inflight: dict[int, ModelDelta] = {}  # published, not yet read back
        self.outcomes: Counter[str] = Counter()
        self.stale = False  # a peer's delta was added since the last rebase

    # ------------------------------------------------------------------ ownership
    def claim(self, key: str, position: int, counters: Mapping[str, int]) -> None:
        """``key`` is ours from ``position`` (its frontier); ``counters`` are its local ones now."""
        self.published[key] = int(position)
        self._counted[key] = dict(counters)

    def release(self, key: str) -> None:
        self.published.pop(key, None)
        self._counted.pop(key, None)

    # ------------------------------------------------------------------ out
    def take_delta(
        self, positions: Mapping[str, int], counters: Mapping[str, Mapping[str, int]]
    ) -> ModelDelta | None:
        """The delta of everything learned from our partitions since the last one (None: nothing)."""
        ranges = {
            k: (start, int(positions[k]))
            for k, start in self.published.items()
            if int(positions.get(k, start)) > start
        }
        live = self.share.capture()
        parts = diff(live, self.base, self.share.prior)
        self.base = live
        if not ranges:
            return None  # no event consumed: nothing of ours changed the shared state
        counts = {}
        for k in ranges:
            now, before = counters.get(k, {}), self._counted.get(k, {})
            counts[k] = {f: int(now.get(f, 0)) - int(before.get(f, 0)) for f in now}
            self._counted[k] = dict(now)
            self.published[k] = ranges[k][1]
        self.seq += 1
        delta = ModelDelta(
            self.worker_id, self.incarnation, self.seq, ranges, counts, parts, self.config_hash
        )
        self.inflight[delta.seq] = delta
        return delta

    # ------------------------------------------------------------------ in
    def mine(self, delta: ModelDelta) -> bool:
        return delta.author == self.worker_id and delta.incarnation == self.incarnation

    def receive(self, offset: int, delta: ModelDelta) -> str:
        """Judge the delta at ``offset`` of the updates topic and add a peer's accepted one."""
        self.fold.offset = offset + 1
        if delta.config_hash != self.config_hash:
            outcome = INCOMPATIBLE
        else:
            outcome = self.fold.offer(delta.ranges, delta.counts)
        if self.mine(delta):
            expected = self.inflight.pop(delta.seq, None)
            if expected is not None and outcome != ACCEPTED:
                outcome = REFUSED  # the caller rolls back: our state holds what the group refused
            self.outcomes["own" if outcome == ACCEPTED else outcome] += 1
            return outcome
        if outcome == ACCEPTED:
            self.share.add(delta.parts)
            self.stale = True
        self.outcomes[outcome] += 1
        return outcome

    def receive_message(self, offset: int, value: bytes | None) -> tuple[str, ModelDelta | DeltaError]:
        """:meth:`receive` of a message as read from the topic: ``(outcome, delta)``, or
        ``("unreadable", the error)`` for one that is no delta (stepped over and counted)."""
        try:
            delta = decode(value or b"")
        except DeltaError as exc:
            self.skip(offset)
            return UNREADABLE, exc
        return self.receive(offset, delta), delta

    def skip(self, offset: int) -> None:
        """Step over an unreadable message at ``offset`` (counted)."""
        self.fold.offset = offset + 1
        self.outcomes[UNREADABLE] += 1

    def rebase(self) -> None:
        """The base becomes the live state (after peers' deltas were added, before learning resumes)."""
        if self.stale:
            self.base = self.share.capture()
            self.stale = False

    # ------------------------------------------------------------------ state
    def state(self) -> dict[str, Any]:
        return {**self.fold.state(), "worker_id": self.worker_id}

    def load_state(self, meta: Mapping[str, Any]) -> None:
        self.fold.load_state(meta)
        self.base = self.share.capture()
        self.stale = False
