"""Vocabularies of the neural learner: admission, eviction, row reuse, double hashing, state."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.learners.neural.vocab import CollisionFreeVocab, DoubleHashVocab, make_vocab


def keys(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.uint64)


def rows_of(vocab, *values: int) -> list[int]:
    return vocab.lookup(keys(*values))[:, 0].tolist()


# ------------------------------------------------------------------------------ admission


def test_update_below_min_count_keeps_id_on_shared_row():
    v = CollisionFreeVocab(capacity=8, min_count=3)
    v.update(keys(5), clock=1)
    v.update(keys(5), clock=2)
    assert rows_of(v, 5) == [0]
    assert v.rows_in_use() == 0


def test_update_reaching_min_count_admits_id():
    v = CollisionFreeVocab(capacity=8, min_count=3)
    v.update(keys(5, 9), clock=1)
    v.update(keys(5), clock=2)
    rows, fresh = v.update(keys(5, 9), clock=3)  # 5: third sighting; 9: second
    assert rows[:, 0].tolist() == [1, 0]
    assert fresh.tolist() == [1]
    assert v.admissions == 1


def test_update_counts_repeats_inside_one_batch():
    v = CollisionFreeVocab(capacity=8, min_count=3)
    rows, _ = v.update(keys(7, 7, 7, 8), clock=1)
    assert rows[:, 0].tolist() == [1, 1, 1, 0]


def test_update_never_admits_key_zero():
    v = CollisionFreeVocab(capacity=4)
    rows, fresh = v.update(keys(0, 0, 3), clock=1)
    assert rows[:, 0].tolist() == [0, 0, 1]
    assert fresh.tolist() == [1]


def test_lookup_leaves_state_unchanged():
    v = CollisionFreeVocab(capacity=4, min_count=2)
    v.update(keys(1, 1, 2), clock=1)
    before = v.state()
    v.lookup(keys(1, 2, 3, 3, 3))
    after = v.state()
    for k in before.arrays:
        np.testing.assert_array_equal(before.arrays[k], after.arrays[k])


# ------------------------------------------------------------------------------ eviction and reuse


def test_update_evicts_rows_older_than_max_age_and_reuses_them():
    v = CollisionFreeVocab(capacity=8, max_age=10)
    v.update(keys(100, 200), clock=5)  # rows 1, 2
    v.update(keys(200), clock=12)
    _, fresh = v.update(keys(300), clock=16)  # 100 last seen at 5: 16 - 5 > 10 -> evicted
    assert rows_of(v, 100, 200, 300) == [0, 2, 1]
    assert fresh.tolist() == [1]
    assert v.evictions == 1


def test_update_when_full_evicts_least_recently_seen():
    v = CollisionFreeVocab(capacity=4)  # 3 ids at most
    for clock, key in enumerate((10, 20, 30), start=1):
        v.update(keys(key), clock=clock)
    v.update(keys(10), clock=4)  # 20 is now the least recently seen
    v.update(keys(40), clock=5)
    assert rows_of(v, 10, 20, 30, 40) == [1, 0, 3, 2]
    assert v.evictions == 1
    assert v.rows_in_use() == 3


def test_update_never_evicts_a_row_seen_in_the_same_batch():
    v = CollisionFreeVocab(capacity=3)  # 2 ids at most
    v.update(keys(1, 2, 2, 3, 3, 3), clock=1)
    # the two most frequent get the rows, the third stays on the shared row
    assert dict(zip([1, 2, 3], rows_of(v, 1, 2, 3))) == {1: 0, 2: 2, 3: 1}
    assert v.evictions == 0


def _reference_run(stream, capacity, max_age):
    """An independent, dict-based model of the collision-free policy (min_count=1)."""
    key_row: dict[int, int] = {}
    last: dict[int, int] = {}  # row -> last seen
    evictions = 0
    for clock, batch in stream:
        counts: dict[int, int] = {}
        for k in batch:
            if k:
                counts[k] = counts.get(k, 0) + 1
        for k in counts:
            if k in key_row:
                last[key_row[k]] = clock
        if max_age:
            for k, r in list(key_row.items()):
                if clock - last[r] > max_age:
                    del key_row[k], last[r]
                    evictions += 1
        new = sorted((k for k in counts if k not in key_row), key=lambda k: (-counts[k], k))
        free = [r for r in range(1, capacity) if r not in last]
        if len(new) > len(free):
            victims = sorted((r for r in last if last[r] < clock), key=lambda r: (last[r], r))
            for r in victims[: len(new) - len(free)]:
                k = next(k for k, rr in key_row.items() if rr == r)
                del key_row[k], last[r]
                evictions += 1
            free = [r for r in range(1, capacity) if r not in last]
        for k, r in zip(new, free):
            key_row[k] = r
            last[r] = clock
    return key_row, evictions


@pytest.mark.parametrize("max_age", [0, 30])
def test_update_matches_reference_policy_on_random_stream(max_age):
    rng = np.random.default_rng(0)
    stream = []
    clock = 0
    for _ in range(60):
        clock += int(rng.integers(1, 10))
        stream.append((clock, rng.zipf(1.5, size=int(rng.integers(1, 12))).astype(np.uint64) % 50))
    v = CollisionFreeVocab(capacity=12, max_age=max_age)
    for clock, batch in stream:
        v.update(batch, clock)
    expected, evictions = _reference_run([(c, b.tolist()) for c, b in stream], 12, max_age)
    assert v.evictions == evictions
    universe = np.arange(50, dtype=np.uint64)
    got = {int(k): int(r) for k, r in zip(universe, v.lookup(universe)[:, 0]) if r}
    assert got == expected


# ------------------------------------------------------------------------------ double hashing


def test_double_hash_lookup_matches_hand_computation():
    v = DoubleHashVocab(buckets=11)
    h = (7 << 32) | 25
    # low 32 bits 25 -> 1 + 25 % 10 = 6; high 32 bits 7 -> 1 + 7 % 10 = 8
    assert v.lookup(keys(h, 0)).tolist() == [[6, 8], [0, 0]]


def test_double_hash_rows_stay_inside_table_and_count_touched_buckets():
    v = DoubleHashVocab(buckets=64)
    ks = np.random.default_rng(1).integers(1, 2**63, size=500, dtype=np.int64).astype(np.uint64)
    rows, fresh = v.update(ks, clock=1)
    assert rows.shape == (500, 2) and rows.min() >= 1 and rows.max() < 64
    assert len(fresh) == 0 and v.evictions == 0
    assert v.rows_in_use() == len(np.unique(rows))


def test_double_hash_distinct_ids_rarely_share_both_buckets():
    v = DoubleHashVocab(buckets=1024)
    ks = np.arange(1, 5001, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    pairs = {tuple(r) for r in v.lookup(ks).tolist()}
    assert len(pairs) >= 4990  # 5000 ids, ~1M bucket pairs: a handful of full collisions at most


# ------------------------------------------------------------------------------ state and errors


@pytest.mark.parametrize("kind", ["collision_free", "double_hash"])
def test_state_round_trip_continues_identically(kind):
    rng = np.random.default_rng(2)
    stream = [rng.integers(1, 40, size=15).astype(np.uint64) for _ in range(20)]
    a = make_vocab(kind, 16, min_count=2, max_age=25)
    for t, batch in enumerate(stream[:10]):
        a.update(batch, clock=3 * t)
    b = make_vocab(kind, 16, min_count=2, max_age=25)
    b.load_state(a.state())
    for t, batch in enumerate(stream[10:], start=10):
        ra, _ = a.update(batch, clock=3 * t)
        rb, _ = b.update(batch, clock=3 * t)
        np.testing.assert_array_equal(ra, rb)
    assert a.evictions == b.evictions


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: CollisionFreeVocab(capacity=1), "capacity must be an integer >= 2, got 1"),
        (lambda: CollisionFreeVocab(capacity=8, min_count=0), "min_count must be an integer >= 1, got 0"),
        (lambda: CollisionFreeVocab(capacity=8, max_age=-1), "max_age must be an integer >= 0, got -1"),
        (lambda: make_vocab("lru", 8), "vocab must be one of collision_free, double_hash, got 'lru'"),
    ],
)
def test_invalid_arguments_name_the_parameter(build, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build()
