"""The event (docs/design.md §3): decoding and validation of micro-batches.

A micro-batch arrives either as raw JSON values (Kafka record values, JSONL lines) or as an Arrow
record batch (Parquet, CSV). Both paths produce the same columnar :class:`EventBatch` plus one
:class:`DeadLetter` per invalid record, naming the reason, the field and the record's origin.
Validation never raises for bad input: a batch of garbage gives an empty ``EventBatch`` and a
list of dead letters, and the caller goes on.

Reasons (the ``reason`` label of ``streamlearn_dead_letter_total``) are the constants in
:data:`REASONS`.

Examples
--------
>>> from pipeline.events import EventRules, decode_json
>>> records = [b'{"event_id": "e1", "ts": 1700000000000, "user_id": "u1", "item_id": "i1", "label": 1}',
...            b'{"event_id": "e2", "ts": 1700000000001, "user_id": "u1", "label": 0}',
...            b'{"event_id": ']
>>> batch, bad = decode_json(records, EventRules())
>>> len(batch), [(d.index, d.reason, d.detail) for d in bad]
(1, [(1, 'missing_field', "missing required field 'item_id'"), (2, 'malformed_json', 'invalid JSON: unexpected end of data: line 1 column 14 (char 13)')])
"""

from __future__ import annotations

from pipeline.lazy import lazy_exports

# Names are imported on first use (PEP 562): the configuration and the CLI's argument parsing
# import the constants of pipeline.events.reasons, and pyarrow and numpy cost more than a bare
# interpreter's whole start.
_EXPORTS = {
    "arrow_path": ("decode_arrow",),
    "json_path": ("decode_json",),
    "reasons": ("DEFAULT_EVENT_TYPES", "REASONS"),
    "schema": ("EVENT_SCHEMA", "DeadLetter", "EventBatch", "EventRules", "attach_origins"),
}

__all__ = [
    "DEFAULT_EVENT_TYPES",
    "EVENT_SCHEMA",
    "REASONS",
    "DeadLetter",
    "EventBatch",
    "EventRules",
    "attach_origins",
    "decode_arrow",
    "decode_json",
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
