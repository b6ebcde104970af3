"""The CLI answers at once: building the parser, ``state list`` and an ``ftrl`` replay import no heavy
package they do not use (each check runs in a fresh interpreter, so the test process's own imports
do not count). Speed itself is measured by ``benchmarks/startup.py``, not asserted here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
HEAVY = {"torch", "river", "sklearn", "pyarrow", "duckdb", "kafka", "pandas", "scipy"}


def _loaded(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; it ends by printing a JSON object on its last line."""
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True, timeout=120
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _heavy(roots: set[str]) -> str:
    return f"sorted(m for m in sys.modules if m.split('.')[0] in {sorted(roots)!r})"


def test_building_the_parser_imports_no_heavy_package():
    # numpy too: --help and COMMAND --help import neither numpy nor anything built on it
    got = _loaded(
        "import consumers.cli, sys, json; consumers.cli.build_parser(); "
        f"print(json.dumps({{'heavy': {_heavy(HEAVY | {'numpy'})}}}))"
    )
    assert got["heavy"] == []


def test_state_list_imports_no_heavy_package(tmp_path):
    from pipeline.learners.base import StateBundle
    from state.snapshot import SnapshotStore

    store = SnapshotStore(tmp_path / "state")
    store.prepare()
    store.write(
        {"ftrl": StateBundle(arrays={"z": np.zeros(3)}, meta={"bits": 2})},
        positions={"f.jsonl": 10},
        events_applied=10,
        config_hash="cafe",
    )
    got = _loaded(
        "import contextlib, io, json, sys\n"
        "from consumers.cli import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        f"    rc = main(['state', 'list', '--state-dir', {str(tmp_path / 'state')!r}, '--format', 'json'])\n"
        f"print(json.dumps({{'rc': rc, 'out': out.getvalue(), 'heavy': {_heavy(HEAVY)}}}))"
    )
    assert got["rc"] == 0
    assert [(r["seq"], r["events_applied"], r["status"]) for r in json.loads(got["out"])] == [(1, 10, "ok")]
    assert got["heavy"] == []  # numpy is allowed: the store's codec reads .npy files


def test_ftrl_replay_imports_neither_torch_nor_river_drift_nor_scipy(tmp_path):
    # river's drift package imports its datasets, scikit-learn and scipy (about a second); the
    # drift monitor's ADWIN needs river's compiled window only (pipeline.drift.detectors)
    got = _loaded(
        "import contextlib, io, json, sys\n"
        "from consumers.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    rc = main(['replay', 'examples/stream.jsonl.gz', '--learner', 'ftrl', '--limit', '4000',\n"
        f"               '--no-progress', '--dead-letter', {str(tmp_path / 'dl.jsonl')!r}])\n"
        f"print(json.dumps({{'rc': rc, 'heavy': {_heavy({'torch', 'sklearn', 'scipy', 'pandas', 'duckdb', 'kafka'})},\n"
        "                  'river_drift': 'river.drift' in sys.modules, 'adwin': 'river.drift.adwin' in sys.modules}))"
    )
    assert got == {"rc": 0, "heavy": [], "river_drift": False, "adwin": True}


def test_the_evaluate_help_names_every_bandit_kind():
    from consumers.commands.evaluate import POLICY_KINDS
    from pipeline.learners.bandits import POLICIES

    assert list(POLICY_KINDS) == list(POLICIES)
