"""Delayed feedback: exposures now, their clicks later, as a real log holds them (``feedback = "delayed"``).

Every shown item is an exposure (label 0); every click the world draws for it (the same draws as
in the ``joined`` stream) becomes an outcome record ``delay`` later (:mod:`pipeline.simulation.delays`),
unless it is one of the ``unattributed_fraction`` that are never logged. The log is in event-time
order across the whole stream: an outcome is written among the exposures of the block whose times
reach its time, held in a buffer sorted by time until then, and whatever is still held when the
stream ends is flushed after its last exposure.

The log's clock is the running maximum of the exposures' ``ts``: with ``late_fraction = 0`` it is
their ``ts`` itself, so ``ts`` never decreases over the records; with late exposures those stay
where the stream puts them and only they are out of order. An outcome is placed by
``max(its ts, its exposure's clock)``, after every exposure at or before that clock, so it always
comes after its own exposure.

Outcomes at times 5, 20 and 35 among exposures at 10, 20, 30 land at merged positions 0, 3 and 5:

>>> merge_positions(np.array([10, 20, 30]), np.array([5, 20, 35])).tolist()
[0, 3, 5]
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipeline.simulation.config import SimConfig
from pipeline.simulation.delays import draw_delays_ms
from pipeline.simulation.records import DELAY_TRUTH_FIELDS, build_outcomes
from pipeline.simulation.world import STREAM_DELAY, rng_for

__all__ = ["DelayedFeedback", "merge_positions"]


def merge_positions(exposure_keys: np.ndarray, outcome_keys: np.ndarray) -> np.ndarray:
    """Where each outcome lands in the merged sequence: after every exposure whose key is <= its own.

    Both key arrays are non-decreasing; ties between outcomes keep their order.
    """
    return np.searchsorted(exposure_keys, outcome_keys, side="right") + np.arange(len(outcome_keys))


def _interleave(exposures: pa.RecordBatch, outcomes: pa.RecordBatch, at: np.ndarray) -> pa.RecordBatch:
    """``exposures`` with ``outcomes`` put at positions ``at`` (of the merged sequence)."""
    n = exposures.num_rows + outcomes.num_rows
    is_outcome = np.zeros(n, dtype=bool)
    is_outcome[at] = True
    order = np.empty(n, dtype=np.int64)
    order[~is_outcome] = np.arange(exposures.num_rows)
    order[is_outcome] = exposures.num_rows + np.arange(outcomes.num_rows)
    return pa.concat_batches([exposures, outcomes]).take(pa.array(order))


class DelayedFeedback:
    """Turns the blocks of the joined stream into exposures and outcomes, in event-time order.

    Parameters
    ----------
    config
        The simulator's config (``delay*`` and ``unattributed_fraction`` are read).

    Delays come from the seed's own streams (one for the delays, one for the lost attributions),
    drawn for every shown item whether clicked or not, so an event's delay depends only on the
    seed and its index.
    """

    def __init__(self, config: SimConfig):
        self.config = config
        self._delays = rng_for(config.seed, STREAM_DELAY, 0)
        self._attribution = rng_for(config.seed, STREAM_DELAY, 1)
        self._clock = np.iinfo(np.int64).min  # the log's clock: the latest exposure ts so far
        self._held: pa.RecordBatch | None = None
        self._held_keys = np.zeros(0, dtype=np.int64)

    def draw(self, clicked: np.ndarray) -> np.ndarray:
        """Delays (ms, int64) of the items shown in one block, ``-1`` where no outcome is logged."""
        delay = draw_delays_ms(self._delays, clicked.size, self.config).reshape(clicked.shape)
        logged = clicked > 0
        if self.config.unattributed_fraction > 0:
            logged &= self._attribution.random(clicked.shape) >= self.config.unattributed_fraction
        return np.where(logged, delay, -1)

    @staticmethod
    def truth_columns(clicked: np.ndarray, delay_ms: np.ndarray) -> list[pa.Array]:
        """``clicked`` (0/1) and ``delay_ms`` (null unless an outcome is logged) of one block's exposures."""
        flat = delay_ms.ravel()
        return [
            pa.array(clicked.ravel().astype(np.int64), DELAY_TRUTH_FIELDS[0].type),
            pa.array(flat, DELAY_TRUTH_FIELDS[1].type, mask=flat < 0),
        ]

    def merge(self, exposures: pa.RecordBatch, first_index: int, delay_ms: np.ndarray) -> pa.RecordBatch:
        """The exposures of one block with every outcome that is due by its last one, in log order.

        ``exposures`` are consecutive events from index ``first_index``; ``delay_ms`` is
        :meth:`draw`'s answer for them (flat, the exposures' order), negative where none is logged.
        """
        rows = np.flatnonzero(delay_ms >= 0)
        ts = exposures.column("ts").to_numpy()
        # 1. the log's clock at each exposure, carried over from the previous blocks
        keys = np.maximum.accumulate(np.maximum(ts, self._clock))
        self._clock = int(keys[-1]) if len(keys) else self._clock
        # 2. the new outcomes join the held ones, sorted by where they belong in the log
        fresh = build_outcomes(exposures, rows, first_index + rows, delay_ms[rows], self.config.run_id)
        fresh_keys = np.maximum(ts[rows] + delay_ms[rows], keys[rows])
        held = fresh if self._held is None else pa.concat_batches([self._held, fresh])
        held_keys = np.concatenate([self._held_keys, fresh_keys])
        order = np.argsort(held_keys, kind="stable")
        held, held_keys = held.take(pa.array(order)), held_keys[order]
        # 3. those due by the block's last exposure go into this block; a later exposure cannot precede them
        due = int(np.searchsorted(held_keys, self._clock, side="right"))
        self._held, self._held_keys = held.slice(due), held_keys[due:]
        return _interleave(exposures, held.slice(0, due), merge_positions(keys, held_keys[:due]))

    def flush(self) -> pa.RecordBatch | None:
        """The outcomes still held at the end of the stream (in log order), or None."""
        held, self._held, self._held_keys = self._held, None, np.zeros(0, dtype=np.int64)
        return held if held is not None and held.num_rows else None
