"""Serving's fast paths agree with the slow, obvious ones.

A request's checks run over all candidates at once (``_fast_candidates``), its events are built
column by column (``requests_events``) and its features hashed per request (``request_features``);
each must give exactly what the field-by-field checks, the events decoded from the equivalent JSON
records and the featurizer's own ``transform`` give, on requests with every mix of categorical and
numeric, shared and own, overlapping and missing features.
"""

from __future__ import annotations

import random

import msgspec
import numpy as np
import orjson
import pytest

from pipeline.events import EventRules, decode_json
from pipeline.features import FeatureSpec, Featurizer
from pipeline.serving.request_events import requests_events
from pipeline.serving.request_features import request_features
from pipeline.serving.requests import (
    Limits,
    RequestError,
    _candidates,
    _decoder,
    _fast_candidates,
    parse_body,
    parse_request,
)


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


def _assert_same_features(got, want, where) -> None:
    for name in ("indptr", "keys", "values", "user_hash", "item_hash"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=f"{where}: {name}")
        assert getattr(got, name).dtype == getattr(want, name).dtype, (where, name)
    assert sorted(got.numeric) == sorted(want.numeric), where
    for name in want.numeric:
        np.testing.assert_array_equal(got.numeric[name], want.numeric[name], err_msg=f"{where}: {name}")
    for a, b in zip(got.categorical, want.categorical):
        np.testing.assert_array_equal(a, b, err_msg=f"{where}: categorical")


@pytest.mark.parametrize(
    "spec",
    [
        FeatureSpec(),
        FeatureSpec(crosses=(("user_id", "device"), ("item_id", "brand"), ("request_id", "item_id"))),
        FeatureSpec(exclude=("device", "price"), crosses=(("device", "region"),)),
        FeatureSpec(standardize=False, crosses=(("position", "item_id"), ("event_type", "device"))),
    ],
    ids=["plain", "crosses", "exclude", "request-fields"],
)
def test_request_features_equal_the_transform_of_the_request_events(spec):
    rng = random.Random(7)
    featurizer = Featurizer(spec)
    warm = _decoded([parse_request(_body(rng, r)) for r in range(30)])
    featurizer.update(featurizer.transform(warm))  # standardised under statistics, as when serving
    for trial in range(60):
        reqs = [parse_request(_body(rng, r)) for r in range(rng.randint(1, 6))]
        got = request_features(featurizer, reqs)
        want = featurizer.transform(requests_events([(q, q.item_ids, q.item_features) for q in reqs]))
        _assert_same_features(got, want, trial)
        assert len(got.events) == len(want.events)
        # the deferred events are the request events, built when read
        assert got.events.column("cat_features").to_pylist() == want.events.column("cat_features").to_pylist()
        assert got.events.column("event_id").to_pylist() == want.events.column("event_id").to_pylist()


def _outcome(parse, *args):
    try:
        return parse(*args)
    except RequestError as exc:
        return ("error", exc.field, str(exc))


_ODD_BODIES = [
    {"model": "m", "user_id": 7, "candidates": ["a"]},  # an integer user: converted
    {"model": "m", "user_id": "u", "candidates": [{"item_id": 7}, "b"]},
    {"model": "m", "user_id": "u", "features": {"flag": True, "gone": None, "n": 3}, "candidates": ["a"]},
    {"model": "m", "user_id": "u", "candidates": [{"item_id": "a", "features": {"n": 3, "b": False}}]},
    {"model": "m", "user_id": "u", "candidates": ["a", "a"]},
    {"model": "m", "user_id": "u", "candidates": ["a", "b"], "k": 3},
    {"model": "m", "user_id": "u", "candidates": ["a", "b"], "k": True},
    {"model": "m", "user_id": "u", "candidates": ["a", "b"], "k": 1.0},
    {"model": "m", "user_id": "u", "candidates": ["a"], "request_id": ""},
    {"model": "m", "user_id": "u", "candidates": ["a"], "request_id": 12},
    {"model": "m", "user_id": "u", "candidates": ["a"], "exploration": "softmax"},
    {"model": "m", "user_id": "u", "candidates": ["a"], "exploration": {"rule": "nope"}},
    {
        "model": "m",
        "user_id": "u",
        "candidates": ["a"],
        "exploration": {"rule": "softmax", "temperature": "x"},
    },
    {"model": "m", "user_id": "u", "candidates": ["a"], "colour": 1},
    {"model": "", "user_id": "u", "candidates": ["a"]},
    {"model": "m", "user_id": "u", "candidates": []},
    {"model": "m", "user_id": "u", "candidates": [f"i{j}" for j in range(1001)]},
    {"model": "m", "user_id": "u", "candidates": [{"item_id": "a", "features": {"": 1.0}}]},
    {"model": "m", "user_id": "u", "candidates": [{"item_id": "a", "features": {"p": [1]}}]},
    {"model": "m", "user_id": "u" * 300, "candidates": ["a"]},
    {"model": "m", "user_id": "u", "features": {f"f{j}": 1.0 for j in range(300)}, "candidates": ["a"]},
    {"model": "m", "candidates": ["a"]},
    ["not", "an", "object"],
]


@pytest.mark.parametrize("decide", [False, True])
def test_parse_body_gives_what_parse_request_gives(decide):
    """The one-pass parser of raw bodies: the same request, or the same error naming the same field."""
    rng = random.Random(3)
    bodies = [_body(rng, r) for r in range(300)] + _ODD_BODIES
    fast = 0
    for body in bodies:
        if decide and isinstance(body, dict) and rng.random() < 0.5:
            body = {**body, "k": 1, "exploration": {"rule": "softmax", "temperature": 0.1}}
        raw = orjson.dumps(body)
        assert _outcome(parse_body, raw, Limits(), decide) == _outcome(
            parse_request, body, Limits(), decide
        ), body
        try:
            _decoder(Limits()).decode(raw)
            fast += 1
        except msgspec.ValidationError:
            pass
    assert fast > 250  # the usual body takes the one-pass parser
    for raw in (
        b'{"model": "m"',
        b"",
        b"nan",
        b'{"model": "m", "user_id": "u", "candidates": ["a"], "k": 1e999}',
    ):
        got = _outcome(parse_body, raw)
        assert got[0] == "error" and got[1] in ("body", "k"), raw
