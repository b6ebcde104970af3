"""The neural ranker's inputs read from a batch's recorded categorical entries, as from its events.

``hash_batch`` takes the categorical entries the featurizer kept (``FeatureBatch.categorical``),
so that a served batch, whose events are deferred, is encoded without building them; it must give
exactly what the events' map entries give (the excluded features dropped), and grow the same slots
in the same order.
"""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import orjson
import pytest

from pipeline.events import EventRules, decode_json
from pipeline.features import FeatureSpec, Featurizer
from pipeline.learners.neural.encode import FieldSlots, hash_batch


def _events(seed: int, n: int = 60):
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        names = rng.sample(["device", "region", "brand", "colour", "price", "hour"], rng.randint(0, 5))
        features = {k: (rng.uniform(0, 9) if k in ("price", "hour") else rng.choice("abcd")) for k in names}
        lines.append(
            orjson.dumps(
                {
                    "event_id": f"e{i}",
                    "ts": i,
                    "user_id": f"u{i % 7}",
                    "item_id": f"i{i % 11}",
                    "label": 0,
                    "features": features,
                }
            )
        )
    events, dead = decode_json(lines, EventRules())
    assert dead == []
    return events


@pytest.mark.parametrize("exclude", [(), ("brand",), ("device", "price")])
def test_encoding_from_recorded_entries_equals_encoding_from_events(exclude):
    for seed in range(5):
        batch = Featurizer(FeatureSpec(exclude=exclude)).transform(_events(seed))
        without = dataclasses.replace(batch, categorical=None)  # read from the events' map
        for grow in (True, False):
            a, b = FieldSlots(max_fields=3, max_dense=2), FieldSlots(max_fields=3, max_dense=2)
            if not grow:
                hash_batch(batch, a, grow=True)
                hash_batch(without, b, grow=True)
            got, want = hash_batch(batch, a, grow), hash_batch(without, b, grow)
            assert a.cat_names == b.cat_names and not set(exclude) & set(a.cat_names)
            for field in ("user", "item", "cat", "dense"):
                np.testing.assert_array_equal(getattr(got, field), getattr(want, field), err_msg=field)
            assert got.cat.any()
