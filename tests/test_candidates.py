"""The optional ``candidates`` field: decoded alike on every path, checked, and used by evaluation."""

from __future__ import annotations

import numpy as np
import orjson
import pyarrow as pa
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.events import EventRules, decode_arrow, decode_json
from pipeline.events.candidates import MAX_CANDIDATES, candidate_groups
from pipeline.learners.bandits import EpsilonGreedy, LinUCB
from pipeline.learners.bandits.offpolicy import PrequentialEvaluation
from pipeline.metrics import StreamMetrics
from pipeline.runner import RawBatch, Runner
from pipeline.simulate import Simulator

RULES = EventRules()
BASE = {"ts": 1_700_000_000_000, "user_id": "u1", "label": 1, "propensity": 0.5}


def _rec(i: int, item: str, candidates=None, **extra) -> dict:
    rec = {"event_id": f"e{i}", "item_id": item, **BASE, **extra}
    if candidates is not None:
        rec["candidates"] = candidates
    return rec


def _json(records: list[dict]) -> list[bytes]:
    return [orjson.dumps(r) for r in records]


def test_valid_candidates_decode_alike_on_the_fast_json_row_json_and_arrow_paths():
    records = [_rec(0, "a", ["a", "b", "c"]), _rec(1, "b"), _rec(2, "7", [7, 8])]
    fast, dead_fast = decode_json(_json(records[:2]), RULES)  # only strings: Arrow's JSON reader
    row, dead_row = decode_json(_json(records), RULES)  # integer ids: the row path
    assert not dead_fast and not dead_row
    assert fast.candidates.to_pylist() == [["a", "b", "c"], None]
    assert row.candidates.to_pylist() == [["a", "b", "c"], None, ["7", "8"]]
    for cands in (
        pa.array([["a", "b", "c"], None], pa.list_(pa.string())),
        pa.array([["a", "b", "c"], None], pa.large_list(pa.large_string())),
        pa.array([["a", "b", "c"], None], pa.list_(pa.dictionary(pa.int8(), pa.string()))),
    ):
        table = pa.Table.from_pylist([{k: v for k, v in r.items() if k != "candidates"} for r in records[:2]])
        batch = table.append_column("candidates", cands).to_batches()[0]
        events, dead = decode_arrow(batch, RULES)
        assert not dead, cands.type
        assert events.candidates.to_pylist() == [["a", "b", "c"], None]
    ints = pa.record_batch({**{k: [v] for k, v in _rec(0, "7").items()}, "candidates": pa.array([[7, 8]])})
    assert decode_arrow(ints, RULES)[0].candidates.to_pylist() == [["7", "8"]]


BAD = [
    ("not_a_list", "a", "field 'candidates' must be a list of item ids (strings or integers), got str"),
    ("empty", [], f"field 'candidates' must hold 1 to {MAX_CANDIDATES} ids, got 0"),
    ("null_entry", ["a", None], "field 'candidates' must not hold null entries"),
    ("float_entry", ["a", 1.5], "got an entry of type float"),
    ("nested", ["a", ["b"]], "got an entry of type list"),
    ("item_outside", ["b", "c"], "item_id 'a' is not among the event's 2 candidates"),
    ("repeated", ["a", "b", "a"], "field 'candidates' must not repeat an id"),
    ("too_many", [f"x{i}" for i in range(MAX_CANDIDATES)] + ["a"], "must hold 1 to 10000 ids, got 10001"),
]


@pytest.mark.parametrize("case, value, detail", BAD, ids=[b[0] for b in BAD])
def test_a_bad_candidates_value_dead_letters_its_record_only(case, value, detail):
    records = [_rec(0, "a", ["a", "z"]), _rec(1, "a", value), _rec(2, "a")]
    rules = EventRules(max_record_bytes=1 << 20)
    events, dead = decode_json(_json(records), rules)
    assert [(d.index, d.reason) for d in dead] == [
        (1, "wrong_type" if "type" in detail or "list of" in detail or "null" in detail else "out_of_range")
    ]
    assert detail in dead[0].detail
    assert events.strings("event_id") == ["e0", "e2"]


@pytest.mark.parametrize(
    "case, value, detail", [b for b in BAD if b[0] not in ("not_a_list", "nested", "float_entry")]
)
def test_the_arrow_path_gives_the_same_reasons(case, value, detail):
    rows = [_rec(0, "a", ["a", "z"]), _rec(1, "a", value), _rec(2, "a", ["a"])]
    batch = pa.Table.from_pylist(rows).to_batches()[0]
    events, dead = decode_arrow(batch, RULES)
    assert [d.index for d in dead] == [1] and detail in dead[0].detail
    assert events.strings("event_id") == ["e0", "e2"]


def test_an_unusable_candidates_column_is_one_error_naming_it():
    from pipeline.errors import ConfigError
    from pipeline.events.columns import check_schema

    with pytest.raises(ConfigError, match="column 'candidates' has type list<item: double>"):
        check_schema(
            pa.schema(
                [(k, pa.string()) for k in ("event_id", "user_id", "item_id")]
                + [("ts", pa.int64()), ("label", pa.float64())]
                + [("candidates", pa.list_(pa.float64()))]
            ),
            "log.parquet",
        )


def test_candidate_groups_keep_row_order_within_each_size():
    col = pa.array([["a"], ["b", "c"], None, ["d"], ["e", "f"], []], pa.list_(pa.string()))
    groups = [(rows.tolist(), ids.tolist()) for rows, ids in candidate_groups(col)]
    assert groups == [([0, 3], [["a"], ["d"]]), ([1, 4], [["b", "c"], ["e", "f"]])]
    assert candidate_groups(pa.nulls(3, pa.list_(pa.string()))) == []


def _mixed_stream(n: int = 1200) -> pa.Table:
    """Requests that chose among 3 and among 6 items, interleaved, with their propensities."""
    small = pa.Table.from_batches(list(Simulator(seed=4, n_users=80, n_items=20, n_candidates=3).batches(n)))
    large = pa.Table.from_batches(list(Simulator(seed=5, n_users=80, n_items=20, n_candidates=6).batches(n)))
    large = large.set_column(0, "event_id", pa.array([f"x{i}" for i in range(n)]))
    order = np.argsort(np.r_[np.arange(n) * 2, np.arange(n) * 2 + 1])
    return pa.concat_tables([small, large]).take(pa.array(order)).combine_chunks()


def test_prequential_evaluation_scores_each_event_on_its_own_set():
    table = _mixed_stream()
    evaluation = PrequentialEvaluation(EpsilonGreedy(dim=2, epsilon=1.0, name="eg"), ["i0"], seed=0)
    runner = Runner([evaluation], window=200)
    for i, b in enumerate(table.to_batches(max_chunksize=100)):
        runner.process(RawBatch(arrow=b, positions={"sim": i}))
    rec = evaluation.records()
    sizes = np.array([len(c) for c in table.column("candidates").to_pylist()])
    np.testing.assert_array_equal(rec["n_candidates"], sizes)
    assert rec["own_candidates"].all()
    np.testing.assert_allclose(rec["target_prob"], 1.0 / sizes)  # uniform over the event's own set
    where = [
        c.index(it)
        for c, it in zip(table.column("candidates").to_pylist(), table.column("item_id").to_pylist())
    ]
    np.testing.assert_array_equal(rec["candidate"], where)
    assert ((rec["choice"] >= 0) & (rec["choice"] < sizes)).all()


class _Recording(LinUCB):
    """LinUCB that remembers what each distribution call was asked and answered."""

    calls: list

    def distribution(self, contexts, candidates, rng=None, n_mc=None):
        probs, means = super().distribution(contexts, candidates, rng, n_mc)
        self.calls.append((np.asarray(candidates), probs))
        return probs, means


def test_prequential_evaluation_of_a_greedy_policy_records_its_distribution_per_event():
    table = _mixed_stream(400)
    policy = _Recording(dim=4, name="l", gauge_window=0)  # the gauges ask too
    policy.calls = []
    evaluation = PrequentialEvaluation(policy, ["i0"], seed=0)
    runner = Runner([evaluation], window=200)
    for i, b in enumerate(table.to_batches(max_chunksize=100)):
        runner.process(RawBatch(arrow=b, positions={"sim": i}))
    rec = evaluation.records()
    asked = [c for c, _ in policy.calls]
    assert all(c.ndim == 2 for c in asked) and sorted({c.shape[1] for c in asked}) == [3, 6]
    # the calls of one batch come in group order; put their rows back into event order
    cands = table.column("candidates").to_pylist()
    items = table.column("item_id").to_pylist()
    got, k = [], 0
    for start in range(0, len(table), 100):
        batch = cands[start : start + 100]
        by_size = {}
        for j, c in enumerate(batch):
            by_size.setdefault(len(c), []).append(start + j)
        for rows in by_size.values():
            seen, probs = policy.calls[k]
            k += 1
            assert seen.tolist() == [cands[r] for r in rows]
            got += [(r, probs[i, cands[r].index(items[r])]) for i, r in enumerate(rows)]
    assert k == len(policy.calls)
    rows, probs = zip(*sorted(got))
    np.testing.assert_array_equal(rec["target_prob"][list(rows)], probs)
    # greedy: 1 on the best candidate, or 1/t on each of t tied ones (cold arms tie)
    allowed = {0.0} | {1.0 / t for t in range(1, 7)}
    assert set(np.unique(rec["target_prob"])) <= allowed and rec["target_prob"].sum() > 0


def test_the_live_value_gauge_uses_each_events_own_candidates():
    table = _mixed_stream(600)
    window = 600
    policy = EpsilonGreedy(dim=2, epsilon=1.0, gauge_window=window, name="eg")
    runner = Runner([policy], window=200)
    for i, b in enumerate(table.to_batches(max_chunksize=100)):
        runner.process(RawBatch(arrow=b, positions={"sim": i}))
    metrics = StreamMetrics()
    metrics.update_models(runner)
    text = metrics.exposition().decode()
    value = next(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "streamlearn_policy_value_estimate"
    )
    tail = table.slice(len(table) - window)
    sizes = np.array([len(c) for c in tail.column("candidates").to_pylist()])
    w = 1.0 / sizes / tail.column("propensity").to_numpy()
    snips = float((w * tail.column("label").to_numpy()).sum() / w.sum())
    assert value == pytest.approx(snips, abs=1e-9)
