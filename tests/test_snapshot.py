"""SnapshotStore: atomic writes, exact round-trips, verification, failure cases, retention."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.errors import SnapshotError
from pipeline.learners.base import StateBundle
from state import codec
from state.snapshot import FORMAT_VERSION, SnapshotStore, check_writable, safe_name

RIVER = "river:linear_model.LogisticRegression"


def rich_bundles() -> dict[str, StateBundle]:
    rng = np.random.default_rng(0)
    table = pa.table(
        {
            "item": pa.array(["a", "b", None, "é"], pa.string()),
            "count": pa.array([1, 2, 3, 2**62], pa.int64()),
            "weight": pa.array([0.1, float("nan"), -0.0, 1e300]),
            "tags": pa.array([["x"], [], None, ["y", "z"]], pa.list_(pa.string())),
            "doc": pa.array(["{}", "[]", "", "x" * 1000], pa.large_string()),
        }
    )
    return {
        "_runner": StateBundle(
            tables={"window.ftrl": pa.table({"prob": [0.5], "label": [1.0]})},
            arrays={"dedup": np.array([1, 2**64 - 1], dtype=np.uint64)},
            meta={"positions": {"t:0": 5}, "max_ts": None, "x": float("nan")},
        ),
        "ftrl": StateBundle(
            arrays={
                "z": rng.standard_normal(1000),
                "m2d": np.asfortranarray(rng.random((3, 4), dtype=np.float32)),
                "empty": np.zeros(0, dtype=np.int16),
                "flags": np.array([True, False]),
            },
            meta={"bits": 10},
        ),
        RIVER: StateBundle(tables={"vocab": table}, tensors={"emb": torch.arange(6.0).reshape(2, 3)}),
    }


@pytest.fixture
def store(tmp_path: Path) -> SnapshotStore:
    s = SnapshotStore(tmp_path / "state", keep=3)
    s.prepare()
    return s


def write(store: SnapshotStore, bundles=None, events: int = 10, **kw) -> dict:
    return store.write(
        bundles if bundles is not None else rich_bundles(),
        positions={"f.jsonl": events},
        events_applied=events,
        config_hash="cafe",
        **kw,
    )


# ------------------------------------------------------------------------------------ round trip


def test_write_then_read_round_trips_every_kind_of_state_exactly(store):
    bundles = rich_bundles()
    manifest = write(store, bundles)
    got_manifest, got = store.read(manifest["seq"])
    assert json.dumps(got_manifest, sort_keys=True) == json.dumps(manifest, sort_keys=True)  # NaN != NaN
    for name, b in bundles.items():
        for k, a in b.arrays.items():
            r = got[name].arrays[k]
            assert r.dtype == a.dtype and r.shape == a.shape
            np.testing.assert_array_equal(r, a)
            assert r.flags.writeable
        for k, t in b.tables.items():
            assert got[name].tables[k].schema == t.schema
            assert repr(got[name].tables[k].to_pylist()) == repr(t.to_pylist())  # repr: NaN equals NaN
        for k, t in b.tensors.items():
            assert torch.equal(got[name].tensors[k], t)
    assert got["ftrl"].meta == {"bits": 10}
    assert got["_runner"].meta["max_ts"] is None and np.isnan(got["_runner"].meta["x"])


def test_write_records_manifest_with_sha256_of_every_file(store):
    manifest = write(store, events=42)
    base = store.path(manifest["seq"])
    assert manifest["format_version"] == FORMAT_VERSION
    assert manifest["positions"] == {"f.jsonl": 42} and manifest["events_applied"] == 42
    assert manifest["config_hash"] == "cafe"
    on_disk = {str(p.relative_to(base)) for p in base.rglob("*") if p.is_file()} - {"manifest.json"}
    assert on_disk == set(manifest["files"])
    for rel, entry in manifest["files"].items():
        data = (base / rel).read_bytes()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    assert manifest["bytes"] == sum(e["bytes"] for e in manifest["files"].values())


def test_write_sanitises_learner_names_and_keeps_real_names_in_manifest(store):
    manifest = write(store)
    info = manifest["learners"][RIVER]
    assert info["dir"] == "river_linear_model.LogisticRegression"
    assert info["tables"] == {"vocab": "river_linear_model.LogisticRegression/vocab.parquet"}
    assert all(":" not in rel for rel in manifest["files"])


def test_safe_name_keeps_colliding_names_apart():
    taken: set[str] = set()
    names = [safe_name(n, taken) for n in ("a:b", "a_b", "A_B", "..", "metrics.parquet", "x/../y")]
    assert names == ["a_b", "a_b~2", "A_B~3", "_", "metrics.parquet~2", "x_.._y"]


def test_npy_files_are_standard_and_load_without_pickle(store):
    manifest = write(store)
    z = np.load(store.path(manifest["seq"]) / "ftrl" / "z.npy", allow_pickle=False)
    np.testing.assert_array_equal(z, rich_bundles()["ftrl"].arrays["z"])


def test_history_files_have_fixed_schemas_even_when_empty(store):
    rows = [{"events": 100, "event_ts_ms": 5, "learner": "ftrl", "auc": 0.7, "logloss": 0.5, "extra": "k"}]
    drift = [{"ts_ms": 1, "events": 100, "signal": "loss", "detector": "adwin", "score": 2.5}]
    m1 = write(store, history=rows, drift_events=drift)
    m2 = write(store)
    metrics = pq.read_table(store.path(m1["seq"]) / "metrics.parquet")
    assert metrics.column("extra").to_pylist() == ["k"]
    assert metrics.column("snapshot_seq").to_pylist() == [m1["seq"]]
    assert metrics.column("ctr").null_count == 1
    empty = pq.read_table(store.path(m2["seq"]) / "drift_events.parquet")
    assert empty.num_rows == 0
    assert empty.schema.names == ["ts_ms", "events", "signal", "detector", "score", "snapshot_seq"]
    assert pq.read_table(store.path(m1["seq"]) / "drift_events.parquet").column("score").to_pylist() == [2.5]


def test_meta_that_json_cannot_keep_exactly_still_verifies(store):
    bundles = {"bandit": StateBundle(meta={"arms": {7: [1, 2], 10: (3,)}, "p": np.float64(0.5)})}
    manifest = write(store, bundles)
    assert store.verify(manifest["seq"]) == []
    assert store.read(manifest["seq"])[1]["bandit"].meta == {"arms": {"10": [3], "7": [1, 2]}, "p": 0.5}


def test_write_numbers_snapshots_after_the_highest_existing(store):
    assert [write(store)["seq"] for _ in range(3)] == [1, 2, 3]
    (store.path(9)).mkdir()  # a stray (corrupt) snapshot still reserves its number
    assert write(store)["seq"] == 10


# ------------------------------------------------------------------------------------ failure cases


def _corrupt_newest_and_restore(store, damage) -> tuple[dict, list[str]]:
    good = write(store, events=1)
    bad = write(store, events=2)
    damage(store.path(bad["seq"]))
    problems = store.verify(bad["seq"])
    manifest, _ = store.latest_valid()
    assert manifest["seq"] == good["seq"] and store.skipped == 1
    return manifest, problems


def test_truncated_parquet_is_skipped_for_the_previous_snapshot(store, caplog):
    def truncate(base: Path):
        path = base / "river_linear_model.LogisticRegression" / "vocab.parquet"
        path.write_bytes(path.read_bytes()[:-20])

    with caplog.at_level(logging.WARNING, logger="state.snapshot"):
        _, problems = _corrupt_newest_and_restore(store, truncate)
    assert "truncated" in problems[0]
    assert "SKIPPING SNAPSHOT 00000002" in caplog.text and "size mismatch" in caplog.text


def test_flipped_byte_fails_the_checksum(store):
    def flip(base: Path):
        path = base / "ftrl" / "z.npy"
        data = bytearray(path.read_bytes())
        data[500] ^= 0x01
        path.write_bytes(bytes(data))

    _, problems = _corrupt_newest_and_restore(store, flip)
    assert problems == [problems[0]] and "ftrl/z.npy: checksum mismatch" in problems[0]
    with pytest.raises(SnapshotError, match=r"checksum mismatch in .*z\.npy"):
        store.read(2)


def test_missing_manifest_is_skipped(store):
    _, problems = _corrupt_newest_and_restore(store, lambda base: (base / "manifest.json").unlink())
    assert "has no manifest" in problems[0]


def test_edited_manifest_fails_its_own_checksum(store):
    def edit(base: Path):
        m = json.loads((base / "manifest.json").read_text())
        m["events_applied"] += 1
        (base / "manifest.json").write_text(json.dumps(m))

    _, problems = _corrupt_newest_and_restore(store, edit)
    assert "fails its checksum" in problems[0]


def test_manifest_from_newer_format_is_refused_with_a_clear_message(store):
    def bump(base: Path):
        m = json.loads((base / "manifest.json").read_text())
        m["format_version"] = FORMAT_VERSION + 1
        (base / "manifest.json").write_text(json.dumps(m))

    _, problems = _corrupt_newest_and_restore(store, bump)
    assert f"format_version {FORMAT_VERSION + 1}" in problems[0] and "upgrade streamlearn" in problems[0]


def test_no_valid_snapshot_gives_none_and_counts_each_skip(store):
    for _ in range(2):
        (store.path(write(store)["seq"]) / "manifest.json").unlink()
    assert store.latest_valid() is None and store.skipped == 2
    assert SnapshotStore(store.root / "never-created").latest_valid() is None


def test_object_arrays_are_refused_on_write_and_on_read(store, tmp_path: Path):
    bundles = rich_bundles()
    bundles["ftrl"].arrays["bad"] = np.array([{"a": 1}], dtype=object)
    before = write(store, rich_bundles())
    with pytest.raises(SnapshotError, match="holds Python objects"):
        write(store, bundles)
    assert store.seqs() == [before["seq"]]
    assert not list(store.snapshots_dir.glob("*.tmp"))
    # a pickled .npy whose checksum is right is still never unpickled
    path = tmp_path / "evil.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(SnapshotError, match="holds Python objects"):
        codec.read_array(path, codec.hash_file(path))


def test_tensor_files_holding_arbitrary_objects_are_refused(tmp_path: Path):
    path = tmp_path / "evil.pt"
    buf = io.BytesIO()
    torch.save({"payload": os.system}, buf)  # would run code if unpickled freely
    path.write_bytes(buf.getvalue())
    with pytest.raises(SnapshotError, match="not a valid tensor file"):
        codec.read_tensor(path, codec.hash_file(path))


def test_write_error_mid_snapshot_keeps_previous_snapshot_valid(store, monkeypatch):
    before = write(store, events=1)
    real_fsync = os.fsync
    calls = {"n": 0}

    def fsync_fails_on_third_file(fd):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_fails_on_third_file)
    with pytest.raises(SnapshotError, match="No space left on device"):
        write(store, events=2)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert store.seqs() == [before["seq"]]
    assert not list(store.snapshots_dir.glob("*.tmp"))
    assert store.verify(before["seq"]) == []
    assert write(store, events=3)["seq"] == before["seq"] + 1


def test_unwritable_state_dir_fails_clearly_at_start(tmp_path: Path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(SnapshotError, match=r"state directory '.*a-file/state' is not writable"):
        check_writable(blocker / "state")
    with pytest.raises(SnapshotError, match="is not writable"):
        SnapshotStore(blocker / "state").prepare()


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits; the test above covers root")
def test_read_only_state_dir_fails_clearly_at_start(tmp_path: Path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    with pytest.raises(SnapshotError, match="is not writable"):
        check_writable(ro)


def test_prepare_removes_leftovers_of_an_interrupted_write(store):
    kept = write(store)
    for leftover in ("00000007.tmp", "00000003.deleting"):
        (store.snapshots_dir / leftover).mkdir()
        (store.snapshots_dir / leftover / "half.npy").write_bytes(b"x")
    store.prepare()
    assert sorted(os.listdir(store.snapshots_dir)) == [f"{kept['seq']:08d}"]


# ------------------------------------------------------------------------------------ retention


def test_prune_keeps_newest_k_and_archives_their_history(store):
    rows = [{"events": 1, "event_ts_ms": 1, "learner": "ftrl", "auc": 0.5}]
    for _ in range(5):
        write(store, history=rows)
    assert store.prune(keep=2) == [1, 2, 3]
    assert store.seqs() == [4, 5]
    archived = sorted(p.name for p in store.history_dir.iterdir())
    assert archived == [
        f"0000000{s}.{f}" for s in (1, 2, 3) for f in ("drift_events.parquet", "metrics.parquet")
    ]
    assert pq.read_table(store.history_dir / "00000001.metrics.parquet").column("auc").to_pylist() == [0.5]
    assert store.prune(keep=2) == []


def test_prune_never_removes_the_newest_valid_snapshot(store):
    for _ in range(3):
        write(store)
    for seq in (2, 3):
        (store.path(seq) / "ftrl" / "z.npy").write_bytes(b"garbage")
    assert store.prune(keep=1) == [2]
    assert store.seqs() == [1, 3]
    assert store.latest_valid()[0]["seq"] == 1


def test_keep_below_one_is_rejected(store):
    with pytest.raises(ValueError, match="keep must be >= 1, got 0"):
        store.prune(keep=0)
    with pytest.raises(ValueError, match="keep must be >= 1, got 0"):
        SnapshotStore(store.root, keep=0)
