"""A bandit policy's state bundle: the arm table, the gauges' windows, the generator and the config.

* table ``arms``: one row per arm — ``arm_id``, ``pulls``, ``reward_sum`` and the policy's own
  statistics (1-D columns, or list<double> columns for vectors and flattened matrices);
* tables ``recent_rewards`` and ``recent_rounds``: the windows behind the policy's gauges
  (:mod:`.monitor`), so that a restored worker reports over the same events; absent when the
  gauges are off, and tolerated as absent on load (older snapshots);
* table ``drift_detector``, arrays ``drift.*`` and ``meta["drift"]``: the drift watch
  (``reset_on_drift``), its ADWIN window and the number of resets; absent when the watch is off;
* ``meta``: the class, constructor parameters, number of updates, events learned and the exact
  state of the policy's random generator (as strings, since it exceeds JSON's integers); with
  embedding contexts also ``embedding``: the checkpoint's path, the parts and the file's SHA-256.
  The checkpoint itself is not copied: it must stay available. Restoring into a policy whose
  embedding configuration differs (none vs some, other parts, another file) is refused; the path
  may differ if the file is the same (a moved checkpoint).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from pipeline.errors import SnapshotError
from pipeline.learners.bandits.arms import ArmTable
from pipeline.learners.bandits.kernels import from_column, to_list_column
from pipeline.learners.bandits.monitor import PolicyMonitor
from pipeline.learners.base import StateBundle

if TYPE_CHECKING:
    from pipeline.learners.bandits.base import BanditPolicy

__all__ = ["load_bundle", "state_bundle"]


def state_bundle(policy: BanditPolicy) -> StateBundle:
    """Everything ``policy`` has learned, as copies (later learning leaves the bundle as it is)."""
    n = policy.n_arms
    cols: dict[str, pa.Array] = {
        "arm_id": pa.array(policy._arms.ids, pa.string()),
        "pulls": pa.array(policy._pulls[:n].copy()),
        "reward_sum": pa.array(policy._reward_sum[:n].copy()),
    }
    for name, arr in policy._stat_columns().items():
        cols[name] = to_list_column(arr) if arr.ndim == 2 else pa.array(arr.copy())
    rng = policy._rng.bit_generator.state
    meta = {
        "class": type(policy).__name__,
        "params": {k: list(v) if isinstance(v, tuple) else v for k, v in policy.params().items()},
        "updates": policy._updates,
        "learned": policy._monitor.learned,
        "rng": {
            "bit_generator": rng["bit_generator"],
            "state": {k: str(v) for k, v in rng["state"].items()},
        },
        "rng_extra": [int(rng["has_uint32"]), int(rng["uinteger"])],
    }
    embedding = policy.embedding_meta()
    if embedding is not None:
        meta["embedding"] = embedding
    tables = {"arms": pa.table(cols), **policy._shared_tables()}
    arrays = {}
    if policy.gauge_window:
        tables.update(policy._monitor.tables())
    if policy._drift is not None:
        watch = policy._drift.state()
        tables["drift_detector"] = watch.tables["detector"]
        arrays = {f"drift.{k}": v for k, v in watch.arrays.items()}
        meta["drift"] = {**watch.meta, "resets": policy._resets}
    return StateBundle(tables=tables, arrays=arrays, meta=meta)


def load_bundle(policy: BanditPolicy, bundle: StateBundle) -> None:
    """Replace ``policy``'s learned state with ``bundle`` (checked against its class and ``dim``)."""
    meta = bundle.meta
    cls = type(policy).__name__
    if meta.get("class") != cls:
        raise SnapshotError(f"state meta 'class' is {meta.get('class')!r}, expected {cls!r}")
    if int(meta.get("params", {}).get("dim", policy.dim)) != policy.dim:
        raise SnapshotError(
            f"state meta params 'dim' is {meta['params']['dim']}, this policy has dim={policy.dim}"
        )
    _check_embedding(policy, meta)
    if "arms" not in bundle.tables:
        raise SnapshotError("state has no 'arms' table")
    table = bundle.tables["arms"]
    for col in ("arm_id", "pulls", "reward_sum"):
        if col not in table.column_names:
            raise SnapshotError(f"arms table lacks column {col!r}")
    ids = table.column("arm_id").to_pylist()
    n = len(ids)
    policy._arms = ArmTable(ids)
    policy._pulls = from_column(table.column("pulls"), None, "pulls").astype(np.int64)
    policy._reward_sum = from_column(table.column("reward_sum"), None, "reward_sum")
    policy._load_stat_columns(table, n)
    policy._load_shared_tables(bundle.tables)
    policy._n_stats = n
    policy._spare_row = False  # the loaded columns hold the arms only; _sync_arms adds it
    policy._updates = int(meta.get("updates", 0))
    policy._monitor = PolicyMonitor(max(policy.gauge_window, 1))
    policy._monitor.load(bundle.tables, int(meta.get("learned", 0)))
    _load_drift_watch(policy, bundle)
    rng = meta["rng"]
    policy._rng = np.random.default_rng()
    policy._rng.bit_generator.state = {
        "bit_generator": rng["bit_generator"],
        "state": {k: int(v) for k, v in rng["state"].items()},
        "has_uint32": meta["rng_extra"][0],
        "uinteger": meta["rng_extra"][1],
    }


def _load_drift_watch(policy: BanditPolicy, bundle: StateBundle) -> None:
    """The drift watch's windows; a state saved without one (older, or watch off) starts it afresh."""
    policy._resets = int(bundle.meta.get("drift", {}).get("resets", 0))
    if policy._drift is None:
        return
    policy._drift = policy._new_drift_watch()
    if "drift" not in bundle.meta or "drift_detector" not in bundle.tables:
        return
    arrays = {k.removeprefix("drift."): v for k, v in bundle.arrays.items() if k.startswith("drift.")}
    watch = StateBundle(
        tables={"detector": bundle.tables["drift_detector"]}, arrays=arrays, meta=bundle.meta["drift"]
    )
    try:
        policy._drift.load_state(watch)
    except (KeyError, ValueError, TypeError) as exc:
        raise SnapshotError(f"bandit drift watch state is unreadable: {exc}") from None


def _check_embedding(policy: BanditPolicy, meta: dict) -> None:
    """Refuse a state learned in another context space than ``policy``'s (see the module docstring)."""
    saved, mine = meta.get("embedding"), policy.embedding_meta()
    if saved is None and mine is None:
        return
    if saved is None or mine is None:
        had = (
            "without embedding contexts"
            if saved is None
            else f"with embedding_checkpoint {saved.get('checkpoint')!r}"
        )
        has = "none" if mine is None else f"embedding_checkpoint {mine['checkpoint']!r}"
        raise SnapshotError(f"state was learned {had}; this policy has {has}: its statistics do not apply")
    if list(saved.get("parts", [])) != mine["parts"]:
        raise SnapshotError(
            f"state was learned with embedding_parts={saved.get('parts')}, this policy has {mine['parts']}"
        )
    if saved.get("sha256") != mine["sha256"]:
        raise SnapshotError(
            f"state was learned with embeddings from checkpoint {saved.get('checkpoint')!r} (sha256 "
            f"{str(saved.get('sha256'))[:12]}...), but embedding_checkpoint {mine['checkpoint']!r} is a "
            f"different file (sha256 {mine['sha256'][:12]}...)"
        )
