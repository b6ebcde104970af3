"""Arguments and wiring shared by the commands that run the pipeline."""

from __future__ import annotations

import argparse
import json
from typing import Any

from pipeline.config import Config, load_config

__all__ = [
    "add_config_arguments",
    "config_from_args",
    "learner_option",
    "positive_float",
    "positive_int",
    "write_json",
]


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", metavar="FILE", help="TOML configuration file (STREAMLEARN_* variables override it)"
    )
    parser.add_argument(
        "--learner",
        action="append",
        type=learner_option,
        metavar="KIND[:key=value,...]",
        help=(
            "learner to run, repeatable (overrides the configured learners): ftrl, linucb, "
            "river:<module.Class>, ...; parameters as TOML values after a colon, e.g. "
            "'ftrl:alpha=0.1,bits=18', 'neural:hidden=[64,32]', 'linucb:name=\"ucb\",alpha=0.3'"
        ),
    )
    parser.add_argument("--batch-size", type=positive_int, metavar="N", help="events per micro-batch")


def learner_option(text: str) -> dict[str, Any]:
    """``KIND[:key=value,...]`` as a ``[[learners]]`` table; values are TOML (bare words are strings).

    The parameters are the last ``:``-separated part when it holds ``=``, so ``river:`` kinds work
    with and without them. ``name`` sets the learner's name.

    >>> learner_option("ftrl:alpha=0.1,bits=18")
    {'kind': 'ftrl', 'params': {'alpha': 0.1, 'bits': 18}}
    >>> learner_option("river:linear_model.LogisticRegression:l2=0.01,name=lr")
    {'kind': 'river:linear_model.LogisticRegression', 'params': {'l2': 0.01}, 'name': 'lr'}
    >>> learner_option("neural:hidden=[64, 32]")
    {'kind': 'neural', 'params': {'hidden': [64, 32]}}
    """
    kind, sep, tail = text.rpartition(":")
    if not sep or "=" not in tail:
        return {"kind": text}
    out: dict[str, Any] = {"kind": kind, "params": {}}
    for item in _split_top_level(tail):
        key, eq, raw = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise argparse.ArgumentTypeError(f"{text!r}: expected key=value, got {item!r}")
        value = _toml_value(raw.strip())
        if key == "name":
            out["name"] = str(value)
        else:
            out["params"][key] = value
    return out


def _split_top_level(text: str) -> list[str]:
    """``text`` split at commas outside brackets, braces and quotes."""
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p for p in parts if p.strip()]


def _toml_value(raw: str) -> Any:
    import tomllib

    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw  # a bare word: a string, as in "base=ftrl"


def config_from_args(args: argparse.Namespace, extra: dict[str, Any] | None = None) -> Config:
    overrides: dict[str, Any] = dict(extra or {})
    if getattr(args, "learner", None):
        overrides["learners"] = list(args.learner)
    if getattr(args, "batch_size", None) is not None:
        overrides.setdefault("source", {})["batch_size"] = args.batch_size
    return load_config(getattr(args, "config", None), overrides=overrides)


def write_json(path: str, payload: dict) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(payload, fh, indent=2, default=float, allow_nan=True)
        fh.write("\n")
