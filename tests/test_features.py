"""Featurisation: hashed keys, standardisation and crosses."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from pipeline.events import EventRules, decode_json
from pipeline.features import BIAS_KEY, FeatureSpec, Featurizer
from pipeline.hashing import combine, hash_one


def _events(rows):
    events, dead = decode_json([orjson.dumps(r) for r in rows], EventRules())
    assert not dead
    return events


def _row(i, **feats):
    return {"event_id": f"e{i}", "ts": i, "user_id": f"u{i}", "item_id": "i1", "label": 1, "features": feats}


def test_rows_hold_bias_ids_and_features():
    fb = Featurizer(FeatureSpec(standardize=False)).transform(
        _events([_row(0, device="ios", price=2.0), _row(1)])
    )
    assert fb.indptr.tolist() == [0, 5, 8]
    first = fb.keys[:5].tolist()
    assert first[0] == int(BIAS_KEY)
    assert first[1] == hash_one("u0", "user_id") and first[2] == hash_one("i1", "item_id")
    expected_cat = combine(
        np.array([hash_one("device", "feature")], np.uint64), np.array([hash_one("ios", "value")], np.uint64)
    )
    assert first[3] == int(expected_cat[0])
    assert first[4] == hash_one("price", "numeric") and fb.values[4] == 2.0


def test_numeric_standardisation_uses_statistics_before_the_batch():
    f = Featurizer(FeatureSpec(standardize=True))
    f.transform_and_update(_events([_row(i, price=float(p)) for i, p in enumerate([1, 2, 3, 4])]))
    saved = f.state()
    fb = f.transform(_events([_row(9, price=4.0)]))
    mean, sd = 2.5, np.std([1, 2, 3, 4], ddof=1)
    assert fb.values[-1] == np.float32((4.0 - mean) / sd)
    g = Featurizer(FeatureSpec(standardize=True))
    g.load_state(saved)
    assert g.transform(_events([_row(9, price=4.0)])).values[-1] == fb.values[-1]


def test_cross_present_only_when_both_fields_are():
    f = Featurizer(FeatureSpec(crosses=(("user_id", "device"),), standardize=False))
    fb = f.transform(_events([_row(0, device="ios"), _row(1)]))
    assert np.diff(fb.indptr).tolist() == [5, 3]


def test_exclude_drops_named_features():
    fb = Featurizer(FeatureSpec(exclude=("device", "price"))).transform(
        _events([_row(0, device="ios", price=1.0)])
    )
    assert np.diff(fb.indptr).tolist() == [3]


def test_transform_is_pure_and_update_absorbs_the_batch():
    f = Featurizer(FeatureSpec(standardize=True))
    f.transform_and_update(_events([_row(i, price=float(p)) for i, p in enumerate([1, 2, 3, 4])]))
    before = f.state()
    batch = _events([_row(9, price=40.0), _row(10, price=50.0)])
    first = f.transform(batch)
    assert f.state().equals(before)  # scoring changes nothing
    assert np.array_equal(f.transform(batch).values, first.values)
    f.update(first)
    count, mean = f.state().column("count")[0].as_py(), f.state().column("mean")[0].as_py()
    assert count == 6 and mean == pytest.approx(np.mean([1, 2, 3, 4, 40, 50]))


def _assert_same_features(got, want, events: bool = True):
    """Every array of two feature batches equal (numeric features by name), events by rows."""
    for name in ("indptr", "keys", "values", "user_hash", "item_hash"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name, strict=True)
    assert sorted(got.numeric) == sorted(want.numeric)
    for name, dense in want.numeric.items():
        np.testing.assert_array_equal(got.numeric[name], dense, err_msg=name)
    for g, w in zip(got.categorical, want.categorical, strict=True):
        np.testing.assert_array_equal(g, w, strict=True)
    if events:
        names = [n for n in want.events.table.schema.names if n != "row"]  # a decoded batch's own numbering
        assert got.events.table.select(names).equals(want.events.table.select(names))


def _mixed_rows(n, offset=0):
    rng = np.random.default_rng(offset)
    rows = []
    for i in range(offset, offset + n):
        feats = {"device": ["ios", "web", "android"][i % 3]}
        if i % 2:
            feats["price"] = float(rng.normal(10, 3))
        if i % 3 == 0:
            feats["age"] = float(rng.integers(18, 80))
            feats["cuisine"] = ["thai", "pizza"][i % 2]
        rows.append(_row(i, **feats))
    return rows


def test_taken_rows_equal_the_transform_of_the_taken_events():
    from pipeline.features import take_features

    f = Featurizer(FeatureSpec(crosses=(("user_id", "device"),)))
    f.transform_and_update(_events(_mixed_rows(30, 100)))
    events = _events(_mixed_rows(40))
    whole = f.transform(events)
    for rows in (
        [5, 1, 38, 0, 17],
        [3, 9, 15],
        [0],
        list(range(40))[::-1],
        [4, 4, 2, 4],
    ):  # [3, 9, 15]: no 'price'
        _assert_same_features(take_features(whole, np.array(rows)), f.transform(events.take(np.array(rows))))


def test_stored_features_restandardized_later_equal_a_fresh_transform():
    """Features kept from exposure time, standardised again after more batches were absorbed."""
    from pipeline.features import take_features

    f = Featurizer(FeatureSpec())
    events = _events(_mixed_rows(40))
    kept = f.transform_and_update(events)
    for k in range(3):
        f.transform_and_update(_events(_mixed_rows(25, 1000 * (k + 1))))
    rows = np.array([7, 2, 31, 11])
    _assert_same_features(f.restandardized(take_features(kept, rows)), f.transform(events.take(rows)))
    _assert_same_features(f.restandardized(kept), f.transform(events))
    plain = Featurizer(FeatureSpec(standardize=False))
    assert plain.restandardized(kept) is kept


def test_stacked_features_equal_the_transform_of_all_their_events():
    from pipeline.events.schema import ChainedEvents
    from pipeline.features import stack_features

    f = Featurizer(FeatureSpec())
    parts = [_events(_mixed_rows(n, at)) for n, at in ((10, 0), (7, 50), (12, 90))]
    batches = [f.transform(p) for p in parts]
    chained = ChainedEvents(parts)
    stacked = stack_features(batches, chained)
    whole = f.transform(_events(_mixed_rows(10, 0) + _mixed_rows(7, 50) + _mixed_rows(12, 90)))
    np.testing.assert_array_equal(chained.label, whole.events.label)
    for name in ("event_id", "user_id", "item_id", "ts"):
        assert chained.column(name).equals(whole.events.column(name))
    assert chained.table.column("event_id").equals(whole.events.column("event_id"))
    # (the decoder orders a row's map entries by the batch's first sight of each name: compared above)
    _assert_same_features(stacked, whole, events=False)
