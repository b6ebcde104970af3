"""The duplicate filter against a plain event-by-event reference, including the window's edge."""

from __future__ import annotations

from collections import deque

import numpy as np
import pyarrow as pa
import pytest

from pipeline.dedup import Deduplicator


def reference(batches: list[list[str]], window: int) -> list[list[bool]]:
    """Keep an id unless it is among the last ``window`` kept ids (evicting the oldest as it goes)."""
    recent: deque[str] = deque()
    out = []
    for batch in batches:
        keep = []
        for event_id in batch:
            fresh = event_id not in recent
            keep.append(fresh)
            if fresh:
                if window and len(recent) == window:
                    recent.popleft()
                if window:
                    recent.append(event_id)
        out.append(keep if window else [True] * len(batch))
    return out


@pytest.mark.parametrize(
    ("window", "ids", "batch"),
    [(2, 5, 3), (7, 12, 4), (50, 60, 20), (50, 400, 64), (5, 30, 40), (0, 5, 4), (1000, 300, 100)],
)
def test_filter_equals_the_event_by_event_reference(window, ids, batch):
    rng = np.random.default_rng(window * 31 + ids)
    stream = [f"e{i}" for i in rng.integers(ids, size=3000)]
    batches = [stream[i : i + batch] for i in range(0, len(stream), batch)]
    d = Deduplicator(window)
    got = [d.filter(pa.array(b)).tolist() for b in batches]
    assert got == reference(batches, window)


def test_state_round_trip_continues_like_the_original():
    rng = np.random.default_rng(0)
    stream = [f"e{i}" for i in rng.integers(80, size=2000)]
    a = Deduplicator(40)
    for i in range(0, 1000, 50):
        a.filter(pa.array(stream[i : i + 50]))
    b = Deduplicator(40)
    b.load_state(a.state())
    for i in range(1000, 2000, 50):
        batch = pa.array(stream[i : i + 50])
        assert b.filter(batch).tolist() == a.filter(batch).tolist()


def test_a_long_stream_through_a_large_window_keeps_the_table_sound():
    # many evictions with a steady trickle of repeats, across the bulk and the event-by-event paths
    rng = np.random.default_rng(7)
    stream = [f"e{i}" for i in rng.integers(30_000, size=60_000)]
    batches = [stream[i : i + 2000] for i in range(0, len(stream), 2000)]
    d = Deduplicator(5000)
    assert [d.filter(pa.array(b)).tolist() for b in batches] == reference(batches, 5000)
