"""Dead-letter reasons and the default event types: plain constants, importable without numpy or
pyarrow (the configuration and the CLI's argument parsing need them before any batch exists)."""

MALFORMED_JSON = "malformed_json"
NOT_UTF8 = "not_utf8"
NOT_AN_OBJECT = "not_an_object"
EMPTY_RECORD = "empty_record"
OVERSIZED = "oversized"
MISSING_FIELD = "missing_field"
WRONG_TYPE = "wrong_type"
NON_FINITE = "non_finite"
OUT_OF_RANGE = "out_of_range"
BAD_TIMESTAMP = "bad_timestamp"
UNKNOWN_EVENT_TYPE = "unknown_event_type"
REASONS = (
    MALFORMED_JSON,
    NOT_UTF8,
    NOT_AN_OBJECT,
    EMPTY_RECORD,
    OVERSIZED,
    MISSING_FIELD,
    WRONG_TYPE,
    NON_FINITE,
    OUT_OF_RANGE,
    BAD_TIMESTAMP,
    UNKNOWN_EVENT_TYPE,
)

DEFAULT_EVENT_TYPES = ("impression", "view", "click", "add_to_cart", "order", "purchase", "feedback")
