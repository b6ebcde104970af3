"""``streamlearn pretrain``: train the neural ranker offline on logged events and write a checkpoint.

The ``neural`` learner then warm-starts from it (``params.checkpoint = "CKPT"``) and keeps
fine-tuning online. The model's configuration is the first ``neural`` learner of ``--config``
(its params, without ``checkpoint``), or the defaults.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

from consumers.commands.common import positive_int, write_json
from pipeline.config import Config, load_config
from pipeline.errors import ConfigError

if TYPE_CHECKING:  # imported where used: `--help` needs neither pyarrow nor torch
    from consumers.file_source import FileSource
    from pipeline.features import FeatureBatch

__all__ = ["register", "run"]


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {value}")
    return value


def _at_least_one(text: str) -> int:
    value = positive_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help="train the neural ranker offline on event files and write a warm-start checkpoint",
        description="Train the neural ranker on logged events (JSONL, Parquet, CSV): the log is ordered by "
        "event time, its last --val-fraction validates, training stops after --patience epochs without a "
        "better validation logloss and keeps the best epoch. The checkpoint holds the weights, the id "
        "vocabularies and the feature slots; point a 'neural' learner's 'checkpoint' param at it.",
    )
    p.add_argument("paths", nargs="+", metavar="LOG", help="event files, directories or glob patterns")
    p.add_argument("--out", required=True, metavar="CKPT", help="checkpoint file to write")
    p.add_argument(
        "--config", metavar="FILE", help="TOML configuration (its first 'neural' learner's params)"
    )
    p.add_argument("--epochs", type=_at_least_one, default=10, metavar="N", help="most epochs (default 10)")
    p.add_argument(
        "--batch-size", type=_at_least_one, default=1024, metavar="N", help="events per step (default 1024)"
    )
    p.add_argument(
        "--val-fraction",
        type=_fraction,
        default=0.1,
        metavar="F",
        help="latest share of the log used for validation (default 0.1; 0 = none, train all epochs)",
    )
    p.add_argument(
        "--patience",
        type=_at_least_one,
        default=2,
        metavar="N",
        help="epochs without improvement (default 2)",
    )
    p.add_argument(
        "--format", choices=("auto", "jsonl", "parquet", "csv"), help="input format (default: suffix)"
    )
    p.add_argument("--summary-json", metavar="FILE", help="also write the training report as JSON")
    p.set_defaults(func=run)


def _neural_params(config: Config) -> dict:
    for spec in config.learners:
        if spec.kind == "neural":
            return {k: v for k, v in spec.params.items() if k != "checkpoint"}
    return {}


def _feature_batches(source: FileSource, config: Config, dead: list[int]) -> Iterator[FeatureBatch]:
    from pipeline.events import EventRules, decode_arrow, decode_json
    from pipeline.features import FeatureSpec, Featurizer

    ev = config.events
    rules = EventRules.from_config(ev)
    fs = config.features
    featurizer = Featurizer(FeatureSpec(fs.crosses, fs.standardize, fs.exclude))
    for raw in source:
        events, bad = (
            decode_arrow(raw.arrow, rules) if raw.arrow is not None else decode_json(raw.values, rules)
        )
        dead[0] += len(bad)
        if len(events):
            yield featurizer.transform_and_update(events)


def run(args: argparse.Namespace) -> int:
    from consumers.file_source import FileSource
    from pipeline.learners.neural import NeuralRanker, pretrain

    config = load_config(args.config)
    source = FileSource(args.paths, config.source.batch_size, args.format or config.source.format)
    try:
        learner = NeuralRanker(**{"seed": config.seed, **_neural_params(config)})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"neural learner: {exc}") from exc
    dead = [0]

    def show(row: dict) -> None:
        print(
            f"epoch {row['epoch']:>3}: train logloss {row['train_logloss']:.4f}  val AUC {row['val_auc']:.4f}  "
            f"val logloss {row['val_logloss']:.4f}  ({row['seconds']:.1f} s)",
            file=sys.stderr,
        )

    try:
        report = pretrain(
            learner,
            _feature_batches(source, config, dead),
            epochs=args.epochs,
            batch_size=args.batch_size,
            val_fraction=args.val_fraction,
            patience=args.patience,
            on_epoch=show,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    info = {"report": report.to_json(), "inputs": source.files, "dead_letters": dead[0]}
    path = learner.save_checkpoint(args.out, info)
    print(
        f"trained on {report.n_train:,} events (validated on {report.n_val:,}; {dead[0]:,} invalid skipped), "
        f"{report.epochs_run} epochs, best epoch {report.best_epoch}; "
        f"{learner.n_parameters():,} parameters\ncheckpoint written to {path}"
    )
    if args.summary_json:
        write_json(args.summary_json, {**info, "checkpoint": str(path), "parameters": learner.n_parameters()})
    return 0
