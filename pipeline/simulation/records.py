"""Simulated events as Arrow record batches (docs/design.md §3) and as JSON lines.

``features`` is a struct column (``device``, ``hour``, ``price``, ``category``), so Parquet files
hold it natively and :func:`pipeline.events.decode_arrow` splits it into categorical and numeric
maps. With ``include_truth`` two extra top-level columns carry the ground truth, which the decoder
never reads as features (``GROUND_TRUTH_COLUMNS`` in ``pipeline/events/columns.py``): ``p_click``
(the true click probability of the shown item at its position) and ``p_best`` (that of the best
candidate at the same position, for the logging policy's regret).

In the ``delayed`` feedback mode an exposure is the impression with label 0, and each click is an
outcome record of its own (:func:`build_outcomes`): ``event_id`` ``"o<n>"`` (``n`` = its
exposure's index, as in ``"e<n>"``), ``event_type`` ``"click"``, label 1, the exposure's
``user_id``, ``item_id`` and ``request_id``, ``ts`` = the exposure's ``ts`` + the delay, and null
``position``, ``propensity``, ``candidates`` and ``features``. With ``include_truth`` exposures
also carry ``clicked`` (0/1, the eventual outcome) and ``delay_ms`` (null unless an outcome record
follows); outcomes carry nulls in every truth column.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.simulation.world import CATEGORIES, DEVICES, World

if TYPE_CHECKING:
    from pipeline.simulation.environment import Contexts

__all__ = [
    "DELAY_TRUTH_FIELDS",
    "FEATURES_TYPE",
    "OUTCOME_TYPE",
    "SIM_SCHEMA",
    "TRUTH_FIELDS",
    "build_batch",
    "build_outcomes",
    "sim_schema",
    "to_json_lines",
]

EVENT_TYPE = "impression"
OUTCOME_TYPE = "click"
FEATURES_TYPE = pa.struct(
    [
        pa.field("device", pa.string()),
        pa.field("hour", pa.int64()),
        pa.field("price", pa.float64()),
        pa.field("category", pa.string()),
    ]
)
SIM_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string()),
        pa.field("ts", pa.int64()),
        pa.field("user_id", pa.string()),
        pa.field("item_id", pa.string()),
        pa.field("label", pa.float64()),
        pa.field("event_type", pa.string()),
        pa.field("position", pa.int64()),
        pa.field("propensity", pa.float64()),
        pa.field("request_id", pa.string()),
        pa.field("candidates", pa.list_(pa.string())),
        pa.field("features", FEATURES_TYPE),
    ]
)
TRUTH_FIELDS = (pa.field("p_click", pa.float64()), pa.field("p_best", pa.float64()))
DELAY_TRUTH_FIELDS = (pa.field("clicked", pa.int64()), pa.field("delay_ms", pa.int64()))
_DEVICE_STR = pa.array(DEVICES, pa.string())
_CATEGORY_STR = pa.array(CATEGORIES, pa.string())


def _join(prefix: str, numbers: np.ndarray) -> pa.Array:
    return pc.binary_join_element_wise(prefix, pc.cast(pa.array(numbers, type=pa.int64()), pa.string()), "")


def sim_schema(include_truth: bool = False, feedback: str = "joined") -> pa.Schema:
    """The schema of the simulated stream: :data:`SIM_SCHEMA`, then the truth columns asked for.

    >>> sim_schema(True, "delayed").names[-4:]
    ['p_click', 'p_best', 'clicked', 'delay_ms']
    """
    if not include_truth:
        return SIM_SCHEMA
    extra = DELAY_TRUTH_FIELDS if feedback == "delayed" else ()
    return pa.schema([*SIM_SCHEMA, *TRUTH_FIELDS, *extra])


def build_batch(
    world: World,
    ctx: Contexts,
    items: np.ndarray,
    labels: np.ndarray,
    propensities: np.ndarray | None,
    truth: dict[str, np.ndarray] | None = None,
) -> pa.RecordBatch:
    """One event per shown item, request-major: row ``r * k + j`` is item ``j`` of request ``r``.

    ``items``, ``labels``, ``propensities`` and every ``truth`` array are ``(n, k)``; the event
    index of item ``j`` of a request is ``ctx.t + j`` and its ``event_id`` is ``"e<index>"``.
    """
    n, k = items.shape
    rep = lambda a: np.repeat(a, k)  # noqa: E731 - per-request columns repeated for each shown item
    flat = items.ravel()
    features = pa.StructArray.from_arrays(
        [
            _DEVICE_STR.take(pa.array(rep(ctx.device))),
            pa.array(rep(ctx.hour), pa.int64()),
            pa.array(world.item_price[flat], pa.float64()),
            _CATEGORY_STR.take(pa.array(world.item_category[flat])),
        ],
        fields=list(FEATURES_TYPE),
    )
    run = f"{world.config.run_id}-" if world.config.run_id else ""
    arrays = [
        _join(run + "e", (ctx.t[:, None] + np.arange(k)).ravel()),
        pa.array(rep(ctx.ts), pa.int64()),
        world.user_ids(rep(ctx.user)),
        world.item_ids(flat),
        pa.array(labels.ravel(), pa.float64()),
        pa.array(np.full(n * k, EVENT_TYPE, dtype=object), pa.string()),
        pa.array(np.tile(np.arange(k, dtype=np.int64), n), pa.int64()),
        pa.nulls(n * k, pa.float64())
        if propensities is None
        else pa.array(propensities.ravel(), pa.float64()),
        _join(run + "r", rep(ctx.request)),
        _candidates(world, ctx.candidates, k) if world.config.log_candidates else pa.nulls(n * k, _LIST),
        features,
    ]
    schema = SIM_SCHEMA
    if truth is not None:
        arrays += [pa.array(truth[f.name].ravel(), pa.float64()) for f in TRUTH_FIELDS]
        schema = pa.schema([*SIM_SCHEMA, *TRUTH_FIELDS])
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


_LIST = pa.list_(pa.string())


def build_outcomes(
    exposures: pa.RecordBatch, rows: np.ndarray, event_index: np.ndarray, delay_ms: np.ndarray, run_id: str
) -> pa.RecordBatch:
    """The click records of the exposures at ``rows`` of ``exposures``, in ``exposures``' schema.

    ``event_index`` is each exposure's event index (its ``event_id`` is ``"e<index>"``, the
    outcome's ``"o<index>"``) and ``delay_ms`` its delay; every column an outcome does not have
    (position, propensity, candidates, features, the truth) is null.
    """
    n = len(rows)
    take = pa.array(rows, type=pa.int64())
    ts = exposures.column("ts").to_numpy()[rows] + delay_ms
    run = f"{run_id}-" if run_id else ""
    own = {
        "event_id": _join(run + "o", event_index),
        "ts": pa.array(ts, pa.int64()),
        "user_id": exposures.column("user_id").take(take),
        "item_id": exposures.column("item_id").take(take),
        "label": pa.array(np.ones(n), pa.float64()),
        "event_type": pa.array(np.full(n, OUTCOME_TYPE, dtype=object), pa.string()),
        "request_id": exposures.column("request_id").take(take),
    }
    arrays = [own[f.name] if f.name in own else pa.nulls(n, f.type) for f in exposures.schema]
    return pa.RecordBatch.from_arrays(arrays, schema=exposures.schema)


def _candidates(world: World, candidates: np.ndarray, k: int) -> pa.ListArray:
    """The request's candidate ids on each of its ``k`` events, as a list column."""
    n, m = candidates.shape
    per_event = candidates if k == 1 else np.repeat(candidates, k, axis=0)
    offsets = pa.array(np.arange(n * k + 1, dtype=np.int32) * m, pa.int32())
    return pa.ListArray.from_arrays(offsets, world.item_ids(per_event.ravel()))


def _text(col: pa.Array) -> pa.Array:
    """Numbers as JSON text; Arrow writes the shortest representation that round-trips exactly."""
    if pa.types.is_string(col.type):
        return col
    if (
        pa.types.is_floating(col.type)
        and col.null_count == 0
        and pc.all(pc.equal(col, pc.floor(col))).as_py()
    ):
        col = col.cast(pa.int64())  # whole-number floats (labels) as integers: 1, not 1.0
    return pc.cast(col, pa.string())


def _json_safe(batch: pa.RecordBatch) -> bool:
    """The fast path writes every row as the slow one would (true of every simulated valid event).

    That holds without a non-finite number, a string that needs escaping, an empty or
    null-holding candidate list, or a null feature inside a present ``features`` object (the slow
    path writes those as ``null``); a null field is left out by both.
    """
    schema = batch.schema
    strings = [batch.column(f.name) for f in schema if pa.types.is_string(f.type)]
    floats = [batch.column(f.name) for f in schema if pa.types.is_floating(f.type)]
    feats = batch.column("features")
    children = feats.flatten()  # with the parent's nulls, unlike StructArray.field
    if any(c.null_count != feats.null_count for c in children):
        return False
    strings += [c for c, f in zip(children, FEATURES_TYPE) if pa.types.is_string(f.type)]
    floats += [c for c, f in zip(children, FEATURES_TYPE) if pa.types.is_floating(f.type)]
    listed = batch.column("candidates")
    if listed.null_count < len(listed):
        values = pc.list_flatten(listed)
        if values.null_count or pc.min(pc.list_value_length(listed)).as_py() == 0:
            return False
        strings.append(values)
    if not all(pc.all(pc.is_finite(c)).as_py() is not False for c in floats):
        return False
    return not any(pc.any(pc.match_substring_regex(c, r'["\\\x00-\x1f]')).as_py() for c in strings)


def _member(name: str, col: pa.Array, fill: bool = True) -> pa.Array:
    """``,"name":value`` per row; where the value is null, ``""`` (the field left out) or null."""
    if name == "features":
        value = _object(col)
    elif name == "candidates":
        value = pc.binary_join_element_wise('["', pc.binary_join(col, '","'), '"]', "")
    elif pa.types.is_string(col.type):
        value = pc.binary_join_element_wise('"', col, '"', "")
    else:
        value = _text(col)
    out = pc.binary_join_element_wise(f',"{name}":', value, "")
    return out.fill_null("") if fill and out.null_count else out


def _braced(members: list[pa.Array]) -> pa.Array:
    """``{`` + the members without the first one's comma + ``}`` (null where a member is null)."""
    body = pc.utf8_slice_codeunits(pc.binary_join_element_wise(*members, ""), 1)
    return pc.binary_join_element_wise("{", body, "}", "")


def _object(feats: pa.StructArray) -> pa.Array:
    """The ``features`` objects; null where the struct is (its children are null exactly there)."""
    return _braced([_member(f.name, c, fill=False) for f, c in zip(feats.type, feats.flatten())])


def to_json_lines(batch: pa.RecordBatch) -> list[bytes]:
    """One compact JSON object per row, fields in schema order (labels as integers 0/1), nulls left out.

    Built column-wise by Arrow string kernels; a batch with values that kernels cannot write as
    :mod:`orjson` would (strings that need escaping, see :func:`_json_safe`) goes through
    :mod:`orjson` row by row instead.
    """
    if batch.num_rows == 0:
        return []
    if not _json_safe(batch):
        return _to_json_lines_slow(batch)
    lines = _braced([_member(f.name, batch.column(f.name)) for f in batch.schema])
    return pc.cast(lines, pa.binary()).to_pylist()


def _to_json_lines_slow(batch: pa.RecordBatch) -> list[bytes]:
    rows = batch.to_pylist()
    for row in rows:
        if row["label"] is not None and float(row["label"]).is_integer():
            row["label"] = int(row["label"])
    return [orjson.dumps({k: v for k, v in row.items() if v is not None}) for row in rows]
