"""Checkpointer: cadence, on-demand and shutdown snapshots, background writing, failures, restore."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.errors import SnapshotError
from pipeline.learners.ftrl import FTRL
from pipeline.runner import Runner
from state.checkpoint import Checkpointer
from state.snapshot import SnapshotStore
from tests.test_conformance import assert_bundles_equal, batches, make_events

EVENTS = make_events(1000, seed=7)


def make_runner(*observers) -> Runner:
    return Runner([FTRL(bits=10)], window=100, report_every=100, observers=observers)


def run(runner: Runner, first: int, last: int) -> None:
    """Process events [first, last) in batches of 100."""
    for raw in batches(EVENTS[first:last], first_row=first):
        runner.process(raw)


def checkpointer(path: Path, **kw) -> Checkpointer:
    kw.setdefault("background", False)
    kw.setdefault("catalog", False)
    return Checkpointer(SnapshotStore(path, keep=kw.pop("keep", 50)), "hash", **kw)


def positions(store: SnapshotStore) -> list[int]:
    return [store.read_manifest(s)["positions"]["stream"] for s in store.seqs()]


class GatedStore(SnapshotStore):
    """A real store whose writes wait for a gate, to observe what happens while one is in flight."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.gate = threading.Event()
        self.started = threading.Event()

    def write(self, *args, **kw):
        self.started.set()
        assert self.gate.wait(30), "gate never opened"
        return super().write(*args, **kw)


# ------------------------------------------------------------------------------------ cadence


def test_snapshot_every_n_events(tmp_path: Path):
    with checkpointer(tmp_path, every_events=250) as ckpt:
        run(make_runner(ckpt), 0, 1000)
        assert positions(ckpt.store) == [300, 500, 800, 1000]  # first batch boundary at or past each 250
        assert ckpt.snapshots_written == 4


def test_snapshot_every_t_seconds(tmp_path: Path):
    now = [0.0]
    with checkpointer(tmp_path, every_seconds=10, clock=lambda: now[0]) as ckpt:
        runner = make_runner(ckpt)
        for raw in batches(EVENTS[:800]):
            now[0] += 4.0
            runner.process(raw)
        assert positions(ckpt.store) == [300, 600]  # after 12 s and 24 s


def test_request_from_a_signal_snapshots_after_the_next_batch(tmp_path: Path):
    with checkpointer(tmp_path) as ckpt:
        runner = make_runner(ckpt)
        run(runner, 0, 300)
        assert ckpt.store.seqs() == []
        old = signal.signal(signal.SIGUSR1, lambda s, f: ckpt.request())
        try:
            os.kill(os.getpid(), signal.SIGUSR1)
        finally:
            signal.signal(signal.SIGUSR1, old)
        run(runner, 300, 500)
        assert positions(ckpt.store) == [400]


def test_final_writes_once_and_skips_when_nothing_is_new(tmp_path: Path):
    with checkpointer(tmp_path) as ckpt:
        runner = make_runner(ckpt)
        run(runner, 0, 300)
        first = ckpt.final(runner)
        assert first["positions"] == {"stream": 300} and first["events_applied"] == 300
        assert ckpt.final(runner) is first
        assert ckpt.store.seqs() == [1]


def test_retention_keeps_the_newest_k(tmp_path: Path):
    with checkpointer(tmp_path, every_events=100, keep=2) as ckpt:
        run(make_runner(ckpt), 0, 500)
        assert ckpt.store.seqs() == [4, 5]


# ------------------------------------------------------------------------------------ background


def test_background_write_never_blocks_and_keeps_one_in_flight(tmp_path: Path):
    store = GatedStore(tmp_path, keep=50)
    with Checkpointer(store, "hash", every_events=100, background=True, catalog=False) as ckpt:
        runner = make_runner(ckpt)
        run(runner, 0, 100)  # captures the state after 100 events; the write waits at the gate
        assert store.started.wait(10) and ckpt.in_flight
        run(runner, 100, 400)  # due all along, but a write is in flight: no second capture
        assert ckpt.in_flight and ckpt.snapshots_written == 0
        store.gate.set()
        ckpt.wait()
        run(runner, 400, 500)
        ckpt.wait()
        assert positions(store) == [100, 500]
    # what was written is the state at capture time, not at write time
    reference = make_runner()
    run(reference, 0, 100)
    restored = make_runner()
    restored.load_state(store.read(1)[1])
    assert_bundles_equal(reference.state(), restored.state())


# ------------------------------------------------------------------------------------ failures


def _block_snapshots_dir(store: SnapshotStore) -> Path:
    """A real write failure: the snapshots directory is replaced by a file."""
    aside = store.root / "aside"
    os.rename(store.snapshots_dir, aside)
    store.snapshots_dir.write_text("not a directory")
    return aside


def _unblock(store: SnapshotStore, aside: Path) -> None:
    store.snapshots_dir.unlink()
    os.rename(aside, store.snapshots_dir)


def test_failed_write_is_counted_and_processing_continues(tmp_path: Path, caplog):
    with checkpointer(tmp_path, every_events=200) as ckpt:
        runner = make_runner(ckpt)
        run(runner, 0, 200)
        aside = _block_snapshots_dir(ckpt.store)
        with caplog.at_level(logging.ERROR, logger="state.checkpoint"):
            run(runner, 200, 400)
        assert ckpt.snapshot_failures == 1 and "the previous one stays valid" in caplog.text
        _unblock(ckpt.store, aside)
        run(runner, 400, 600)
        assert runner.counters["applied"] == 600
        assert ckpt.snapshots_written == 2 and positions(ckpt.store) == [200, 600]
        assert ckpt.store.verify(1) == [] and ckpt.store.verify(2) == []
        results = ckpt.take_results()
        assert [r.ok for r in results] == [True, False, True] and "Not a directory" in results[1].error
        assert ckpt.take_results() == []
    # the history rows of the failed snapshot are carried into the next one
    metrics = pq.read_table(ckpt.store.path(2) / "metrics.parquet")
    assert sorted(set(metrics.column("events").to_pylist())) == [300, 400, 500, 600]


class StatelessFTRL(FTRL):
    """A learner whose state cannot be exported (a bug in a learner must not stop the stream)."""

    def state(self):
        raise RuntimeError("state export broke")


def test_failing_state_export_is_counted_and_processing_continues(tmp_path: Path):
    with checkpointer(tmp_path, every_events=100) as ckpt:
        runner = Runner([StatelessFTRL(bits=8)], window=100, report_every=100, observers=[ckpt])
        run(runner, 0, 300)
        assert runner.counters["applied"] == 300 and ckpt.snapshot_failures == 3
        assert ckpt.store.seqs() == [] and "state export broke" in ckpt.take_results()[0].error
        with pytest.raises(SnapshotError, match="could not be captured"):
            ckpt.final(runner)


def test_final_raises_when_the_shutdown_snapshot_fails(tmp_path: Path):
    with checkpointer(tmp_path) as ckpt:
        runner = make_runner(ckpt)
        run(runner, 0, 100)
        aside = _block_snapshots_dir(ckpt.store)
        with pytest.raises(SnapshotError, match="final snapshot failed"):
            ckpt.final(runner)
        assert ckpt.stats()["snapshot_failures"] == 1
        _unblock(ckpt.store, aside)


def test_unwritable_state_dir_fails_at_construction(tmp_path: Path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SnapshotError, match="is not writable"):
        checkpointer(tmp_path / "file" / "state")


def test_second_writer_on_the_same_dir_is_refused(tmp_path: Path):
    with checkpointer(tmp_path):
        with pytest.raises(SnapshotError, match=rf"in use by another writer \(pid {os.getpid()}\)"):
            checkpointer(tmp_path)
    checkpointer(tmp_path).close()  # released on close


def test_start_removes_a_temporary_snapshot_left_by_a_crash(tmp_path: Path):
    leftover = tmp_path / "snapshots" / "00000001.tmp"
    leftover.mkdir(parents=True)
    with checkpointer(tmp_path) as ckpt:
        assert not leftover.exists()
        runner = make_runner(ckpt)
        run(runner, 0, 100)
        assert ckpt.final(runner)["seq"] == 1


# ------------------------------------------------------------------------------------ restore


def test_restore_loads_the_newest_valid_snapshot_and_counts_skips(tmp_path: Path):
    with checkpointer(tmp_path, every_events=200) as ckpt:
        run(make_runner(ckpt), 0, 400)
    shutil.copy(
        ckpt.store.path(1) / "manifest.json", ckpt.store.path(2) / "manifest.json"
    )  # wrong seq inside
    with checkpointer(tmp_path) as ckpt:
        runner = make_runner(ckpt)
        assert ckpt.restore(runner)["seq"] == 1
        assert ckpt.stats()["restore_skipped"] == 1
        assert runner.positions == {"stream": 200} and runner.counters["applied"] == 200
        run(runner, 200, 300)
        assert ckpt.final(runner)["seq"] == 3  # numbering goes on after the skipped one


def test_restore_with_no_snapshot_returns_none(tmp_path: Path):
    with checkpointer(tmp_path) as ckpt:
        assert ckpt.restore(make_runner()) is None


def test_restore_refuses_a_snapshot_of_another_configuration(tmp_path: Path):
    with checkpointer(tmp_path) as ckpt:
        runner = make_runner(ckpt)
        run(runner, 0, 100)
        ckpt.final(runner)
    other = Checkpointer(SnapshotStore(tmp_path), "other-hash", background=False, catalog=False)
    with other, pytest.raises(SnapshotError, match="another configuration"):
        other.restore(make_runner())
    lenient = Checkpointer(
        SnapshotStore(tmp_path), "other-hash", background=False, catalog=False, on_config_mismatch="warn"
    )
    with lenient:
        assert lenient.restore(make_runner())["seq"] == 1


def test_restore_into_a_runner_without_those_learners_fails_clearly(tmp_path: Path):
    with checkpointer(tmp_path) as ckpt:
        runner = make_runner(ckpt)
        run(runner, 0, 100)
        ckpt.final(runner)
        with pytest.raises(SnapshotError, match="does not fit this runner"):
            ckpt.restore(Runner([FTRL(bits=10, name="other")]))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"every_events": -1}, "every_events must be >= 0"),
        ({"every_seconds": -0.5}, "every_seconds must be >= 0"),
        ({"on_config_mismatch": "ignore"}, "on_config_mismatch must be 'error' or 'warn'"),
    ],
)
def test_bad_arguments_are_named(tmp_path: Path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        checkpointer(tmp_path, **kwargs)
