"""Serving's fast paths agree with the slow, obvious ones.

A request's checks run over all candidates at once (``_fast_candidates``) and its events are built
column by column (``requests_events``); both must give exactly what the field-by-field checks and
the events decoded from the equivalent JSON records give, on requests with every mix of
categorical and numeric, shared and own, overlapping and missing features.
"""

from __future__ import annotations

import random

import numpy as np
import orjson
import pytest

from pipeline.events import EventRules, decode_json
from pipeline.features import FeatureSpec, Featurizer
from pipeline.serving.requests import Limits, _candidates, _fast_candidates, parse_request
from pipeline.serving.view import requests_events


def _features(rng: random.Random, names: list[str]) -> dict:
    out = {}
    for name in names:
        roll = rng.random()
        if roll < 0.4:
            out[name] = rng.choice(["ios", "web", "x y", "ü"])
        elif roll < 0.8:
            out[name] = rng.uniform(-5, 5)
    return out


def _body(rng: random.Random, r: int) -> dict:
    m = rng.randint(1, 7)
    uniform = rng.random() < 0.5  # every candidate with the same feature names, or ragged
    names = rng.sample(["price", "brand", "device", "age"], rng.randint(0, 3))
    candidates = []
    for j in range(m):
        own = _features(
            rng, names if uniform else rng.sample(["price", "brand", "device"], rng.randint(0, 2))
        )
        if uniform:
            own = {k: own.get(k, 1.5) for k in names}
        candidates.append({"item_id": f"i{rng.randint(0, 50)}-{j}", "features": own} if own else f"i{j}")
    body = {"model": "ftrl", "user_id": f"u{rng.randint(0, 3)}", "candidates": candidates}
    if rng.random() < 0.7:  # context features, sometimes named like an item's (the item's wins)
        body["features"] = _features(rng, rng.sample(["device", "hour", "region"], rng.randint(0, 3)))
    if rng.random() < 0.6:
        body["request_id"] = f"r{r}"
    return body


def _decoded(reqs) -> object:
    """The events of ``reqs`` as JSON records decoded by the event decoder: the reference."""
    lines = []
    for req in reqs:
        for j, (item, own) in enumerate(zip(req.item_ids, req.item_features)):
            record = {
                "event_id": f"{req.request_id or 'request'}:{j}",
                "ts": 1,
                "user_id": req.user_id,
                "item_id": item,
                "label": 0.0,
                "features": {**req.features, **own},
            }
            if req.request_id is not None:
                record["request_id"] = req.request_id
            lines.append(orjson.dumps(record))
    events, dead = decode_json(lines, EventRules())
    assert dead == []
    return events


def _row_features(fb) -> list[list[tuple[int, float]]]:
    return [
        sorted(zip(fb.keys[a:b].tolist(), fb.values[a:b].tolist()))
        for a, b in zip(fb.indptr[:-1], fb.indptr[1:])
    ]


@pytest.mark.parametrize("seed", range(4))
def test_batch_events_equal_the_events_decoded_from_json(seed):
    rng = random.Random(seed)
    featurizer = Featurizer(FeatureSpec(crosses=(("user_id", "device"),)))
    for trial in range(40):
        reqs = [parse_request(_body(rng, r)) for r in range(rng.randint(1, 5))]
        built = requests_events([(q, q.item_ids, q.item_features) for q in reqs])
        reference = _decoded(reqs)
        for name in ("event_id", "user_id", "item_id", "request_id"):
            assert built.column(name).to_pylist() == reference.column(name).to_pylist(), (trial, name)
        for name in ("cat_features", "num_features"):  # the same entries per row (order aside)
            got = [sorted(row) for row in built.column(name).to_pylist()]
            want = [sorted(row) for row in reference.column(name).to_pylist()]
            assert got == want, (trial, name)
        # hence the same features, and the same score from any model
        assert _row_features(featurizer.transform(built)) == _row_features(featurizer.transform(reference))


def test_the_fast_checks_agree_with_the_field_by_field_checks():
    rng = random.Random(11)
    limits = Limits()
    taken = 0
    for _ in range(300):
        candidates = [c if isinstance(c, dict) else {"item_id": c} for c in _body(rng, 0)["candidates"]]
        fast = _fast_candidates(candidates, limits)
        if fast is not None:
            taken += 1
            assert fast == _candidates(candidates, limits)
    assert taken > 200  # the usual request takes the fast path


@pytest.mark.parametrize(
    "candidates",
    [
        [{"item_id": 7}],  # an integer id: converted
        [{"item_id": "a", "features": {"n": 3}}],  # an integer value: converted to float
        [{"item_id": "a", "features": {"flag": True}}],  # a boolean: categorical "true"
        [{"item_id": "a", "features": {"gone": None}}],  # a null: dropped
        [{"item_id": "a", "features": {}}, {"item_id": "b", "features": None}],
        ["a", {"item_id": "b"}],  # a bare id
    ],
)
def test_unusual_candidates_take_the_field_by_field_path_and_are_converted(candidates):
    req = parse_request({"model": "m", "user_id": "u", "candidates": candidates})
    assert (req.item_ids, req.item_features) == _candidates(candidates, Limits())


@pytest.mark.parametrize(
    ("candidates", "field"),
    [
        ([{"item_id": "a"}, {"item_id": ""}], "candidates[1].item_id"),
        ([{"item_id": "a"}, {"item_id": "b", "colour": 1}], "candidates[1].colour"),
        (
            [{"item_id": "a", "features": {"p": 1.0}}, {"item_id": "b", "features": {"p": [1]}}],
            "candidates[1].features.p",
        ),
        (
            [{"item_id": "a", "features": {"p": 1.0}}, {"item_id": "b", "features": {"": 1.0}}],
            "candidates[1].features",
        ),
        (
            [{"item_id": "a", "features": {"p": 1.0}}, {"item_id": "b", "features": {"p": float("inf")}}],
            "candidates[1].features.p",
        ),
        ([{"item_id": "a"}, {"item_id": "x" * 300}], "candidates[1].item_id"),
    ],
)
def test_a_bad_candidate_is_still_named_exactly(candidates, field):
    from pipeline.serving.requests import RequestError

    with pytest.raises(RequestError) as err:
        parse_request({"model": "m", "user_id": "u", "candidates": candidates})
    assert err.value.field == field


def test_a_request_dict_is_not_changed_by_building_its_events():
    body = {
        "model": "m",
        "user_id": "u",
        "features": {"device": "ios", "price": 2.0},
        "candidates": [
            {"item_id": "a", "features": {"price": 1.0}},
            {"item_id": "b", "features": {"brand": "z"}},
        ],
    }
    before = orjson.dumps(body)
    req = parse_request(body)
    events = requests_events([(req, req.item_ids, req.item_features)] * 3)
    assert orjson.dumps(body) == before
    assert len(events) == 6
    np.testing.assert_array_equal(events.column("row").to_numpy(), np.arange(6))
