"""The logged interaction stream: the environment's requests, the logging policy's choices, sampled clicks.

Events are generated in fixed internal blocks of :data:`BLOCK_REQUESTS` requests, so the stream does
not depend on how it is consumed: any ``chunk_size`` gives the same rows, and the first ``n``
events of a longer stream are the stream of ``n`` events.

>>> from pipeline.simulation.config import SimConfig, Drift
>>> sim = Simulator(SimConfig(seed=7, n_users=100, n_items=50, drifts=(Drift(300, "abrupt"),)))
>>> sim.drift_points
(300,)
>>> batch = next(sim.batches(500))
>>> batch.num_rows, batch.column("event_id")[0].as_py(), batch.column("user_id")[0].as_py()
(500, 'e0', 'u74')
>>> 0 < min(batch.column("propensity").to_pylist()) <= max(batch.column("propensity").to_pylist()) <= 1
True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pipeline.simulation.config import Drift, SimConfig
from pipeline.simulation.corrupt import insert_rows, invalid_count, invalid_json, invalid_rows
from pipeline.simulation.environment import Environment
from pipeline.simulation.logging_policy import LoggingPolicy
from pipeline.simulation.records import build_batch, to_json_lines
from pipeline.simulation.world import STREAM_INVALID, World, rng_for

__all__ = ["BLOCK_REQUESTS", "JsonChunk", "Simulator"]

BLOCK_REQUESTS = 8192


@dataclass(frozen=True)
class JsonChunk:
    """JSON lines of one block: ``lines[i]`` is an injected invalid record where ``invalid[i]``."""

    lines: list[bytes]
    invalid: np.ndarray

    @property
    def n_events(self) -> int:
        """Valid events in the chunk."""
        return len(self.lines) - int(self.invalid.sum())


class Simulator:
    """A seeded synthetic interaction stream with scheduled drifts, position bias and exact propensities.

    Parameters
    ----------
    config
        The world, traffic, logging policy and drift schedule (default :class:`SimConfig()`).
    **overrides
        Fields of :class:`SimConfig` to replace, e.g. ``Simulator(seed=3, n_users=500)``.
    """

    def __init__(self, config: SimConfig | None = None, **overrides):
        config = config or SimConfig()
        self.config = dataclasses.replace(config, **overrides) if overrides else config
        self.world = World(self.config)

    @property
    def drifts(self) -> tuple[Drift, ...]:
        return self.config.drifts

    @property
    def drift_points(self) -> tuple[int, ...]:
        """Event indices (0-based, counting valid events only) at which the scheduled drifts start."""
        return tuple(d.at_event for d in self.config.drifts)

    def environment(self) -> Environment:
        """A fresh environment over this simulator's world, for closed-loop (bandit) runs."""
        return Environment(self.config, world=self.world)

    def logging_policy(self) -> LoggingPolicy:
        """A fresh copy of the logging policy (same seed, so it makes the logged choices)."""
        return LoggingPolicy(self.world)

    # -- generation -----------------------------------------------------------------------------------
    def _blocks(self, n_events: int, include_truth: bool) -> Iterator[pa.RecordBatch]:
        if n_events < 0:
            raise ValueError(f"n_events must be >= 0, got {n_events}")
        env, policy, k = self.environment(), self.logging_policy(), self.config.slate_size
        while env.clock < n_events:
            ctx = env.contexts(BLOCK_REQUESTS)
            items, props = policy.select(ctx, k)
            labels = env.step(ctx, items)
            truth = None
            if include_truth:
                best_items, _ = env.best(ctx)
                best_slate = np.repeat(best_items[:, None], k, axis=1)
                truth = {
                    "p_click": env.reward_probabilities(ctx, items),
                    "p_best": env.reward_probabilities(ctx, best_slate),
                }
            batch = build_batch(self.world, ctx, items, labels, props, truth)
            yield batch.slice(0, min(batch.num_rows, n_events - int(ctx.t[0])))

    def batches(
        self,
        n_events: int,
        chunk_size: int = 10_000,
        include_truth: bool = False,
        invalid_fraction: float = 0.0,
    ) -> Iterator[pa.RecordBatch]:
        """The first ``n_events`` events as record batches of ``chunk_size`` rows (the last may be shorter).

        With ``invalid_fraction > 0``, type-valid but semantically invalid rows are mixed in (so that
        about that share of all rows is invalid); they are extra rows, not counted in ``n_events``.
        """
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        rng = rng_for(self.config.seed, STREAM_INVALID)
        pending: list[pa.RecordBatch] = []
        rows = 0
        for block in self._blocks(n_events, include_truth):
            m = invalid_count(rng, block.num_rows, invalid_fraction)
            if m:
                block = _merge(block, invalid_rows(block, m, rng), insert_rows(block.num_rows, m, rng))
            pending.append(block)
            rows += block.num_rows
            if rows >= chunk_size:
                merged = pa.concat_batches(pending)
                cut = rows - rows % chunk_size
                for start in range(0, cut, chunk_size):
                    yield merged.slice(start, chunk_size)
                pending, rows = [merged.slice(cut)], rows - cut
        if rows:
            yield pa.concat_batches(pending)

    def json_chunks(
        self, n_events: int, invalid_fraction: float = 0.0, include_truth: bool = False
    ) -> Iterator[JsonChunk]:
        """The first ``n_events`` events as JSON lines, one chunk per internal block.

        With ``invalid_fraction > 0``, invalid records of every kind (malformed JSON, missing
        fields, NaN label, bad propensity, unknown event type, ...) are mixed in, flagged in
        :attr:`JsonChunk.invalid`.
        """
        rng = rng_for(self.config.seed, STREAM_INVALID)
        for block in self._blocks(n_events, include_truth):
            lines = to_json_lines(block)
            m = invalid_count(rng, block.num_rows, invalid_fraction)
            invalid = np.zeros(len(lines) + m, dtype=bool)
            if m:
                bad = invalid_json(block, m, rng)
                where = insert_rows(len(lines), m, rng)
                invalid[where] = True
                good, bad_it = iter(lines), iter(bad)
                lines = [next(bad_it) if b else next(good) for b in invalid.tolist()]
            yield JsonChunk(lines, invalid)


def _merge(valid: pa.RecordBatch, bad: pa.RecordBatch, where: np.ndarray) -> pa.RecordBatch:
    """Valid and invalid rows interleaved so that the invalid ones land at positions ``where``."""
    n = valid.num_rows + bad.num_rows
    is_bad = np.zeros(n, dtype=bool)
    is_bad[where] = True
    order = np.empty(n, dtype=np.int64)
    order[~is_bad] = np.arange(valid.num_rows)
    order[is_bad] = valid.num_rows + np.arange(bad.num_rows)
    return pa.concat_batches([valid, bad]).take(pa.array(order))
