"""The logged interaction stream: the environment's requests, the logging policy's choices, sampled clicks.

Events are generated in fixed internal blocks of :data:`BLOCK_REQUESTS` requests, so the stream does
not depend on how it is consumed: any ``chunk_size`` gives the same rows, and the first ``n``
events of a longer stream are the stream of ``n`` events. With ``feedback = "delayed"`` the
records are the exposures of those events and their outcome records, merged in event time
(:mod:`pipeline.simulation.feedback`); ``n_events`` counts the exposures.

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
import pyarrow.compute as pc

from pipeline.simulation.config import Drift, SimConfig
from pipeline.simulation.corrupt import injected, insert_rows, invalid_count, invalid_json, invalid_rows
from pipeline.simulation.environment import Environment
from pipeline.simulation.feedback import DelayedFeedback
from pipeline.simulation.logging_policy import LoggingPolicy
from pipeline.simulation.records import OUTCOME_TYPE, build_batch, sim_schema, to_json_lines
from pipeline.simulation.world import STREAM_INVALID, World, rng_for

__all__ = ["BLOCK_REQUESTS", "JsonChunk", "Simulator", "count_outcomes"]

BLOCK_REQUESTS = 8192


@dataclass(frozen=True)
class JsonChunk:
    """JSON lines of one block: ``lines[i]`` is an injected invalid record where ``invalid[i]``, and
    an outcome record (``feedback = "delayed"``) where ``outcome[i]`` (None: no outcomes)."""

    lines: list[bytes]
    invalid: np.ndarray
    outcome: np.ndarray | None = None

    @property
    def n_outcomes(self) -> int:
        """Outcome records in the chunk."""
        return 0 if self.outcome is None else int(self.outcome.sum())

    @property
    def n_events(self) -> int:
        """Valid events (impressions, exposures) in the chunk, outcome records not counted."""
        return len(self.lines) - int(self.invalid.sum()) - self.n_outcomes


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
        delayed = DelayedFeedback(self.config) if self.config.feedback == "delayed" else None
        while env.clock < n_events:
            ctx = env.contexts(BLOCK_REQUESTS)
            items, props = policy.select(ctx, k)
            labels = env.step(ctx, items)  # the same clicks in both feedback modes
            truth = None
            if include_truth:
                best_items, _ = env.best(ctx)
                best_slate = np.repeat(best_items[:, None], k, axis=1)
                truth = {
                    "p_click": env.reward_probabilities(ctx, items),
                    "p_best": env.reward_probabilities(ctx, best_slate),
                }
            first = int(ctx.t[0])
            keep = min(labels.size, n_events - first)
            if delayed is None:
                yield build_batch(self.world, ctx, items, labels, props, truth).slice(0, keep)
                continue
            delay_ms = delayed.draw(labels)
            batch = build_batch(self.world, ctx, items, np.zeros_like(labels), props, truth)
            if include_truth:
                batch = pa.RecordBatch.from_arrays(
                    [*batch.columns, *delayed.truth_columns(labels, delay_ms)],
                    schema=sim_schema(True, "delayed"),
                )
            yield delayed.merge(batch.slice(0, keep), first, delay_ms.ravel()[:keep])
        held = delayed.flush() if delayed is not None else None
        if held is not None:
            yield held

    def batches(
        self,
        n_events: int,
        chunk_size: int = 10_000,
        include_truth: bool = False,
        invalid_fraction: float = 0.0,
    ) -> Iterator[pa.RecordBatch]:
        """The first ``n_events`` events as record batches of ``chunk_size`` rows (the last may be shorter).

        With ``invalid_fraction > 0``, type-valid but semantically invalid rows are mixed in (so that
        about that share of all rows is invalid); they are extra rows, not counted in ``n_events``,
        as are the outcome records of ``feedback = "delayed"`` (:func:`count_outcomes` counts them).
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
        delayed = self.config.feedback == "delayed"
        for block in self._blocks(n_events, include_truth):
            lines = to_json_lines(block)
            m = invalid_count(rng, block.num_rows, invalid_fraction)
            invalid = np.zeros(len(lines) + m, dtype=bool)
            outcome = _is_outcome(block) if delayed else None
            if m:
                bad = invalid_json(block, m, rng)
                where = insert_rows(len(lines), m, rng)
                invalid[where] = True
                good, bad_it = iter(lines), iter(bad)
                lines = [next(bad_it) if b else next(good) for b in invalid.tolist()]
                if outcome is not None:
                    outcome = _spread(outcome, invalid)
            yield JsonChunk(lines, invalid, outcome)


def count_outcomes(batch: pa.RecordBatch) -> int:
    """Outcome records in a batch of :meth:`Simulator.batches` (injected invalid copies not counted)."""
    return int((_is_outcome(batch) & ~injected(batch)).sum())


def _is_outcome(block: pa.RecordBatch) -> np.ndarray:
    """Which rows of a block of valid records are outcome records."""
    return pc.equal(block.column("event_type"), OUTCOME_TYPE).fill_null(False).to_numpy(zero_copy_only=False)


def _spread(valid_mask: np.ndarray, invalid: np.ndarray) -> np.ndarray:
    """A mask over the valid rows, spread over the merged sequence (False at the invalid rows)."""
    out = np.zeros(len(invalid), dtype=bool)
    out[~invalid] = valid_mask
    return out


def _merge(valid: pa.RecordBatch, bad: pa.RecordBatch, where: np.ndarray) -> pa.RecordBatch:
    """Valid and invalid rows interleaved so that the invalid ones land at positions ``where``."""
    n = valid.num_rows + bad.num_rows
    is_bad = np.zeros(n, dtype=bool)
    is_bad[where] = True
    order = np.empty(n, dtype=np.int64)
    order[~is_bad] = np.arange(valid.num_rows)
    order[is_bad] = valid.num_rows + np.arange(bad.num_rows)
    return pa.concat_batches([valid, bad]).take(pa.array(order))
