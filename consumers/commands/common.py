"""Arguments and wiring shared by the commands that run the pipeline."""

from __future__ import annotations

import argparse
import json
from typing import Any

from pipeline.config import Config, load_config

__all__ = ["add_config_arguments", "config_from_args", "positive_int", "write_json"]


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", metavar="FILE", help="TOML configuration file (STREAMLEARN_* variables override it)"
    )
    parser.add_argument(
        "--learner",
        action="append",
        metavar="KIND",
        help="learner to run, repeatable: ftrl, river:<module.Class>, ... (overrides the configured learners)",
    )
    parser.add_argument("--batch-size", type=positive_int, metavar="N", help="events per micro-batch")


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
