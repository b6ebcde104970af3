"""``streamlearn replay --state-dir`` loses nothing: after kill -9 or Ctrl-C, a restarted replay
continues from the snapshot's file position and ends in exactly the state of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from state.snapshot import SnapshotStore
from tests.test_conformance import assert_bundles_equal, make_events

ROOT = Path(__file__).resolve().parent.parent
EVENTS = 50_000
CONFIG = """
[source]
batch_size = 500
[snapshot]
every_seconds = 0
keep = 3
[[learners]]
kind = "ftrl"
params = { bits = 16 }
[[learners]]
kind = "river:linear_model.LogisticRegression"
"""

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stream(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("stream")
    (d / "events.jsonl").write_bytes(b"\n".join(make_events(EVENTS, seed=21)) + b"\n")
    (d / "streamlearn.toml").write_text(CONFIG)
    return d


def replay(stream: Path, state_dir: Path, snapshot_every: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMLEARN_")}
    env["PYTHONPATH"] = str(ROOT)
    cmd = [sys.executable, "-m", "consumers.cli", "replay", str(stream / "events.jsonl")]
    cmd += ["--config", str(stream / "streamlearn.toml"), "--state-dir", str(state_dir), "--no-progress"]
    cmd += ["--dead-letter", str(state_dir.parent / f"{state_dir.name}-dead.jsonl")]
    cmd += ["--snapshot-every", str(snapshot_every)]
    return subprocess.Popen(
        cmd, cwd=state_dir.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(proc: subprocess.Popen, expect: int = 0) -> str:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == expect, f"exit {proc.returncode}\n{out}\n{err}"
    return err


def wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"replay ended (exit {proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def catches(pid: int, signum: int) -> bool:
    """Whether the process has installed a handler for ``signum`` (Linux: SigCgt in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


@pytest.fixture(scope="module")
def uninterrupted(stream: Path):
    state_dir = stream / "straight"
    finish(replay(stream, state_dir, snapshot_every=20_000))
    manifest, bundles = SnapshotStore(state_dir).latest_valid()
    assert manifest["positions"] == {str(stream / "events.jsonl"): EVENTS}
    return manifest, bundles


def assert_same_final_state(state_dir: Path, uninterrupted) -> None:
    manifest, bundles = SnapshotStore(state_dir).latest_valid()
    assert manifest["positions"] == uninterrupted[0]["positions"]
    assert manifest["counters"] == uninterrupted[0]["counters"]
    assert_bundles_equal(bundles, uninterrupted[1])


def test_replay_resumes_after_kill_9_and_ends_in_the_uninterrupted_state(stream: Path, uninterrupted):
    state_dir = stream / "killed"
    store = SnapshotStore(state_dir)
    proc = replay(stream, state_dir, snapshot_every=5000)
    wait_for(lambda: len(store.seqs()) >= 1, proc, "the first snapshot")
    proc.send_signal(signal.SIGKILL)
    finish(proc, expect=-signal.SIGKILL)
    reached = store.latest_valid()[0]["events_applied"]
    assert 0 < reached < EVENTS

    err = finish(replay(stream, state_dir, snapshot_every=5000))
    assert "resumed from snapshot" in err
    assert_same_final_state(state_dir, uninterrupted)


def test_replay_snapshots_on_sigusr1_and_resumes_after_ctrl_c(stream: Path, uninterrupted):
    state_dir = stream / "interrupted"
    store = SnapshotStore(state_dir)
    proc = replay(stream, state_dir, snapshot_every=0)  # no cadence: only on demand and at exit
    wait_for(lambda: catches(proc.pid, signal.SIGUSR1), proc, "the SIGUSR1 handler")
    proc.send_signal(signal.SIGUSR1)
    wait_for(lambda: len(store.seqs()) >= 1, proc, "the on-demand snapshot")
    proc.send_signal(signal.SIGINT)
    finish(proc, expect=130)
    final = store.latest_valid()[0]
    assert len(store.seqs()) == 2 and final["events_applied"] < EVENTS  # on demand + on shutdown

    err = finish(replay(stream, state_dir, snapshot_every=0))
    assert f"resumed from snapshot {final['seq']}" in err
    assert_same_final_state(state_dir, uninterrupted)
