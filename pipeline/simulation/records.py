"""Simulated events as Arrow record batches (docs/design.md §3) and as JSON lines.

``features`` is a struct column (``device``, ``hour``, ``price``, ``category``), so Parquet files
hold it natively and :func:`pipeline.events.decode_arrow` splits it into categorical and numeric
maps. With ``include_truth`` two extra top-level columns carry the ground truth, which the decoder
ignores: ``p_click`` (the true click probability of the shown item at its position) and
``p_best`` (that of the best candidate at the same position, for the logging policy's regret).
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

__all__ = ["FEATURES_TYPE", "SIM_SCHEMA", "TRUTH_FIELDS", "build_batch", "to_json_lines"]

EVENT_TYPE = "impression"
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
_DEVICE_STR = pa.array(DEVICES, pa.string())
_CATEGORY_STR = pa.array(CATEGORIES, pa.string())


def _join(prefix: str, numbers: np.ndarray) -> pa.Array:
    return pc.binary_join_element_wise(prefix, pc.cast(pa.array(numbers, type=pa.int64()), pa.string()), "")


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
    """No null, no non-finite number, no string that needs escaping (true of every simulated valid event)."""
    feats = batch.column("features")
    strings = [batch.column(f.name) for f in SIM_SCHEMA if f.type == pa.string()]
    strings += [feats.field(f.name) for f in FEATURES_TYPE if f.type == pa.string()]
    names = [f.name for f in SIM_SCHEMA if f.name != "candidates"]
    names += [f.name for f in TRUTH_FIELDS if f.name in batch.schema.names]
    listed = batch.column("candidates")
    if listed.null_count not in (0, len(listed)):
        return False
    if listed.null_count == 0:
        strings.append(pc.list_flatten(listed))
    if any(batch.column(n).null_count for n in names) or any(
        feats.field(i).null_count for i in range(feats.type.num_fields)
    ):
        return False
    floats = [batch.column(n) for n in names if pa.types.is_floating(batch.schema.field(n).type)]
    floats += [feats.field(f.name) for f in FEATURES_TYPE if pa.types.is_floating(f.type)]
    if not all(pc.all(pc.is_finite(c)).as_py() for c in floats):
        return False
    return not any(pc.any(pc.match_substring_regex(c, r'["\\\x00-\x1f]')).as_py() for c in strings)


def to_json_lines(batch: pa.RecordBatch) -> list[bytes]:
    """One compact JSON object per row, fields in schema order (labels as integers 0/1).

    Built column-wise by Arrow string kernels; a batch with nulls or strings that need escaping
    goes through :mod:`orjson` row by row instead (null fields are then left out).
    """
    if batch.num_rows == 0:
        return []
    if not _json_safe(batch):
        return _to_json_lines_slow(batch)
    feats = batch.column("features")
    parts: list = []
    glue = "{"  # the text between the previous value and the next key
    for f in SIM_SCHEMA:
        if f.name == "features":
            continue
        if f.name == "candidates":
            if batch.column("candidates").null_count == 0:
                listed = pc.binary_join(batch.column("candidates"), '","')
                parts += [f'{glue}"candidates":["', listed]
                glue = '"],'
            continue
        quote = '"' if f.type == pa.string() else ""
        parts += [f'{glue}"{f.name}":{quote}', _text(batch.column(f.name))]
        glue = f"{quote},"
    glue += '"features":{'
    for i, f in enumerate(FEATURES_TYPE):
        quote = '"' if f.type == pa.string() else ""
        parts += [f'{glue}"{f.name}":{quote}', _text(feats.field(i))]
        glue = f"{quote},"
    glue = glue[:-1] + "}"
    for f in TRUTH_FIELDS:
        if f.name in batch.schema.names:
            parts += [f'{glue},"{f.name}":', _text(batch.column(f.name))]
            glue = ""
    parts.append(glue + "}")
    return pc.cast(pc.binary_join_element_wise(*parts, ""), pa.binary()).to_pylist()


def _to_json_lines_slow(batch: pa.RecordBatch) -> list[bytes]:
    rows = batch.to_pylist()
    for row in rows:
        if row["label"] is not None and float(row["label"]).is_integer():
            row["label"] = int(row["label"])
    return [orjson.dumps({k: v for k, v in row.items() if v is not None}) for row in rows]
