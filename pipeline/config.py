"""Configuration: one validated, frozen object built in one place.

Sources, later ones winning: defaults < a TOML file < ``STREAMLEARN_<SECTION>__<KEY>`` environment
variables < explicit overrides (command-line flags). Values from the environment are parsed as
TOML literals when they can be (``5000``, ``true``, ``["a", "b"]``) and taken as strings
otherwise. Every error is a :class:`~pipeline.errors.ConfigError` naming the key, the value and
what is allowed.

Examples
--------
>>> cfg = load_config(overrides={"source": {"batch_size": 500}}, environ={"STREAMLEARN_SNAPSHOT__KEEP": "3"})
>>> cfg.source.batch_size, cfg.snapshot.keep
(500, 3)
>>> load_config(overrides={"source": {"batch_sise": 5}})
Traceback (most recent call last):
...
pipeline.errors.ConfigError: unknown key 'source.batch_sise' (did you mean 'source.batch_size'?); allowed: batch_size, max_wait_ms, format, progress
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.drift.settings import DriftSettings
from pipeline.errors import ConfigError, require
from pipeline.events.reasons import DEFAULT_EVENT_TYPES
from pipeline.group.settings import GroupConfig
from pipeline.join.settings import JoinConfig

__all__ = ["Config", "LearnerSpec", "config_hash", "load_config"]


@dataclass(frozen=True)
class SourceConfig:
    batch_size: int = 2000
    max_wait_ms: int = 200
    format: str = "auto"
    progress: bool = True

    def validate(self) -> None:
        _check(self.batch_size >= 1, "source.batch_size", self.batch_size, "an integer >= 1")
        _check(self.max_wait_ms >= 0, "source.max_wait_ms", self.max_wait_ms, "an integer >= 0")
        _one_of("source.format", self.format, ("auto", "jsonl", "parquet", "csv"))


@dataclass(frozen=True)
class EventsConfig:
    max_record_bytes: int = 65536
    event_types: tuple[str, ...] = DEFAULT_EVENT_TYPES
    max_features: int = 256
    dedup_window: int = 100_000
    allowed_lateness_ms: int = 3_600_000
    ts_unit: str = "ms"

    def validate(self) -> None:
        _check(self.ts_unit in ("s", "ms", "us"), "events.ts_unit", self.ts_unit, "one of s, ms, us")
        _check(
            self.max_record_bytes >= 64, "events.max_record_bytes", self.max_record_bytes, "an integer >= 64"
        )
        _check(self.max_features >= 0, "events.max_features", self.max_features, "an integer >= 0")
        _check(self.dedup_window >= 0, "events.dedup_window", self.dedup_window, "an integer >= 0")
        _check(self.allowed_lateness_ms >= 0, "events.allowed_lateness_ms", self.allowed_lateness_ms, ">= 0")


@dataclass(frozen=True)
class FeaturesConfig:
    crosses: tuple[tuple[str, str], ...] = ()
    standardize: bool = True
    exclude: tuple[str, ...] = ()

    def validate(self) -> None:
        for i, pair in enumerate(self.crosses):
            _check(len(pair) == 2, f"features.crosses[{i}]", list(pair), "a pair of field names")


@dataclass(frozen=True)
class LearnerSpec:
    """One learner: ``kind`` (``ftrl``, ``river:<estimator>``, ...), its ``name`` and ``params``."""

    kind: str
    name: str = ""
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.name or self.kind


@dataclass(frozen=True)
class EvaluationConfig:
    window: int = 10_000
    report_every: int = 10_000

    def validate(self) -> None:
        _check(self.window >= 10, "evaluation.window", self.window, "an integer >= 10")
        _check(self.report_every >= 1, "evaluation.report_every", self.report_every, "an integer >= 1")


@dataclass(frozen=True)
class SnapshotConfig:
    dir: str = ""
    every_events: int = 200_000
    every_seconds: float = 60.0
    keep: int = 5
    background: bool = True

    def validate(self) -> None:
        _check(
            self.every_events >= 0, "snapshot.every_events", self.every_events, "an integer >= 0 (0 = off)"
        )
        _check(
            self.every_seconds >= 0, "snapshot.every_seconds", self.every_seconds, "a number >= 0 (0 = off)"
        )
        _check(self.keep >= 1, "snapshot.keep", self.keep, "an integer >= 1")


@dataclass(frozen=True)
class DeadLetterConfig:
    path: str = "dead_letters.jsonl"
    topic: str = ""
    topic_suffix: str = ".dlq"
    max_message_bytes: int = 1_048_576

    def validate(self) -> None:
        _check(
            self.max_message_bytes >= 4096,
            "dead_letter.max_message_bytes",
            self.max_message_bytes,
            "an integer >= 4096",
        )


@dataclass(frozen=True)
class KafkaConfig:
    bootstrap_servers: str = "127.0.0.1:9092"
    topics: tuple[str, ...] = ("events",)
    group_id: str = "streamlearn"
    poll_timeout_ms: int = 500
    max_poll_records: int = 2000
    max_buffered_batches: int = 4
    client: Mapping[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        _check(len(self.topics) >= 1, "kafka.topics", list(self.topics), "at least one topic")
        _check(self.max_poll_records >= 1, "kafka.max_poll_records", self.max_poll_records, "an integer >= 1")


@dataclass(frozen=True)
class MetricsConfig:
    address: str = "127.0.0.1"
    port: int = 0

    def validate(self) -> None:
        _check(0 <= self.port <= 65535, "metrics.port", self.port, "a port in [0, 65535] (0 = off)")


@dataclass(frozen=True)
class ServingConfig:
    address: str = "127.0.0.1"
    port: int = 0
    refresh_ms: int = 1000
    token: str = ""
    max_body_bytes: int = 1 << 20
    max_candidates: int = 1000
    max_inflight: int = 64
    batch_wait_ms: float = 2.0
    decisions_topic: str = ""
    decisions_path: str = ""

    def validate(self) -> None:
        _check(0 <= self.port <= 65535, "serving.port", self.port, "a port in [0, 65535] (0 = off)")
        _check(self.refresh_ms >= 0, "serving.refresh_ms", self.refresh_ms, "an integer >= 0")
        _check(
            self.max_body_bytes >= 1024, "serving.max_body_bytes", self.max_body_bytes, "an integer >= 1024"
        )
        _check(self.max_candidates >= 1, "serving.max_candidates", self.max_candidates, "an integer >= 1")
        _check(self.max_inflight >= 1, "serving.max_inflight", self.max_inflight, "an integer >= 1")
        _check(
            0 <= self.batch_wait_ms <= 100,
            "serving.batch_wait_ms",
            self.batch_wait_ms,
            "a number in [0, 100]",
        )


@dataclass(frozen=True)
class Config:
    source: SourceConfig = field(default_factory=SourceConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    learners: tuple[LearnerSpec, ...] = (LearnerSpec("ftrl"),)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    snapshot: SnapshotConfig = field(default_factory=SnapshotConfig)
    dead_letter: DeadLetterConfig = field(default_factory=DeadLetterConfig)
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)
    drift: DriftSettings = field(default_factory=DriftSettings)
    join: JoinConfig = field(default_factory=JoinConfig)
    group: GroupConfig = field(default_factory=GroupConfig)
    seed: int = 0

    def validate(self) -> None:
        if self.group.enabled and self.join.enabled:
            raise ConfigError(
                "'group.enabled' and 'join.enabled' cannot both be on: the join's open exposures are "
                "one worker's, so a partition that moves would lose them (docs/scaling.md)"
            )

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self), default=dict))


# ------------------------------------------------------------------------------------ helpers


_check = require


def _one_of(key: str, value: str, allowed: tuple[str, ...]) -> None:
    _check(value in allowed, key, value, "one of " + ", ".join(allowed))


def _unknown_key(prefix: str, key: str, allowed: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
    return ConfigError(f"unknown key '{prefix}{key}'{hint}; allowed: {', '.join(allowed)}")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is bool:
        _check(isinstance(value, bool), key, value, "true or false")
        return value
    if tp is int:
        _check(isinstance(value, int) and not isinstance(value, bool), key, value, "an integer")
        return value
    if tp is float:
        _check(isinstance(value, (int, float)) and not isinstance(value, bool), key, value, "a number")
        return float(value)
    if tp is str:
        _check(isinstance(value, str), key, value, "a string")
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        _check(isinstance(value, (list, tuple)), key, value, "a list")
        inner = args[0]
        return tuple(_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (Mapping, dict) or tp is Mapping:
        _check(isinstance(value, Mapping), key, value, "a table")
        return dict(value)
    return value


def _build(cls, data: Mapping[str, Any], prefix: str):
    if not isinstance(data, Mapping):
        raise ConfigError(f"'{prefix.rstrip('.')}' must be a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise _unknown_key(prefix, key, names)
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, f"{prefix}{key}.")
        elif key == "learners" and cls is Config:
            kwargs[key] = _learners(value)
        else:
            kwargs[key] = _coerce(value, tp, prefix + key)
    obj = cls(**kwargs)
    if hasattr(obj, "validate"):
        obj.validate()
    return obj


def _learners(value: Any) -> tuple[LearnerSpec, ...]:
    _check(isinstance(value, (list, tuple)) and len(value) > 0, "learners", value, "a non-empty list")
    specs = []
    for i, item in enumerate(value):
        if isinstance(item, str):
            specs.append(LearnerSpec(item))
        elif isinstance(item, Mapping):
            extra = set(item) - {"kind", "name", "params"}
            if extra:
                raise _unknown_key(f"learners[{i}].", sorted(extra)[0], ["kind", "name", "params"])
            _check(
                isinstance(item.get("kind"), str), f"learners[{i}].kind", item.get("kind"), "a learner kind"
            )
            params = item.get("params", {})
            _check(isinstance(params, Mapping), f"learners[{i}].params", params, "a table")
            specs.append(LearnerSpec(item["kind"], str(item.get("name", "")), dict(params)))
        else:
            raise ConfigError(
                f"invalid value {item!r} for 'learners[{i}]': expected a kind string or a table"
            )
    labels = [s.label for s in specs]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise ConfigError(
            f"learner names must be unique; repeated: {', '.join(dupes)} (set 'name' to tell them apart)"
        )
    return tuple(specs)


def _deep_merge(base: dict, extra: Mapping) -> dict:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _deep_merge(dict(out[k]), v)
        else:
            out[k] = v
    return out


def _parse_env_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _from_environ(environ: Mapping[str, str]) -> dict:
    out: dict = {}
    for name, text in environ.items():
        if not name.startswith("STREAMLEARN_") or name.startswith("STREAMLEARN_TEST"):
            continue
        path = name[len("STREAMLEARN_") :].lower().split("__")
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = _parse_env_value(text)
    return out


def load_config(
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Build the validated configuration (see the module docstring for precedence)."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"configuration file not found: {p}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"configuration file {p} is not valid TOML: {exc}") from None
    data = _deep_merge(data, _from_environ(os.environ if environ is None else environ))
    data = _deep_merge(data, overrides or {})
    return _build(Config, data, "")


def config_hash(config: Config) -> str:
    """sha256 of the model-relevant configuration (recorded in snapshots to catch mismatches)."""
    data = config.to_dict()
    relevant = {k: v for k, v in data.items() if k in ("events", "features", "learners", "seed")}
    if config.join.enabled:  # only then: snapshots written before the join existed keep their hash
        relevant["join"] = data["join"]
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()
