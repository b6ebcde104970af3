"""Synthetic interaction streams with known drift, position bias and logging propensities (see :mod:`pipeline.simulate`)."""

from pipeline.simulation.config import DRIFT_KINDS, Drift, SimConfig, default_drifts, parse_drift
from pipeline.simulation.environment import Contexts, Environment
from pipeline.simulation.logging_policy import LoggingPolicy
from pipeline.simulation.records import SIM_SCHEMA, TRUTH_FIELDS, to_json_lines
from pipeline.simulation.stream import JsonChunk, Simulator
from pipeline.simulation.world import CATEGORIES, DEVICES, World, examination

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
