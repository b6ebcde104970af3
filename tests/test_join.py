"""The exposure/outcome join (pipeline/join): attribution rules, strategies, weights, bounds, state."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.events import EventRules, decode_json
from pipeline.join.joiner import TRAIN_EARLY, TRAIN_FINAL, TRAIN_LABELLED, TRAIN_POSITIVE, Joiner
from pipeline.join.settings import JoinConfig
from pipeline.join.weights import es_dfm_weights, fake_negative_weights


def _x(eid, ts, request="r", item="i", etype="impression", **extra):
    return {
        "event_id": eid,
        "ts": ts,
        "user_id": "u",
        "item_id": item,
        "label": 0,
        "event_type": etype,
        "request_id": request,
        **extra,
    }


def _o(eid, ts, request="r", item="i", etype="click", label=1.0):
    return {
        "event_id": eid,
        "ts": ts,
        "user_id": "u",
        "item_id": item,
        "label": label,
        "event_type": etype,
        "request_id": request,
    }


def _events(rows):
    events, dead = decode_json([orjson.dumps(r) for r in rows], EventRules())
    assert not dead, dead
    return events


def _step(joiner, rows, score=0.5):
    step = joiner.ingest(_events(rows))
    for name in joiner.learners:
        joiner.record_predictions(name, np.full(len(step.scored), score))
    return joiner.advance()


def _joiner(**kw):
    kw.setdefault("allowed_lateness_ms", 0)
    kw.setdefault("window_s", 10)
    return Joiner(JoinConfig(enabled=True, **kw), ["m"])


def _final(out):
    return dict(zip(out.evaluated.strings("event_id"), out.evaluated.label.tolist(), strict=True))


def test_wait_learns_each_exposure_once_with_its_final_label_when_the_window_closes():
    j = _joiner(strategy="wait")
    out = _step(j, [_x("a", 0), _x("b", 1000, item="k"), _o("c1", 3000), _x("z", 9000, request="q")])
    assert len(out.train) == 0 and len(out.evaluated) == 0  # watermark 9 s: every window is open
    out = _step(j, [_o("c2", 12_000, item="k")])  # watermark 12 s: a (0 + 10 s) and b (1 + 10 s) are final
    assert _final(out) == {"a": 1.0, "b": 0.0}  # b's click came 11 s after it: after the 10 s window
    assert out.train.label.tolist() == [1.0, 0.0] and set(out.train_kind.tolist()) == {TRAIN_FINAL}
    assert j.counters["attributed"] == 1 and j.counters["after_window"] == 1
    assert j.store.live == 1  # z


def test_an_outcome_before_its_exposure_waits_for_it_and_one_past_the_watermark_is_an_orphan():
    j = _joiner(strategy="wait", allowed_lateness_ms=5000)
    _step(j, [_o("c", 2000, request="r")])  # exposure r comes in the next batch
    assert j.gauges()["pending"] == 1
    _step(j, [_x("a", 1000, request="r")])
    assert j.counters["attributed"] == 1 and j.gauges()["pending"] == 0
    out = _step(j, [_o("lost", 3000, request="never"), _x("far", 30_000, request="s")])  # watermark 25 s
    assert j.counters["orphans"] == 1
    assert _final(out) == {"a": 1.0}


@pytest.mark.parametrize(("rule", "expected"), [("first", 2.0), ("max", 5.0), ("sum", 8.0)])
def test_label_rules_over_several_outcomes(rule, expected):
    j = _joiner(strategy="wait", label=rule, outcome_types=("click", "order"), windows_s={"order": 20})
    _step(j, [_x("a", 0), _o("o1", 4000, etype="order", label=5.0), _o("c1", 1000, label=2.0)])
    _step(j, [_o("c2", 6000, label=1.0)])
    out = _step(j, [_x("z", 25_000, request="q")])
    assert _final(out) == {"a": expected}
    assert j.counters["repeated_outcomes"] == 2


def test_per_type_windows():
    j = _joiner(strategy="wait", outcome_types=("click", "order"), windows_s={"order": 100})
    _step(
        j,
        [
            _x("a", 0),
            _x("b", 0, item="k"),
            _o("late_click", 50_000),
            _o("late_order", 50_000, item="k", etype="order"),
        ],
    )
    out = _step(j, [_x("z", 200_000, request="q")])
    assert _final(out) == {"a": 0.0, "b": 1.0}


def test_fake_negative_learns_at_once_as_negative_then_the_positive_duplicate():
    j = _joiner(strategy="fake_negative")
    out = _step(j, [_x("a", 0), _x("b", 0, item="k")])
    # the new exposures are learned as they were scored (label 0), with nothing from the store
    assert out.learn_scored and out.scored_kind.tolist() == [TRAIN_EARLY] * 2 and len(out.train) == 0
    out = _step(j, [_o("c", 5000, item="k"), _o("c_again", 6000, item="k")])
    assert out.train.strings("event_id") == ["b"] and out.train.label.tolist() == [1.0]
    assert out.train_kind.tolist() == [TRAIN_POSITIVE]
    assert j.counters["repeated_outcomes"] == 1
    out = _step(j, [_x("z", 30_000, request="q")])
    assert len(out.train) == 0 and out.scored_kind.tolist() == [TRAIN_EARLY]  # only z's fake negative
    assert _final(out) == {"a": 0.0, "b": 1.0}
    w = j.weights(
        np.array([TRAIN_EARLY, TRAIN_POSITIVE, TRAIN_FINAL, TRAIN_LABELLED]),
        np.array([0.0, 1, 1, 0]),
        np.array([0.3, 0.3, 0.3, 0.3]),
    )
    assert w.tolist() == pytest.approx([(1 - 0.3) * 1.3, 1.3, 1.0, 1.0])


def test_es_dfm_learns_after_the_elapsed_time_with_the_label_known_then():
    j = _joiner(strategy="es_dfm", elapsed_s=2, window_s=10)
    out = _step(j, [_x("a", 0), _x("b", 0, item="k"), _o("ca", 1000)])
    assert len(out.train) == 0  # watermark 1 s < 0 + 2 s
    out = _step(j, [_x("y", 3000, request="q")])  # watermark 3 s: a and b are due
    assert dict(zip(out.train.strings("event_id"), out.train.label.tolist(), strict=True)) == {
        "a": 1.0,
        "b": 0.0,
    }
    assert set(out.train_kind.tolist()) == {TRAIN_EARLY}
    out = _step(j, [_o("cb", 6000, item="k")])  # b converts after its wait: learned again, as a positive
    assert out.train.strings("event_id") == ["b", "y"]  # and y's wait (3 s + 2 s) is over
    assert out.train_kind.tolist() == [TRAIN_POSITIVE, TRAIN_EARLY]
    out = _step(j, [_x("z", 30_000, request="s")])
    assert _final(out) == {"a": 1.0, "b": 1.0, "y": 0.0}
    # one of the two attributed outcomes came later than the 2 s wait; Beta(1, 1) prior
    assert j.delayed_share == pytest.approx((1 + 1) / (2 + 2))


def test_fnw_weights_make_the_biased_stream_unbiased_in_expectation():
    # On the fake-negative stream each exposure is a negative once and, with probability p, a
    # positive once more. Weighting by FNW makes the expected weighted positives p and negatives 1 - p.
    p = np.linspace(0.01, 0.95, 30)
    w_pos = fake_negative_weights(np.ones_like(p), p)
    w_neg = fake_negative_weights(np.zeros_like(p), p)
    biased_pos, biased_neg = p / (1 + p), 1 / (1 + p)  # b(y|x) of the stream
    total = 1 + p
    assert (total * biased_pos * w_pos) == pytest.approx(p * (1 + p))
    assert (w_pos * biased_pos) / (w_pos * biased_pos + w_neg * biased_neg) == pytest.approx(p)


@pytest.mark.parametrize("share", [0.0, 0.3, 1.0])
def test_es_dfm_weights_make_the_observed_stream_unbiased(share):
    # per exposure, after the wait e: a positive with prob p - h, a negative with 1 - p + h, and a
    # duplicate positive with prob h = p * share; the weighted label rate must be p
    p = np.linspace(0.01, 0.95, 30)
    h = p * share
    w_pos = es_dfm_weights(np.ones_like(p), p, share)
    w_neg = es_dfm_weights(np.zeros_like(p), p, share)
    pos_mass, neg_mass = (p - h) + h, 1 - p + h
    assert (w_pos * pos_mass) / (w_pos * pos_mass + w_neg * neg_mass) == pytest.approx(p)
    assert w_pos * pos_mass == pytest.approx(p * (1 + h))
    assert w_neg * neg_mass == pytest.approx((1 - p) * (1 + h))


def test_the_store_is_bounded_and_evictions_are_counted():
    j = _joiner(strategy="wait", max_open=3, window_s=1000)
    out = _step(j, [_x(f"e{i}", i, request=f"r{i}") for i in range(5)])
    assert j.store.live == 3 and j.counters["evicted"] == 2
    assert sorted(_final(out)) == ["e0", "e1"]  # the oldest closed early, with what they had


def test_labelled_and_unknown_events_are_examples_as_they_are():
    j = _joiner(strategy="wait")
    out = _step(j, [{"event_id": "p", "ts": 0, "user_id": "u", "item_id": "i", "label": 1}, _x("a", 0)])
    assert _final(out) == {"p": 1.0} and out.train_kind.tolist() == [TRAIN_LABELLED]


def test_exposures_without_request_id_close_unjoined_and_are_counted():
    j = _joiner(strategy="wait")
    row = _x("a", 0)
    del row["request_id"]
    _step(j, [row, _x("b", 0, request="s", item="j"), {**_o("c", 10), "request_id": None}])
    out = _step(j, [_x("z", 50_000, request="q")])
    assert _final(out) == {"a": 0.0, "b": 0.0}
    assert j.counters["unlinkable"] == 2 and j.counters["orphans"] == 1


def test_exposure_id_links_an_outcome_to_the_exposure_it_names_whatever_its_request_and_item():
    j = _joiner(strategy="wait", link="exposure_id")
    # two exposures of one (request, item): only the id tells them apart
    rows = [_x("d1:0", 0), _x("d2:0", 500), _x("n", 600, request=None)]
    clicks = [
        {**_o("c1", 2000, request=None, item="other"), "exposure_id": "d2:0"},  # request and item ignored
        {**_o("c2", 2500), "exposure_id": "nowhere"},  # names no exposure: pending, then an orphan
        _o("c3", 2600),  # no exposure_id: unlinkable under this link
    ]
    _step(j, rows + clicks)
    out = _step(j, [_x("z", 50_000)])
    assert _final(out) == {"d1:0": 0.0, "d2:0": 1.0, "n": 0.0}
    c = j.counters
    assert (c["attributed"], c["orphans"], c["unlinkable"], c["repeated_exposures"]) == (1, 2, 1, 0)


def test_the_decision_log_exposure_ids_are_what_decide_returns(tmp_path):
    from pipeline.serving.decisions import exposure_events
    from pipeline.serving.requests import parse_request
    from pipeline.serving.view import Decision, ModelVersion

    req = parse_request({"model": "m", "user_id": "u", "candidates": ["a", "b", "c"], "k": 2})
    version = ModelVersion("h", 0, None, 0, "live")
    decision = Decision("d-1", req, "p", ["c", "a"], [2, 0], [0.5, 0.25], [1.0, 0.5], version)
    returned = [item["exposure_id"] for item in decision.to_dict()["items"]]
    assert returned == [e["event_id"] for e in exposure_events(decision)] == ["d-1:0", "d-1:1"]


def test_a_repeated_exposure_key_is_counted_not_joined_twice():
    j = _joiner(strategy="wait")
    _step(j, [_x("a", 0), _x("a2", 10)])
    assert j.counters["repeated_exposures"] == 1 and j.store.live == 1


def _stream(n_requests=400, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for r in range(n_requests):
        t = r * 500
        for k in range(3):
            rows.append((t, _x(f"x{r}.{k}", t, request=f"r{r}", item=f"i{k}")))
            if rng.random() < 0.3:
                d = int(rng.exponential(4000))
                rows.append((t + d, _o(f"c{r}.{k}", t + d, request=f"r{r}", item=f"i{k}")))
    rows.sort(key=lambda x: x[0])
    return [r for _, r in rows]


@pytest.mark.parametrize("strategy", ["wait", "fake_negative", "es_dfm"])
def test_snapshot_and_restore_at_any_batch_joins_every_exposure_exactly_once(strategy):
    rows = _stream()
    batches = [rows[i : i + 37] for i in range(0, len(rows), 37)]

    def run(cut):
        j = _joiner(strategy=strategy, window_s=20, elapsed_s=3, allowed_lateness_ms=1000)
        final, trained = {}, []
        for b, batch in enumerate(batches):
            if b == cut:
                state = j.state()
                j = _joiner(strategy=strategy, window_s=20, elapsed_s=3, allowed_lateness_ms=1000)
                j.load_state(state)
            out = _step(j, batch)
            for eid, label in _final(out).items():
                assert eid not in final, f"{eid} final twice"
                final[eid] = label
            trained += list(zip(out.train.strings("event_id"), out.train.label.tolist(), strict=True))
        return final, trained, dict(j.counters)

    whole = run(cut=-1)
    for cut in (1, 7, 20):
        assert run(cut) == whole
    final = whole[0]
    clicked = {r["event_id"].replace("c", "x", 1) for r in rows if r["event_type"] == "click"}
    opened = [r["event_id"] for r in rows if r["event_type"] == "impression"]
    closed = {e: lab for e, lab in final.items()}
    assert len(closed) + whole[2]["exposures"] - whole[2]["closed"] == len(opened)
    for e, lab in closed.items():
        # every click of this stream is within 20 s except a handful of exponential tails
        if lab == 1.0:
            assert e in clicked


def test_the_two_level_key_index_joins_as_one_sorted_index(monkeypatch):
    """Merging the index's small level into the main one now and then changes nothing joined."""
    from pipeline.join import store

    rows = _stream()
    batches = [rows[i : i + 37] for i in range(0, len(rows), 37)]

    def run():
        j, trained = _joiner(strategy="fake_negative", window_s=20, allowed_lateness_ms=1000), []
        for b, batch in enumerate(batches):
            if b == 12:
                state, j = j.state(), _joiner(strategy="fake_negative", window_s=20, allowed_lateness_ms=1000)
                j.load_state(state)
            out = _step(j, batch + batch[:3])  # repeats of keys just opened
            trained += list(zip(out.train.strings("event_id"), out.train.label.tolist(), strict=True))
        return trained, dict(j.counters)

    once = run()
    monkeypatch.setattr(store._KeyIndex, "MERGE_AT", 25)
    assert run() == once
    assert once[1]["repeated_exposures"] > 0 and once[1]["attributed"] > 100


def test_the_key_index_answers_as_a_list_of_entries_through_adds_merges_closed_markers_and_renumbering():
    """Each key's newest entry, against plain lists of entries, with every operation a store makes."""
    from pipeline.join import store

    rng = np.random.default_rng(3)
    index, ref, slot = store._KeyIndex(), {}, 0
    index.MERGE_AT = 300
    pool = rng.integers(0, 2**63, 2_000, dtype=np.uint64)
    for step in range(60):
        keys = np.unique(rng.choice(pool, 97))  # sorted; some seen before (reopened)
        index.add(keys, np.arange(slot, slot + len(keys)))
        for i, k in enumerate(keys.tolist()):
            ref.setdefault(k, []).append(slot + i)
        slot += len(keys)
        if step % 7 == 3:
            closed = np.unique(rng.choice(pool, 40))
            index.add_closed(closed)  # older than every entry there is
            for k in closed.tolist():
                ref[k] = [-1, *ref.get(k, [])]
        if step % 11 == 10:
            keep = np.sort(rng.choice(slot, slot // 2, replace=False))
            index = index.renumbered(keep, slot)  # closed markers and dropped slots are forgotten
            new = {int(s): i for i, s in enumerate(keep)}
            ref = {k: [new[v] for v in vs if v in new] for k, vs in ref.items()}
            slot = len(keep)
        probe = rng.permutation(np.concatenate([pool[:500], rng.integers(0, 2**63, 50, dtype=np.uint64)]))
        expect = [ref[k][-1] if ref.get(k) else store._ABSENT for k in probe.tolist()]
        assert index.newest(probe).tolist() == expect


@pytest.mark.parametrize("strategy", ["wait", "fake_negative", "es_dfm"])
def test_the_features_of_stored_exposures_equal_a_fresh_transform_of_what_is_learned(strategy):
    """Kept features, compacted, restored (then featurised again) and beside labelled examples."""
    from pipeline.events import EventBatch
    from pipeline.features import FeatureSpec, Featurizer

    rng = np.random.default_rng(3)
    rows = []
    for i, r in enumerate(_stream(n_requests=300)):
        feats = {"device": ["ios", "web"][i % 2]}
        if i % 3:
            feats["price"] = float(rng.normal(5, 2))
        rows.append({**r, "features": feats})
        if i % 11 == 0:  # a labelled example (neither exposure nor outcome)
            rows.append({"event_id": f"p{i}", "ts": r["ts"], "user_id": "v", "item_id": "j", "label": 1})
    batches = [rows[i : i + 41] for i in range(0, len(rows), 41)]
    fz = Featurizer(FeatureSpec(crosses=(("user_id", "device"),)))
    make = lambda: _joiner(strategy=strategy, window_s=20, elapsed_s=3, allowed_lateness_ms=1000)  # noqa: E731
    j, checked, evaluated = make(), 0, 0
    for b, batch in enumerate(batches):
        if b == 9:  # restored: the open chunks' features are gone, and are made again when read
            state, j = j.state(), make()
            j.load_state(state)
        if b % 5 == 4:
            j.store.compact(force=True)  # partly kept chunks take their features' rows
        step = j.ingest(_events(batch))
        scored = fz.transform_and_update(step.scored) if len(step.scored) else None
        if scored is not None:
            j.record_features(scored)
        j.record_predictions("m", np.full(len(step.scored), 0.5))
        out = j.advance()
        if len(out.evaluated):  # what policies learn, the same way
            final, fresh = out.evaluated_features(fz, scored), fz.transform(EventBatch(out.evaluated.table))
            for name in ("indptr", "keys", "values", "user_hash", "item_hash"):
                np.testing.assert_array_equal(getattr(final, name), getattr(fresh, name), err_msg=name)
            np.testing.assert_array_equal(final.labels, fresh.labels)
            evaluated += len(out.evaluated)
        got = out.train_features(fz, scored)
        if not len(out.train):
            assert got is None
            continue
        want = fz.transform(EventBatch(out.train.table))
        for name in ("indptr", "keys", "values", "user_hash", "item_hash"):
            np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name, strict=True)
        assert sorted(got.numeric) == sorted(want.numeric)
        for name, dense in want.numeric.items():
            np.testing.assert_array_equal(got.numeric[name], dense)
        for x, y in zip(got.categorical, want.categorical, strict=True):
            np.testing.assert_array_equal(x, y, strict=True)
        np.testing.assert_array_equal(got.labels, want.labels)
        assert got.events.strings("event_id") == want.events.strings("event_id")
        checked += len(out.train)
    assert checked > 200 and evaluated > 500


def test_join_config_is_validated_with_the_key_named():
    with pytest.raises(ConfigError, match=r"join\.strategy"):
        load_config(overrides={"join": {"strategy": "hope"}})
    with pytest.raises(ConfigError, match=r"join\.windows_s\.like"):
        load_config(overrides={"join": {"windows_s": {"like": 5}}})
    with pytest.raises(ConfigError, match=r"join\.elapsed_s"):
        load_config(overrides={"join": {"strategy": "es_dfm", "elapsed_s": 7200, "window_s": 3600}})
    with pytest.raises(ConfigError, match=r"join\.outcome_types"):
        load_config(overrides={"join": {"exposure_types": ["click"]}})
    with pytest.raises(ConfigError, match=r"join\.link.*request_item, exposure_id"):
        load_config(overrides={"join": {"link": "event_id"}})
    cfg = load_config(
        overrides={"join": {"enabled": True, "strategy": "es_dfm", "windows_s": {"order": 86400}}}
    )
    assert cfg.join.longest_window_s == 86400


def test_concatenated_feature_batches_equal_one_transform_of_both():
    from pipeline.features import FeatureSpec, Featurizer, concat_features

    rows_a = [{**_x("a", 0), "features": {"device": "ios", "price": 2.5}}, _x("b", 1, item="k")]
    rows_b = [{**_x("c", 2), "features": {"hour": 3, "device": "web"}}]
    fz = Featurizer(FeatureSpec(crosses=(("user_id", "device"),)))
    fz.update(fz.transform(_events(rows_a + rows_b)))  # some standardisation statistics
    both = fz.transform(_events(rows_a + rows_b))
    joined = concat_features(fz.transform(_events(rows_a)), fz.transform(_events(rows_b)))
    for name in ("indptr", "keys", "values", "user_hash", "item_hash"):
        np.testing.assert_array_equal(getattr(joined, name), getattr(both, name), err_msg=name)
    assert sorted(joined.numeric) == sorted(both.numeric)
    for name in both.numeric:
        np.testing.assert_array_equal(joined.numeric[name], both.numeric[name])
    for x, y in zip(joined.categorical, both.categorical, strict=True):
        np.testing.assert_array_equal(x, y)
    assert joined.events.strings("event_id") == both.events.strings("event_id") == ["a", "b", "c"]


def test_rows_taken_from_several_batches_at_once_equal_one_transform_of_their_events():
    """take_features_parts (the store's read of late positives) against a fresh transform of the
    same rows: repeats, any order, a numeric feature only one part has, a part without any."""
    from pipeline.features import FeatureSpec, Featurizer, take_features_parts

    rows_a = [{**_x("a", 0), "features": {"device": "ios", "price": 2.5}}, _x("b", 1, item="k")]
    rows_b = [{**_x("c", 2), "features": {"hour": 3, "device": "web"}}, _x("d", 3), _x("e", 4, item="q")]
    fz = Featurizer(FeatureSpec(crosses=(("user_id", "device"),)))
    a, b = _events(rows_a), _events(rows_b)
    fa, fb = fz.transform(a), fz.transform(b)
    picks = [(fa, np.array([1, 0, 1])), (fb, np.array([2, 0])), (fb, np.array([1]))]
    rows = [rows_a[1], rows_a[0], rows_a[1], rows_b[2], rows_b[0], rows_b[1]]
    want = fz.transform(_events(rows))
    got = take_features_parts(picks, want.events)
    for name in ("indptr", "keys", "values", "user_hash", "item_hash"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
    assert sorted(got.numeric) == sorted(want.numeric) == ["hour", "price"]
    for name in want.numeric:
        np.testing.assert_array_equal(got.numeric[name], want.numeric[name])
    for x, y in zip(got.categorical, want.categorical, strict=True):
        np.testing.assert_array_equal(x, y)
    only_b = take_features_parts([(fa, np.array([1])), (fb, np.array([1]))], _events([rows_a[1], rows_b[1]]))
    assert sorted(only_b.numeric) == []  # neither row has a numeric feature: none, as transform


def test_the_join_is_in_the_stack_and_its_counts_reach_prometheus():
    from consumers.stack import build_stack
    from pipeline.runner import RawBatch

    cfg = load_config(
        overrides={"join": {"enabled": True, "window_s": 10, "allowed_lateness_ms": 0}}, environ={}
    )
    stack = build_stack(cfg, metrics=True)
    rows = [
        _x("a", 0),
        _o("c", 2000),
        _x("b", 1000, item="k"),
        _o("lost", 3000, request="none"),
        _x("z", 60_000, request="q"),
    ]
    stack.runner.process(RawBatch(values=[orjson.dumps(r) for r in rows], positions={"f": 5}))
    text = stack.metrics.exposition().decode()
    assert 'streamlearn_join_events_total{outcome="attributed"} 1.0' in text
    assert 'streamlearn_join_events_total{outcome="orphans"} 1.0' in text
    assert 'streamlearn_join_events_total{outcome="closed"} 2.0' in text
    assert "streamlearn_join_open_exposures 1.0" in text
    assert stack.runner.metrics["ftrl"].seen == 2  # a and b, scored when they came; no outcome record


def test_a_join_state_with_nothing_open_restores():
    j = _joiner(strategy="fake_negative")
    _step(j, [{"event_id": "p", "ts": 0, "user_id": "u", "item_id": "i", "label": 1}])  # labelled only
    again = _joiner(strategy="fake_negative")
    again.load_state(j.state())
    assert again.store.live == 0 and again.counters == j.counters
