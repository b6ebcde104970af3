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
