"""Helpers shared by the benchmark scripts: timing, machine facts, result files."""

from __future__ import annotations

import json
import os
import platform
import resource
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = RESULTS.parent.parent


def compile_project() -> None:
    """Byte-compile the project's packages, as an installed package has them.

    With ``PYTHONDONTWRITEBYTECODE`` set (as on the development machine), an editable install
    would otherwise recompile every module at each start and the process timings would show it.
    """
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "compileall", "-q", "pipeline", "consumers", "state"]
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)


def machine() -> dict:
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def percentiles(samples_s: list[float]) -> dict:
    arr = np.asarray(samples_s) * 1000.0
    return (
        {"p50_ms": float(np.percentile(arr, 50)), "p99_ms": float(np.percentile(arr, 99))} if len(arr) else {}
    )


def save(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"machine": machine(), **payload}
    path.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    return path


def table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """A markdown table; ``columns`` are (key, header) pairs."""
    head = "| " + " | ".join(h for _, h in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = []
    for r in rows:
        cells = []
        for key, _ in columns:
            v = r.get(key, "")
            cells.append(
                f"{v:,.0f}"
                if isinstance(v, float) and abs(v) >= 100
                else (f"{v:.3f}" if isinstance(v, float) else str(v))
            )
        body.append("| " + " | ".join(cells) + " |")
    return "\n".join([head, sep, *body])
