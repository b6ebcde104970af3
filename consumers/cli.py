"""The ``streamlearn`` command.

Exit codes: 0 success (also when records were dead-lettered), 1 unexpected failure, 2 usage or
configuration error (the message names the bad key or argument), 130 interrupted (after a final
snapshot where one is configured).

Before numpy loads, the command caps OpenBLAS at one thread unless ``OPENBLAS_NUM_THREADS`` is
set: micro-batch matrices are small, and OpenBLAS's pool of spinning threads cost a tenth of a
CPU-second at every start and contend with the stream's own thread (torch keeps its own pool).
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before anything imports numpy

import argparse
import importlib
import logging
import sys

from pipeline.errors import ConfigError, StreamlearnError

__all__ = ["main"]

# Each module exposes register(subparsers); the command's handler returns an exit code.
COMMANDS = (
    "consumers.commands.replay",
    "consumers.commands.validate",
    "consumers.commands.simulate",
    "consumers.commands.state",
    "consumers.commands.evaluate",
    "consumers.commands.pretrain",
    "consumers.commands.worker",
    "consumers.commands.produce",
    "consumers.commands.serve",
    "consumers.commands.export",
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse exits 2 on usage errors; keep its message
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="streamlearn", description="Keep recommendation models fresh from an interaction stream."
    )
    parser.add_argument("--log-level", default="WARNING", help="logging level (default: WARNING)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for module in COMMANDS:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name == module:
                continue  # a command whose module is not installed in this build
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"streamlearn {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"streamlearn {args.command}: interrupted", file=sys.stderr)
        return 130
    except StreamlearnError as exc:
        print(f"streamlearn {args.command}: failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
