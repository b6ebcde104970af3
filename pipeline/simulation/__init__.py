"""Synthetic interaction streams with known drift, position bias and logging propensities (see :mod:`pipeline.simulate`)."""

from __future__ import annotations

import importlib

# Names are imported on first use (PEP 562): ``streamlearn simulate --help`` reads SimConfig's
# defaults from .config, which needs neither numpy nor pyarrow.
_EXPORTS = {
    "config": ("DRIFT_KINDS", "Drift", "SimConfig", "default_drifts", "parse_drift"),
    "environment": ("Contexts", "Environment"),
    "logging_policy": ("LoggingPolicy",),
    "records": ("SIM_SCHEMA", "TRUTH_FIELDS", "to_json_lines"),
    "stream": ("JsonChunk", "Simulator"),
    "world": ("CATEGORIES", "DEVICES", "World", "examination"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [
    "CATEGORIES",
    "DEVICES",
    "DRIFT_KINDS",
    "SIM_SCHEMA",
    "TRUTH_FIELDS",
    "Contexts",
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
    "to_json_lines",
]


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'pipeline.simulation' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"pipeline.simulation.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
