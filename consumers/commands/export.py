"""``streamlearn export``: the neural ranker of a snapshot as a TorchScript file.

Example::

    streamlearn export --state-dir state/ --learner neural --out ranker.pt

The file scores from hashed inputs with the vocabularies inside it
(:mod:`pipeline.learners.neural.export` says which inputs and how to build them); its scores match
the snapshot's model to 1e-5 (tested). Load it with ``torch.jit.load`` (any libtorch, no
streamlearn needed) or :func:`pipeline.learners.neural.export.load_exported`.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.errors import ConfigError

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="write a snapshot's neural ranker (with its vocabularies) as a TorchScript file",
        description="Export the neural ranker of the newest valid snapshot of a state directory to TorchScript.",
    )
    p.add_argument("--state-dir", required=True, metavar="DIR", help="the state directory to read")
    p.add_argument(
        "--learner", default="neural", metavar="NAME", help="the neural learner's name (default: neural)"
    )
    p.add_argument("--out", required=True, metavar="FILE", help="where to write the TorchScript file")
    p.add_argument(
        "--config", metavar="FILE", help="TOML configuration, only for snapshots that do not record theirs"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from consumers.commands.serve import view_from_snapshot
    from pipeline.config import load_config
    from pipeline.learners.neural import NeuralRanker
    from pipeline.learners.neural.export import export_ranker
    from state.snapshot import SnapshotStore

    found = SnapshotStore(args.state_dir).latest_valid()
    if found is None:
        raise ConfigError(f"no valid snapshot in {args.state_dir}")
    manifest, bundles = found
    view = view_from_snapshot(manifest, bundles, load_config(args.config) if args.config else None)
    learner = view.learners.get(args.learner)
    if not isinstance(learner, NeuralRanker):
        neural = [n for n, lr in view.learners.items() if isinstance(lr, NeuralRanker)]
        raise ConfigError(
            f"--learner {args.learner!r} is not a neural ranker of snapshot {manifest['seq']:08d}; "
            f"neural rankers there: {', '.join(neural) or 'none'}"
        )
    meta = export_ranker(learner, args.out, version=view.version.to_dict(), calibration=view.calibration)
    print(
        f"export: {args.learner} of snapshot {manifest['seq']:08d} ({manifest['events_applied']:,} events) "
        f"written to {args.out}; inputs: {', '.join(meta['inputs'])}",
        file=sys.stderr,
    )
    return 0
