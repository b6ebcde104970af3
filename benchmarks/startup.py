"""CLI startup: wall time of ``streamlearn --help``, of every ``streamlearn COMMAND --help`` and of
``streamlearn state list --state-dir DIR``, beside ``python -c "import argparse"`` (a bare
interpreter that has argparse) measured in the same run with the same interpreter.

Target: every case within 8x of the bare interpreter. Each case runs ``--repeat`` times (after one
warm-up run, so that every case finds the page cache warm; the modules are byte-compiled first, as
an installed package has them); the table shows the median and the best wall time, and the
median's ratio to the baseline's median.

Usage: ``python benchmarks/startup.py [--repeat N]``; writes ``benchmarks/results/startup.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import compile_project, save, table

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = (
    "replay",
    "validate",
    "simulate",
    "state",
    "evaluate",
    "pretrain",
    "worker",
    "produce",
    "serve",
    "export",
)


def _cli() -> list[str]:
    """The installed console script beside this interpreter, else ``python -m consumers.cli``."""
    script = Path(sys.executable).parent / "streamlearn"
    return [str(script)] if script.exists() else [sys.executable, "-m", "consumers.cli"]


def _wall(cmd: list[str], repeat: int) -> list[float]:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)  # warm-up
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
        samples.append(time.perf_counter() - t0)
    return samples


def _state_dir(tmp: Path) -> Path:
    """A state directory with a few snapshots, written by a short replay."""
    state = tmp / "state"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(
        [
            *_cli(),
            *("replay", str(ROOT / "examples" / "stream.jsonl.gz"), "--learner", "ftrl", "--limit", "20000"),
            *("--state-dir", str(state), "--snapshot-every", "5000", "--no-progress"),
            *("--dead-letter", str(tmp / "dead_letters.jsonl")),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        cwd=ROOT,
        env=env,
    )
    return state


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args(argv)
    cli = _cli()
    compile_project()
    with tempfile.TemporaryDirectory() as tmp:
        state = _state_dir(Path(tmp))
        cases = [("baseline: python -c 'import argparse'", [sys.executable, "-c", "import argparse"])]
        cases.append(("streamlearn --help", [*cli, "--help"]))
        cases += [(f"streamlearn {c} --help", [*cli, c, "--help"]) for c in COMMANDS]
        cases.append(
            ("streamlearn state list --state-dir DIR", [*cli, "state", "list", "--state-dir", str(state)])
        )
        rows = []
        for name, cmd in cases:
            samples = _wall(cmd, args.repeat)
            rows.append(
                {
                    "case": name,
                    "median_ms": statistics.median(samples) * 1000,
                    "best_ms": min(samples) * 1000,
                    "samples_ms": [s * 1000 for s in samples],
                }
            )
            print(f"{name:<45} {rows[-1]['median_ms']:8.1f} ms", file=sys.stderr)
    base = rows[0]["median_ms"]
    for r in rows:
        r["x_baseline"] = r["median_ms"] / base
    worst = max(rows[1:], key=lambda r: r["x_baseline"])
    path = save(
        "startup",
        {"repeat": args.repeat, "rows": rows, "worst": worst["case"], "worst_x": worst["x_baseline"]},
    )
    print(
        table(
            rows,
            [
                ("case", "case"),
                ("median_ms", "median ms"),
                ("best_ms", "best ms"),
                ("x_baseline", "x baseline"),
            ],
        )
    )
    print(f"\nslowest: {worst['case']} at {worst['x_baseline']:.1f}x the bare interpreter (target 8x)")
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
