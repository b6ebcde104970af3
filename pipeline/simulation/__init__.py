"""Synthetic interaction streams with known drift, position bias and logging propensities (see :mod:`pipeline.simulate`)."""

from __future__ import annotations

from pipeline.lazy import lazy_exports

# Names are imported on first use (PEP 562): ``streamlearn simulate --help`` reads SimConfig's
# defaults from .config, which needs neither numpy nor pyarrow.
_EXPORTS = {
    "config": (
        "DELAY_KINDS",
        "DRIFT_KINDS",
        "FEEDBACK_MODES",
        "Drift",
        "SimConfig",
        "default_drifts",
        "parse_drift",
    ),
    "environment": ("Contexts", "Environment"),
    "logging_policy": ("LoggingPolicy",),
    "feedback": ("DelayedFeedback",),
    "records": ("DELAY_TRUTH_FIELDS", "SIM_SCHEMA", "TRUTH_FIELDS", "sim_schema", "to_json_lines"),
    "stream": ("JsonChunk", "Simulator"),
    "world": ("CATEGORIES", "DEVICES", "World", "examination"),
}

__all__ = [
    "CATEGORIES",
    "DELAY_KINDS",
    "DELAY_TRUTH_FIELDS",
    "DEVICES",
    "DRIFT_KINDS",
    "FEEDBACK_MODES",
    "SIM_SCHEMA",
    "TRUTH_FIELDS",
    "Contexts",
    "DelayedFeedback",
    "Drift",
    "Environment",
    "JsonChunk",
    "LoggingPolicy",
    "SimConfig",
    "Simulator",
    "World",
    "default_drifts",
    "examination",
    "parse_drift",
    "sim_schema",
    "to_json_lines",
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
