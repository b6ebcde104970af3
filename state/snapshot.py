"""Atomic, verified snapshots of a runner's state (docs/design.md §6).

Layout::

    <state_dir>/snapshots/<seq>/           seq zero-padded to 8 digits
        manifest.json                      format_version, seq, created_at, config_hash, positions,
                                           events_applied, counters, learners, files (sha256 + bytes), checksum
        <learner>/<table>.parquet | <array>.npy | <tensor>.pt
        metrics.parquet, drift_events.parquet   history since the previous snapshot
    <state_dir>/history/<seq>.metrics.parquet   history of pruned snapshots (kept for the catalog)

A snapshot is written into ``<seq>.tmp``, every file and directory fsynced, then renamed: it is
whole or absent. Reading verifies every file's size and sha256 (and the manifest's own checksum)
before decoding it; :meth:`SnapshotStore.latest_valid` skips a snapshot that fails, loudly, for
the one before it. Names of learners and tables may hold any character (``river:linear_model.X``):
on disk they are sanitised, and the manifest maps the real names to the files.

Examples
--------
>>> import tempfile, numpy as np
>>> from pipeline.learners.base import StateBundle
>>> store = SnapshotStore(tempfile.mkdtemp(), keep=2)
>>> store.prepare()
>>> bundles = {"ftrl": StateBundle(arrays={"z": np.zeros(3)}, meta={"bits": 2})}
>>> for _ in range(3):
...     m = store.write(bundles, positions={"a.jsonl": 10}, events_applied=10, config_hash="c0ffee")
>>> store.prune()
[1]
>>> manifest, restored = store.latest_valid()
>>> manifest["seq"], store.seqs(), restored["ftrl"].arrays["z"].tolist(), restored["ftrl"].meta
(3, [2, 3], [0.0, 0.0, 0.0], {'bits': 2})
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import SnapshotError
from state import codec
from state.history import DRIFT_FILE, HISTORY_FILES, METRICS_FILE

if TYPE_CHECKING:  # imported where bundles are built: listing snapshots needs no pyarrow
    from pipeline.learners.base import StateBundle

__all__ = ["FORMAT_VERSION", "SnapshotStore", "check_writable", "safe_name"]

log = logging.getLogger(__name__)

#: bump when a reader of the old format could not read the new one
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_RESERVED = {MANIFEST, METRICS_FILE, DRIFT_FILE}
_MANIFEST_KEYS = {
    "files": dict,
    "learners": dict,
    "positions": dict,
    "events_applied": int,
    "config_hash": str,
}
_ENTRY = re.compile(r"^(\d{8})(\.tmp|\.deleting)?$")

_KINDS = (("tables", ".parquet"), ("arrays", ".npy"), ("tensors", ".pt"))


def safe_name(name: str, taken: set[str]) -> str:
    """A file-system-safe, unique (case-insensitively, within ``taken``) form of ``name``.

    >>> taken = set()
    >>> safe_name("river:linear_model.LogisticRegression", taken), safe_name("river_linear_model.LogisticRegression", taken)
    ('river_linear_model.LogisticRegression', 'river_linear_model.LogisticRegression~2')
    """
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip(".")[:100] or "_"
    candidate, i = base, 1
    while candidate.lower() in taken or candidate in _RESERVED:
        i += 1
        candidate = f"{base}~{i}"
    taken.add(candidate.lower())
    return candidate


def check_writable(state_dir: str | os.PathLike) -> Path:
    """Create ``<state_dir>/snapshots`` and prove that a file can be written, fsynced and removed there.

    Raises :class:`SnapshotError` naming the directory, so that a bad state dir fails at start,
    not at the first snapshot.
    """
    root = Path(state_dir)
    probe = root / "snapshots" / f".probe-{os.getpid()}"
    try:
        probe.parent.mkdir(parents=True, exist_ok=True)
        codec.write_bytes(probe, [b"ok"])
        probe.unlink()
    except OSError as exc:
        raise SnapshotError(f"state directory {str(root)!r} is not writable: {exc}") from exc
    return root


def _checksum(manifest: Mapping[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    return hashlib.sha256(codec.dumps_json(body)).hexdigest()


class SnapshotStore:
    """Numbered snapshots under ``<state_dir>/snapshots``.

    Parameters
    ----------
    state_dir
        The state directory (created by :meth:`prepare`, which writers call; readers never create it).
    keep
        How many snapshots :meth:`prune` keeps by default.
    """

    def __init__(self, state_dir: str | os.PathLike, keep: int = 5):
        if int(keep) < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.root = Path(state_dir)
        self.snapshots_dir = self.root / "snapshots"
        self.history_dir = self.root / "history"
        self.keep = int(keep)
        self.skipped = 0  # snapshots that failed verification in latest_valid()

    def __repr__(self) -> str:
        return f"SnapshotStore({str(self.root)!r}, keep={self.keep})"

    # ------------------------------------------------------------------------------ listing
    def _entries(self) -> list[tuple[int, str]]:
        try:
            names = os.listdir(self.snapshots_dir)
        except FileNotFoundError:
            return []
        return [(int(m.group(1)), name) for name in names if (m := _ENTRY.match(name))]

    def seqs(self) -> list[int]:
        """Sequence numbers of complete (renamed) snapshots, oldest first; validity is not checked."""
        return sorted(
            seq for seq, name in self._entries() if len(name) == 8 and (self.snapshots_dir / name).is_dir()
        )

    def path(self, seq: int) -> Path:
        return self.snapshots_dir / f"{int(seq):08d}"

    def prepare(self) -> None:
        """Get ready to write: check the directory is writable and remove what a crash left behind."""
        check_writable(self.root)
        for _, name in self._entries():
            if len(name) > 8:
                log.warning("removing incomplete snapshot %s left by an interrupted write", name)
                shutil.rmtree(self.snapshots_dir / name, ignore_errors=True)

    # ------------------------------------------------------------------------------ writing
    def write(
        self,
        bundles: Mapping[str, StateBundle],
        *,
        positions: Mapping[str, int],
        events_applied: int,
        config_hash: str,
        config: Mapping[str, Any] | None = None,
        counters: Mapping[str, int] | None = None,
        kinds: Mapping[str, str] | None = None,
        history: Sequence[Mapping[str, Any]] = (),
        drift_events: Sequence[Mapping[str, Any]] = (),
    ) -> dict[str, Any]:
        """Write one snapshot atomically and return its manifest.

        On any failure the partial ``<seq>.tmp`` is removed, earlier snapshots are untouched and a
        :class:`SnapshotError` is raised.
        """
        entries = self._entries()
        seq = max((s for s, _ in entries), default=0) + 1
        tmp = self.snapshots_dir / f"{seq:08d}.tmp"
        try:
            # 1. a fresh directory that no reader will take for a snapshot
            tmp.mkdir(parents=False)
            files: dict[str, dict[str, Any]] = {}
            # 2. every bundle's files, hashed while written and fsynced
            learners = self._write_bundles(tmp, bundles, kinds or {}, files)
            # 3. the history since the previous snapshot
            from state.history import DRIFT_SCHEMA, METRICS_SCHEMA, history_table

            for fname, rows, schema in (
                (METRICS_FILE, history, METRICS_SCHEMA),
                (DRIFT_FILE, drift_events, DRIFT_SCHEMA),
            ):
                files[fname] = codec.write_table(tmp / fname, history_table(rows, schema, seq)).to_json()
            # 4. the manifest, last, with a checksum over itself
            manifest = {
                "format_version": FORMAT_VERSION,
                "seq": seq,
                "created_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "config_hash": config_hash,
                **({"config": dict(config)} if config is not None else {}),
                "positions": {str(k): int(v) for k, v in positions.items()},
                "events_applied": int(events_applied),
                "counters": {str(k): int(v) for k, v in (counters or {}).items()},
                "learners": learners,
                "files": files,
                "bytes": sum(f["bytes"] for f in files.values()),
            }
            # the checksum covers the manifest as a reader will parse it (e.g. int keys become strings)
            manifest = json.loads(codec.dumps_json(manifest))
            manifest["checksum"] = _checksum(manifest)
            codec.write_json(tmp / MANIFEST, manifest)
            # 5. directory entries durable, then the atomic rename, then the rename durable
            for info in learners.values():
                codec.fsync_dir(tmp / info["dir"])
            codec.fsync_dir(tmp)
            os.rename(tmp, self.path(seq))
            codec.fsync_dir(self.snapshots_dir)
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, Exception) and not isinstance(exc, SnapshotError):
                raise SnapshotError(
                    f"writing snapshot {seq:08d} in {self.snapshots_dir} failed: {exc}"
                ) from exc
            raise
        return manifest

    def _write_bundles(self, tmp: Path, bundles, kinds, files) -> dict[str, Any]:
        learners: dict[str, Any] = {}
        taken: set[str] = set()
        for name, bundle in bundles.items():
            sub = safe_name(name, taken)
            (tmp / sub).mkdir()
            info: dict[str, Any] = {"kind": kinds.get(name, ""), "dir": sub, "meta": bundle.meta}
            names: set[str] = set()
            writers = (codec.write_table, codec.write_array, codec.write_tensor)
            for (attr, suffix), writer in zip(_KINDS, writers):
                info[attr] = {}
                for key, value in getattr(bundle, attr).items():
                    rel = f"{sub}/{safe_name(key, names)}{suffix}"
                    files[rel] = writer(tmp / rel, value).to_json()
                    info[attr][key] = rel
            learners[name] = info
        return learners

    # ------------------------------------------------------------------------------ reading
    def read_manifest(self, seq: int) -> dict[str, Any]:
        """The manifest of ``seq``, checked for format version and integrity (not its files)."""
        path = self.path(seq) / MANIFEST
        try:
            manifest = json.loads(path.read_bytes())
        except FileNotFoundError:
            raise SnapshotError(f"snapshot {seq:08d} has no manifest ({path} is missing)") from None
        except (OSError, ValueError) as exc:
            raise SnapshotError(f"snapshot {seq:08d}: manifest {path} is unreadable: {exc}") from exc
        if not isinstance(manifest, dict):
            raise SnapshotError(f"snapshot {seq:08d}: manifest {path} is not a JSON object")
        version = manifest.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise SnapshotError(
                f"snapshot {seq:08d} has format_version {version!r}; this streamlearn reads versions <= "
                f"{FORMAT_VERSION}: upgrade streamlearn to restore it"
            )
        if manifest.get("checksum") != _checksum(manifest):
            raise SnapshotError(f"snapshot {seq:08d}: manifest {path} fails its checksum (corrupted)")
        if manifest.get("seq") != seq:
            raise SnapshotError(f"snapshot {seq:08d}: manifest says seq {manifest.get('seq')!r}")
        missing = [k for k in _MANIFEST_KEYS if not isinstance(manifest.get(k), _MANIFEST_KEYS[k])]
        if missing:
            raise SnapshotError(f"snapshot {seq:08d}: manifest {path} lacks or mistypes {', '.join(missing)}")
        for rel in manifest["files"]:
            if rel.startswith(("/", "\\")) or ".." in Path(rel).parts:
                raise SnapshotError(
                    f"snapshot {seq:08d}: manifest names a file outside the snapshot: {rel!r}"
                )
        return manifest

    def read(self, seq: int) -> tuple[dict[str, Any], dict[str, StateBundle]]:
        """Manifest and bundles of ``seq``, every file verified as it is read."""
        from pipeline.learners.base import StateBundle

        manifest = self.read_manifest(seq)
        base = self.path(seq)
        files = manifest["files"]

        def load(rel: str, reader):
            if rel not in files:
                raise SnapshotError(f"snapshot {seq:08d}: {rel} is not listed in the manifest's files")
            return reader(base / rel, codec.FileEntry(**files[rel]))

        readers = dict(
            zip((attr for attr, _ in _KINDS), (codec.read_table, codec.read_array, codec.read_tensor))
        )
        try:
            bundles = {
                name: StateBundle(
                    meta=info["meta"],
                    **{
                        attr: {k: load(rel, rd) for k, rel in info[attr].items()}
                        for attr, rd in readers.items()
                    },
                )
                for name, info in manifest["learners"].items()
            }
            for fname in HISTORY_FILES:  # not needed to resume, but part of the snapshot's integrity
                load(fname, codec.read_bytes)
        except (KeyError, TypeError, AttributeError) as exc:  # valid checksum, unexpected layout
            raise SnapshotError(f"snapshot {seq:08d}: malformed manifest entry: {exc!r}") from exc
        return manifest, bundles

    def verify(self, seq: int) -> list[str]:
        """Problems found in snapshot ``seq`` (an empty list when it is valid); decodes nothing."""
        try:
            manifest = self.read_manifest(seq)
        except SnapshotError as exc:
            return [str(exc)]
        problems = []
        base = self.path(seq)
        for rel, entry in sorted(manifest["files"].items()):
            try:
                found = codec.hash_file(base / rel)
            except OSError as exc:
                problems.append(f"{rel}: cannot read: {exc}")
                continue
            if found.bytes != entry["bytes"]:
                problems.append(f"{rel}: expected {entry['bytes']} bytes, found {found.bytes} (truncated?)")
            elif found.sha256 != entry["sha256"]:
                problems.append(
                    f"{rel}: checksum mismatch (expected {entry['sha256'][:10]}…, found {found.sha256[:10]}…)"
                )
        return problems

    def latest_valid(self) -> tuple[dict[str, Any], dict[str, StateBundle]] | None:
        """The newest snapshot that reads and verifies; each one skipped is logged and counted."""
        seqs = self.seqs()
        for seq in reversed(seqs):
            try:
                return self.read(seq)
            except SnapshotError as exc:
                self.skipped += 1
                log.warning("SKIPPING SNAPSHOT %08d: %s; trying the previous one", seq, exc)
        if seqs:
            log.error(
                "no valid snapshot among %d in %s: starting from scratch", len(seqs), self.snapshots_dir
            )
        return None

    # ------------------------------------------------------------------------------ retention
    def prune(self, keep: int | None = None, protect: Iterable[int] = ()) -> list[int]:
        """Remove all but the newest ``keep`` snapshots; returns the removed seqs.

        The newest *valid* snapshot is never removed (``protect`` names snapshots known to be
        valid, which spares verifying them). Their history files move to ``<state_dir>/history``
        so the catalog keeps the whole metric history.
        """
        keep = self.keep if keep is None else int(keep)
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        seqs = self.seqs()
        doomed = seqs[:-keep]
        if not doomed:
            return []
        safe = set(protect) & set(seqs[-keep:])
        if not safe:  # make sure a valid snapshot survives even if the newest ones are corrupt
            for seq in reversed(seqs):
                if not self.verify(seq):
                    doomed = [s for s in doomed if s != seq]
                    break
        self.history_dir.mkdir(exist_ok=True)
        for seq in doomed:
            src = self.path(seq)
            for fname in HISTORY_FILES:
                if (src / fname).exists():
                    os.replace(src / fname, self.history_dir / f"{seq:08d}.{fname}")
            trash = src.with_name(src.name + ".deleting")
            os.rename(src, trash)  # a crash mid-delete leaves a name that prepare() removes
            shutil.rmtree(trash, ignore_errors=True)
        codec.fsync_dir(self.history_dir)
        codec.fsync_dir(self.snapshots_dir)
        return doomed
