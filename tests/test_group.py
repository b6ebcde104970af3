"""The shared model without Kafka (pipeline/group): deltas, the fold, and equivalence with one worker.

Several runners stand for workers, each consuming its own partitions of one event log; their
deltas go through :func:`encode` / :func:`decode` into one ordered list that every runner reads,
as the updates topic's single partition is read by every worker (the real topic is exercised in
tests/test_worker_group.py). Sum-based state must come out equal to one runner's over the same
events; FTRL and the neural ranker within half an AUC point.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.group.delta import DeltaError, ModelDelta, decode, diff, encode
from pipeline.group.fold import Fold
from pipeline.group.parts import Part
from pipeline.group.sync import REFUSED, ModelSync
from pipeline.runner import RawBatch, Runner
from tests.test_conformance import make_events

SUM_LEARNERS = [
    {"kind": "diag_linucb", "params": {"reset_on_drift": False}},
    {
        "kind": "diag_linucb",
        "name": "diag_uncentered",
        "params": {"reset_on_drift": False, "centered": False},
    },
    {"kind": "linucb", "params": {"reset_on_drift": False}},
    {"kind": "beta_ts", "params": {"reset_on_drift": False}},
    {"kind": "epsilon_greedy", "params": {"reset_on_drift": False}},
    {"kind": "error_memory", "params": {"decay": 1.0, "center": False, "base_params": {"alpha": 1e-12}}},
]


def config(learners, standardize: bool = False):
    return load_config(overrides={"learners": learners, "features": {"standardize": standardize}})


class Group:
    """``n`` runners over partitions ``p % n``, exchanging encoded deltas through one ordered log."""

    def __init__(self, cfg, n: int):
        self.runners = [Runner.from_config(cfg) for _ in range(n)]
        self.syncs = [ModelSync(r, f"w-{i}", "hash") for i, r in enumerate(self.runners)]
        self.log: list[bytes] = []
        self.read = [0] * n

    def claim(self, worker: int, key: str, position: int = 0) -> None:
        self.syncs[worker].claim(key, position, {})

    def process(self, worker: int, key: str, values: list[bytes], end: int) -> None:
        self.runners[worker].process(RawBatch(values=values, positions={key: end}))

    def exchange(self, worker: int) -> list[str]:
        sync, runner = self.syncs[worker], self.runners[worker]
        delta = sync.take_delta(runner.positions, {k: {"applied": 1} for k in runner.positions})
        if delta is not None:
            self.log.append(encode(delta))
        outcomes = []
        while self.read[worker] < len(self.log):
            offset = self.read[worker]
            outcomes.append(sync.receive(offset, decode(self.log[offset])))
            self.read[worker] += 1
        sync.rebase()
        return outcomes


def run_group(cfg, events: list[bytes], n: int, parts: int = 4, batch: int = 100, rounds_per_sync: int = 2):
    """Events split into ``parts`` partitions (round robin), partition p consumed by worker p % n."""
    group = Group(cfg, n)
    logs = {f"t:{p}": events[p::parts] for p in range(parts)}
    for p in range(parts):
        group.claim(p % n, f"t:{p}")
    pos = dict.fromkeys(logs, 0)
    step = 0
    while any(pos[k] < len(v) for k, v in logs.items()):
        for p, (key, values) in enumerate(logs.items()):
            if pos[key] < len(values):
                end = min(pos[key] + batch, len(values))
                group.process(p % n, key, values[pos[key] : end], end)
                pos[key] = end
        step += 1
        if step % rounds_per_sync == 0:
            for w in range(n):
                group.exchange(w)
    for _ in range(2):  # everyone publishes, then everyone reads everything
        for w in range(n):
            group.exchange(w)
    return group


def single(cfg, events: list[bytes], batch: int = 100) -> Runner:
    runner = Runner.from_config(cfg)
    for i in range(0, len(events), batch):
        runner.process(RawBatch(values=events[i : i + batch], positions={"stream": i + batch}))
    return runner


def assert_sum_state_equal(a, b, only: tuple[str, ...] = ()) -> None:
    """Shared parts of two runners equal (ids in any order) to float tolerance.

    An error memory's base model is FTRL, whose deltas are not sums: only its memory is compared.
    """
    pa_, pb = ModelSync(a, "x", "h").base, ModelSync(b, "y", "h").base
    assert sorted(pa_) == sorted(pb)
    for name in (n for n in pa_ if "/base." not in n and (not only or n.startswith(only))):
        x, y = pa_[name], pb[name]
        if x.ids is None:
            for k in x.arrays:
                np.testing.assert_allclose(
                    x.arrays[k], y.arrays[k], rtol=1e-9, atol=1e-9, err_msg=f"{name}.{k}"
                )
        else:
            assert sorted(x.ids) == sorted(y.ids), name
            order_x, order_y = np.argsort(x.ids), np.argsort(y.ids)
            for k in x.arrays:
                np.testing.assert_allclose(
                    x.arrays[k][order_x], y.arrays[k][order_y], rtol=1e-9, atol=1e-9, err_msg=f"{name}.{k}"
                )


# ------------------------------------------------------------------------------ the fold
def test_fold_accepts_contiguous_ranges_only():
    fold = Fold()
    assert fold.offer({"t:0": (0, 10)}, {"t:0": {"applied": 10}}) == "accepted"
    assert fold.offer({"t:0": (0, 10)}, {"t:0": {"applied": 10}}) == "duplicate"  # a retried send
    assert fold.offer({"t:0": (0, 4)}, {}) == "duplicate"
    assert fold.offer({"t:0": (5, 12)}, {}) == "conflict"  # overlaps what the group holds
    assert fold.offer({"t:0": (11, 12)}, {}) == "conflict"  # a gap
    assert fold.offer({"t:0": (10, 12), "t:1": (3, 5)}, {"t:0": {"applied": 2}}) == "accepted"
    assert fold.frontier == {"t:0": 12, "t:1": 5}
    assert fold.counts == {"t:0": {"applied": 12}}
    # one range refused refuses the whole delta: its other ranges move nothing
    assert fold.offer({"t:0": (12, 13), "t:1": (0, 5)}, {}) == "conflict"
    assert fold.frontier == {"t:0": 12, "t:1": 5}


def test_fold_is_the_same_for_every_reader():
    rng = np.random.default_rng(3)
    offers = [{"t:0": tuple(sorted(rng.integers(0, 20, 2).tolist()))} for _ in range(200)]
    a, b = Fold(), Fold()
    assert [a.offer(o, {}) for o in offers] == [b.offer(o, {}) for o in offers]
    back = Fold()
    back.load_state(a.state())
    assert back.state() == a.state()


# ------------------------------------------------------------------------------ deltas
def test_delta_round_trip_and_sparse_diff():
    base = {
        "m/w": Part({"z": np.zeros(1000), "n": np.ones(1000)}),
        "m/arms": Part({"x": np.zeros((2, 3))}, ids=["a", "b"]),
    }
    live_z = np.zeros(1000)
    live_z[[3, 997]] = [0.5, -1.25]
    live = {
        "m/w": Part({"z": live_z, "n": np.ones(1000)}),
        "m/arms": Part({"x": np.array([[0, 0, 0], [1.0, 2, 3], [4, 5, 6]])}, ids=["a", "b", "c"]),
    }
    parts = diff(live, base, prior=lambda name, ids: {"x": np.full((len(ids), 3), 1.0)})
    assert list(parts["m/w"].values) == ["z"]  # n did not change: not sent
    assert parts["m/w"].indices["z"].tolist() == [3, 997]
    assert parts["m/arms"].ids == ["b", "c"]  # a did not change; c counts from its prior
    np.testing.assert_array_equal(parts["m/arms"].values["x"], [[1, 2, 3], [3, 4, 5]])
    delta = ModelDelta("w-1", "inc", 7, {"t:0": (10, 20)}, {"t:0": {"applied": 9}}, parts, "h", created_ms=5)
    back = decode(encode(delta))
    assert (back.author, back.seq, back.ranges, back.counts) == (
        "w-1",
        7,
        {"t:0": (10, 20)},
        {"t:0": {"applied": 9}},
    )
    np.testing.assert_array_equal(back.parts["m/arms"].values["x"], parts["m/arms"].values["x"])
    assert back.parts["m/arms"].ids == ["b", "c"]


@pytest.mark.parametrize(
    "data, match",
    [
        (b"", "not a delta archive"),
        (b"{json?}", "not a delta archive"),
        (b"PK\x03\x04 truncated zip", "not a delta archive"),
    ],
)
def test_corrupt_deltas_are_refused_with_a_reason(data, match):
    with pytest.raises(DeltaError, match=match):
        decode(data)


def test_a_delta_missing_its_arrays_is_refused():
    parts = diff({"m/w": Part({"z": np.ones(3)})}, {}, prior=None)
    good = encode(ModelDelta("w", "i", 1, {"t:0": (0, 1)}, {}, parts, "h"))
    import io
    import zipfile

    src, out = zipfile.ZipFile(io.BytesIO(good)), io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for item in src.namelist():
            if not item.endswith("|i.npy"):
                dst.writestr(item, src.read(item))
    with pytest.raises(DeltaError, match="m/w"):
        decode(out.getvalue())


# ------------------------------------------------------------------------------ equivalence
def test_sum_based_state_of_three_workers_equals_one_worker():
    events = make_events(4000, seed=11)
    cfg = config(SUM_LEARNERS)
    group = run_group(cfg, events, n=3)
    one = single(cfg, events)
    for runner in group.runners:
        assert_sum_state_equal(runner, one)
    # every event counted once, group-wide, from the fold alone
    fold = group.syncs[0].fold
    assert sum(v for k, v in fold.frontier.items()) == len(events)
    assert {s.fold.state()["frontier"].__repr__() for s in group.syncs} == {repr(fold.frontier)}
    pulls = sum(
        float(p.arrays["pulls"].sum())
        for n, p in ModelSync(group.runners[1], "z", "h").base.items()
        if n == "beta_ts/arms"
    )
    assert pulls == len(events)


def test_featurizer_moments_merge_across_workers():
    events = make_events(3000, seed=5)
    cfg = config([{"kind": "beta_ts", "params": {"reset_on_drift": False}}], standardize=True)
    group = run_group(cfg, events, n=2)
    one = single(cfg, events)
    for runner in group.runners:
        for name, (c, mean, m2) in one.featurizer._welford.stats.items():
            got = runner.featurizer._welford.stats[name]
            np.testing.assert_allclose(got, [c, mean, m2], rtol=1e-9)


@pytest.mark.parametrize("kind", ["ftrl", "neural"])
def test_model_averaged_learners_stay_within_half_an_auc_point(kind, one_torch_thread):
    """Three workers' FTRL / neural ranker, summing each other's deltas, score a holdout like one."""
    import pyarrow as pa

    from pipeline.events import EventRules, decode_json
    from pipeline.simulation import Simulator, to_json_lines

    n = 30_000 if kind == "ftrl" else 12_000
    table = pa.Table.from_batches(list(Simulator(seed=4, n_users=400, n_items=60).batches(n)))
    events = to_json_lines(table.combine_chunks().to_batches()[0])
    params = {"bits": 18} if kind == "ftrl" else {"vocab": "double_hash", "seed": 1}
    cfg = config([{"kind": kind, "params": params}], standardize=True)
    train, holdout = events[:-4000], events[-4000:]
    one = single(cfg, train, batch=250)
    group = run_group(cfg, train, n=3, batch=250, rounds_per_sync=1)
    ev, _ = decode_json(holdout, EventRules())

    def auc(runner) -> float:
        fb = runner.featurizer.transform(ev)
        return roc_auc_score(fb.labels, runner.learners[0].predict(fb))

    base = auc(one)
    assert base > 0.6, base  # the stream is learnable: the comparison means something
    for runner in group.runners:
        assert abs(auc(runner) - base) <= 0.005, (kind, auc(runner), base)


# ------------------------------------------------------------------------------ refusals
def test_a_refused_own_delta_is_reported():
    cfg = config([{"kind": "beta_ts", "params": {"reset_on_drift": False}}])
    a, b = Runner.from_config(cfg), Runner.from_config(cfg)
    sa, sb = ModelSync(a, "w-a", "h"), ModelSync(b, "w-b", "h")
    events = make_events(20)
    for sync, runner in ((sa, a), (sb, b)):  # both believe they own t:0 (a zombie and its successor)
        sync.claim("t:0", 0, {})
        runner.process(RawBatch(values=events, positions={"t:0": 20}))
    da, db = sa.take_delta(a.positions, {}), sb.take_delta(b.positions, {})
    log = [encode(db), encode(da)]  # b's delta reached the topic first
    assert [sa.receive(i, decode(m)) for i, m in enumerate(log)] == ["accepted", REFUSED]
    assert [sb.receive(i, decode(m)) for i, m in enumerate(log)] == ["accepted", "duplicate"]


def test_deltas_of_another_configuration_are_never_applied():
    cfg = config([{"kind": "beta_ts", "params": {"reset_on_drift": False}}])
    a, b = Runner.from_config(cfg), Runner.from_config(cfg)
    sa, sb = ModelSync(a, "w-a", "one"), ModelSync(b, "w-b", "other")
    sa.claim("t:0", 0, {})
    a.process(RawBatch(values=make_events(10), positions={"t:0": 10}))
    assert sb.receive(0, decode(encode(sa.take_delta(a.positions, {})))) == "incompatible"
    assert b.learners[0].arm_ids == [] and sb.fold.frontier == {}


@pytest.mark.parametrize(
    "learner, match",
    [
        ({"kind": "river:linear_model.LogisticRegression"}, "not a sum"),
        ({"kind": "diag_linucb"}, "reset_on_drift = false"),
        ({"kind": "beta_ts", "params": {"reset_on_drift": False, "gamma": 0.99}}, "gamma = 1.0"),
        ({"kind": "hybrid_linucb", "params": {"reset_on_drift": False}}, "shared bandits"),
        ({"kind": "error_memory"}, "decay = 1.0"),
        ({"kind": "neural"}, "double_hash"),
    ],
)
def test_learners_whose_state_is_not_a_sum_are_refused(learner, match):
    runner = Runner.from_config(config([learner]))
    with pytest.raises(ConfigError, match=match):
        ModelSync(runner, "w", "h")


def test_group_and_join_cannot_both_be_on():
    with pytest.raises(ConfigError, match="join"):
        load_config(overrides={"group": {"enabled": True}, "join": {"enabled": True}})


def test_every_outcome_the_sync_reports_is_an_exported_label_value_from_the_start():
    from pipeline.group.fold import ACCEPTED, CONFLICT, DUPLICATE
    from pipeline.group.sync import INCOMPATIBLE, REFUSED
    from pipeline.metrics import GROUP_OUTCOMES, StreamMetrics

    assert {ACCEPTED, CONFLICT, DUPLICATE, INCOMPATIBLE, REFUSED, "own", "published", "unreadable"} <= set(
        GROUP_OUTCOMES
    )
    text = StreamMetrics().exposition().decode()
    assert 'streamlearn_group_deltas_total{outcome="conflict"} 0.0' in text
    assert 'streamlearn_group_sync_bytes_total{direction="received"} 0.0' in text
