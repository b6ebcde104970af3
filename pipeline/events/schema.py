"""Event schema, validation rules, dead letters and the columnar :class:`EventBatch`."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from pipeline.events.reasons import (  # noqa: F401 - re-exported: the reasons' historical home
    BAD_TIMESTAMP,
    DEFAULT_EVENT_TYPES,
    EMPTY_RECORD,
    MALFORMED_JSON,
    MISSING_FIELD,
    NON_FINITE,
    NOT_AN_OBJECT,
    NOT_UTF8,
    OUT_OF_RANGE,
    OVERSIZED,
    REASONS,
    UNKNOWN_EVENT_TYPE,
    WRONG_TYPE,
)

EVENT_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("ts", pa.int64(), nullable=False),
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("label", pa.float64(), nullable=False),
        pa.field("event_type", pa.string()),
        pa.field("position", pa.int64()),
        pa.field("propensity", pa.float64()),
        pa.field("request_id", pa.string()),
        pa.field("exposure_id", pa.string()),
        pa.field("candidates", pa.list_(pa.string())),
        pa.field("cat_features", pa.map_(pa.string(), pa.string())),
        pa.field("num_features", pa.map_(pa.string(), pa.float64())),
        pa.field("row", pa.int64(), nullable=False),
    ]
)
_REQUIRED_STR = ("event_id", "user_id", "item_id")
_OPTIONAL_STR = ("event_type", "request_id", "exposure_id")


@dataclass(frozen=True)
class EventRules:
    """What makes an event valid.

    Parameters
    ----------
    max_record_bytes
        Records larger than this are dead-lettered as ``oversized`` without being parsed.
    event_types
        Allowed ``event_type`` values; an empty tuple allows any string.
    max_features
        Most entries allowed in one event's ``features`` object.
    ts_unit
        Unit of numeric ``ts`` values: ``ms`` (default), ``s`` or ``us``
        (:mod:`pipeline.events.time_units`).
    """

    max_record_bytes: int = 65536
    event_types: tuple[str, ...] = DEFAULT_EVENT_TYPES
    max_features: int = 256
    ts_unit: str = "ms"

    @classmethod
    def from_config(cls, events) -> EventRules:
        """The rules of a configuration's ``[events]`` section."""
        return cls(events.max_record_bytes, tuple(events.event_types), events.max_features, events.ts_unit)


@dataclass(frozen=True)
class DeadLetter:
    """An invalid record: why, where it came from, and its bytes (for the dead-letter sink)."""

    index: int
    reason: str
    detail: str
    value: bytes | None = None
    origin: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        """A JSON-serialisable form; the raw value as text when it is UTF-8, else as hex."""
        out: dict = {"reason": self.reason, "detail": self.detail, "origin": self.origin}
        if self.value is not None:
            try:
                out["value"] = self.value.decode("utf-8")
            except UnicodeDecodeError:
                out["value_hex"] = self.value.hex()
        return out


class EventBatch:
    """A validated micro-batch in columnar form (an Arrow record batch of :data:`EVENT_SCHEMA`).

    Columns are exposed as numpy arrays where they are numeric (zero-copy where Arrow allows).
    ``row`` is each event's index in the raw batch it was decoded from.
    """

    __slots__ = ("_cache", "table")

    def __init__(self, table: pa.RecordBatch):
        if table.schema != EVENT_SCHEMA:
            names = table.schema.names
            table = pa.RecordBatch.from_arrays(
                [
                    table.column(f.name).cast(f.type)
                    if f.name in names or not f.nullable
                    else pa.nulls(table.num_rows, f.type)  # an optional field added since
                    for f in EVENT_SCHEMA
                ],
                schema=EVENT_SCHEMA,
            )
        self.table = table
        self._cache: dict[str, np.ndarray] = {}

    @classmethod
    def empty(cls) -> EventBatch:
        global _EMPTY
        if _EMPTY is None:  # immutable, so one serves every caller
            _EMPTY = _empty_batch()
        return cls(_EMPTY)

    def __len__(self) -> int:
        return self.table.num_rows

    def column(self, name: str) -> pa.Array:
        return self.table.column(name)

    def _numeric(self, name: str, fill: float | int) -> np.ndarray:
        if name not in self._cache:
            col = self.column(name)
            arr = col.fill_null(fill).to_numpy(zero_copy_only=False) if col.null_count else col.to_numpy()
            arr.flags.writeable = False
            self._cache[name] = arr
        return self._cache[name]

    @property
    def ts(self) -> np.ndarray:
        return self._numeric("ts", 0)

    @property
    def label(self) -> np.ndarray:
        return self._numeric("label", 0.0)

    @property
    def position(self) -> np.ndarray:
        """Position, -1 where absent."""
        return self._numeric("position", -1)

    @property
    def propensity(self) -> np.ndarray:
        """Logging propensity, NaN where absent."""
        return self._numeric("propensity", math.nan)

    @property
    def candidates(self) -> pa.ListArray:
        """Each event's candidate item ids (list<string>, null where the event does not say)."""
        return self.column("candidates")

    @property
    def row(self) -> np.ndarray:
        return self._numeric("row", 0)

    def strings(self, name: str) -> list[str | None]:
        return self.column(name).to_pylist()

    def take(self, indices: np.ndarray) -> EventBatch:
        return EventBatch(self.table.take(pa.array(indices, type=pa.int64())))

    def __repr__(self) -> str:
        return f"EventBatch({len(self)} events)"


class ChainedEvents(EventBatch):
    """Batches one after the other, concatenated column by column when a column is read.

    The whole table is built only when something asks for it (``table``, ``take``): a learner
    that reads only labels never copies the rows of the batches it learns together.

    >>> a, b = EventBatch.empty(), EventBatch.empty()
    >>> len(ChainedEvents([a, b])), ChainedEvents([a, b]).label.tolist()
    (0, [])
    """

    __slots__ = ("_parts", "_taken", "_whole")

    def __init__(self, parts: Sequence[EventBatch]):
        self._parts = [p for p in parts if len(p)]
        self._cache, self._taken, self._whole = {}, {}, None

    @property
    def table(self) -> pa.RecordBatch:  # type: ignore[override]
        if self._whole is None:
            if not self._parts:
                self._whole = EventBatch.empty().table
            elif len(self._parts) == 1:
                self._whole = self._parts[0].table
            else:
                tables = [p.table for p in self._parts]
                self._whole = pa.Table.from_batches(tables).combine_chunks().to_batches()[0]
        return self._whole

    def __len__(self) -> int:
        return sum(len(p) for p in self._parts)

    def column(self, name: str) -> pa.Array:
        if self._whole is not None or not self._parts:
            return self.table.column(name)
        if len(self._parts) == 1:
            return self._parts[0].column(name)
        if name not in self._taken:
            self._taken[name] = pa.concat_arrays([p.column(name) for p in self._parts])
        return self._taken[name]


class DeferredEvents(EventBatch):
    """Events that ``build`` makes when something first reads them; their number is known before.

    For batches whose features are computed without their columns (serving requests,
    :mod:`pipeline.serving.request_features`): a learner that reads only the features never pays for
    the columns, and one that reads a column gets the same events as if they had been built first.

    >>> events = DeferredEvents(0, EventBatch.empty)
    >>> len(events), events.label.tolist()
    (0, [])
    """

    __slots__ = ("_build", "_built", "_n")

    def __init__(self, n: int, build: Callable[[], EventBatch]):
        self._n, self._build, self._built = n, build, None
        self._cache = {}

    @property
    def table(self) -> pa.RecordBatch:  # type: ignore[override]
        if self._built is None:
            table = self._build().table
            if table.num_rows != self._n:
                raise ValueError(f"deferred events: {table.num_rows} rows built, {self._n} announced")
            self._built = table
        return self._built

    def __len__(self) -> int:
        return self._n


_EMPTY: pa.RecordBatch | None = None


def _empty_batch() -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([pa.array([], type=f.type) for f in EVENT_SCHEMA], schema=EVENT_SCHEMA)


def attach_origins(dead: Iterable[DeadLetter], origin_of) -> list[DeadLetter]:
    """Fill in each dead letter's origin from a callable ``index -> dict``."""
    return [DeadLetter(d.index, d.reason, d.detail, d.value, origin_of(d.index)) for d in dead]
