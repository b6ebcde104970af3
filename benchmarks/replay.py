"""Replay throughput: decode, decode + features, and full prequential replay with ``ftrl``,
beside a plain river ``progressive_val_score`` loop (StandardScaler | LogisticRegression over the
same events as dicts) measured in the same run.

Usage: ``python benchmarks/replay.py [--events N] [--river-events N]``; writes
``benchmarks/results/replay.json`` and prints a markdown table.

The whole-process stage (``--process-only`` runs just it) times ``streamlearn replay --learner ftrl``
as a subprocess, startup included, over a ``streamlearn simulate`` Parquet file of
``--process-events`` events (CPU seconds from ``RUSAGE_CHILDREN``, user + sys), beside a plain river
loop in this process: ``learn_one`` of the river baseline above (StandardScaler | LogisticRegression:
ftrl standardises its numeric features too) over the same events as dicts built before timing, CPU
seconds by ``process_time``; a bare LogisticRegression (unscaled) is shown beside it.
Best of ``--repeat`` runs each; writes ``benchmarks/results/replay_process.json``. The project's
modules are byte-compiled first, as an installed package has them (with
``PYTHONDONTWRITEBYTECODE`` set, an editable install would otherwise recompile them at every start).
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import compile_project, peak_rss_mb, percentiles, save, table

from consumers.file_source import FileSource
from consumers.stack import build_stack
from pipeline.config import load_config
from pipeline.events import EventRules, decode_arrow, decode_json
from pipeline.features import Featurizer
from pipeline.simulate import Simulator, to_json_lines


def _write_inputs(n: int, tmp: Path) -> tuple[Path, Path]:
    # an interaction log without the candidates field, as the README's figures were measured
    # (10 candidates per event cost about a third of the JSON decode: see the README's "Events")
    sim = Simulator(seed=0, log_candidates=False)
    batches = list(sim.batches(n))
    jsonl = tmp / "stream.jsonl"
    with open(jsonl, "wb") as fh:
        for b in batches:
            fh.write(b"\n".join(to_json_lines(b)) + b"\n")
    parquet = tmp / "stream.parquet"
    import pyarrow as pa

    pq.write_table(pa.Table.from_batches(batches), parquet, row_group_size=100_000)
    return jsonl, parquet


def _load_batches(path: Path, batch_size: int) -> list:
    return list(FileSource([str(path)], batch_size=batch_size))


def _time_stage(raw_batches, stage: str, rules: EventRules) -> dict:
    featurizer = Featurizer()
    runner = build_stack(load_config(environ={})).runner if stage == "replay" else None
    per_batch = []
    n = 0
    start = time.perf_counter()
    for raw in raw_batches:
        t0 = time.perf_counter()
        if runner is not None:
            runner.process(raw)
        else:
            events, _ = (
                decode_arrow(raw.arrow, rules) if raw.arrow is not None else decode_json(raw.values, rules)
            )
            if stage == "features":
                featurizer.transform_and_update(events)
        per_batch.append(time.perf_counter() - t0)
        n += len(raw)
    seconds = time.perf_counter() - start
    out = {"events": n, "seconds": seconds, "events_per_s": n / seconds, **percentiles(per_batch)}
    if runner is not None:
        out["auc"] = runner.summary()["learners"]["ftrl"]["auc"]
    return out


def _river_baseline(parquet: Path, n: int) -> dict:
    from river import compose, evaluate, linear_model, metrics, preprocessing

    dataset = _river_dicts(parquet)[:n]
    model = compose.Pipeline(preprocessing.StandardScaler(), linear_model.LogisticRegression())
    start = time.perf_counter()
    metric = evaluate.progressive_val_score(dataset, model, metrics.ROCAUC())
    seconds = time.perf_counter() - start
    return {"events": n, "seconds": seconds, "events_per_s": n / seconds, "auc": metric.get()}


def _river_dicts(parquet: Path) -> list[tuple[dict, bool]]:
    """The river baseline's feature dicts, for every event of ``parquet``."""
    table = pq.read_table(parquet, columns=["user_id", "item_id", "label", "features"])
    users, items = table.column("user_id").to_pylist(), table.column("item_id").to_pylist()
    labels, feats = table.column("label").to_pylist(), table.column("features").to_pylist()
    out = []
    for u, i, y, f in zip(users, items, labels, feats, strict=True):
        f = dict(f) if isinstance(f, list) else f
        x = {
            f"user_id={u}": 1.0,
            f"item_id={i}": 1.0,
            f"device={f['device']}": 1.0,
            f"category={f['category']}": 1.0,
            "hour": float(f["hour"]),
            "price": float(f["price"]),
        }
        out.append((x, y > 0))
    return out


def _cli() -> list[str]:
    script = Path(sys.executable).parent / "streamlearn"
    return [str(script)] if script.exists() else [sys.executable, "-m", "consumers.cli"]


def _child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def whole_process(n: int, repeat: int, tmp: Path) -> dict:
    """``streamlearn replay --learner ftrl`` as a whole process vs a plain river learning loop."""
    from river import compose, linear_model, preprocessing

    compile_project()
    parquet = tmp / "process.parquet"
    subprocess.run(
        [*_cli(), "simulate", "--events", str(n), "--out", str(parquet)],
        check=True,
        stderr=subprocess.DEVNULL,
    )
    runs = []
    for _ in range(repeat):
        cpu0, t0 = _child_cpu(), time.perf_counter()
        subprocess.run(
            [*_cli(), "replay", str(parquet), "--learner", "ftrl", "--dead-letter", str(tmp / "dl.jsonl")],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        runs.append({"cpu_s": _child_cpu() - cpu0, "wall_s": time.perf_counter() - t0})
        print(f"streamlearn replay (process) {runs[-1]['cpu_s']:.2f} CPU-s", file=sys.stderr)
    data = _river_dicts(parquet)
    river: dict[str, list[dict]] = {"scaled": [], "bare": []}
    for _ in range(repeat):
        for kind in river:
            model = (
                compose.Pipeline(preprocessing.StandardScaler(), linear_model.LogisticRegression())
                if kind == "scaled"
                else linear_model.LogisticRegression()
            )
            learn = model.learn_one
            c0, t0 = time.process_time(), time.perf_counter()
            for x, y in data:
                learn(x, y)
            river[kind].append({"cpu_s": time.process_time() - c0, "wall_s": time.perf_counter() - t0})
            print(f"river {kind} learn_one {river[kind][-1]['cpu_s']:.2f} CPU-s", file=sys.stderr)
    best = min(runs, key=lambda r: r["cpu_s"])
    best_river = min(river["scaled"], key=lambda r: r["cpu_s"])
    best_bare = min(river["bare"], key=lambda r: r["cpu_s"])
    rows = [
        {
            "case": "streamlearn replay --learner ftrl (whole process)",
            "events": n,
            **best,
            "events_per_cpu_s": n / best["cpu_s"],
        },
        {
            "case": "river StandardScaler|LogisticRegression learn_one loop (dicts prebuilt)",
            "events": n,
            **best_river,
            "events_per_cpu_s": n / best_river["cpu_s"],
        },
        {
            "case": "river LogisticRegression learn_one loop, unscaled (dicts prebuilt)",
            "events": n,
            **best_bare,
            "events_per_cpu_s": n / best_bare["cpu_s"],
        },
    ]
    ratio = rows[0]["events_per_cpu_s"] / rows[1]["events_per_cpu_s"]
    return {"events": n, "repeat": repeat, "rows": rows, "runs": runs, "river_runs": river, "ratio": ratio}


def _report_process(res: dict) -> None:
    path = save("replay_process", res)
    cols = [("case", "case"), ("cpu_s", "CPU s"), ("wall_s", "wall s"), ("events_per_cpu_s", "events/CPU-s")]
    print(table(res["rows"], cols))
    print(
        f"\nwhole-process replay vs river loop: {res['ratio']:.2f}x the events per CPU-second "
        f"(target 3x; best of {res['repeat']})"
    )
    print(f"saved {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--river-events", type=int, default=60_000)
    parser.add_argument("--batch-size", type=int, default=2000)
    parser.add_argument("--process-events", type=int, default=500_000)
    parser.add_argument("--repeat", type=int, default=5, help="whole-process stage: best of N")
    parser.add_argument("--process-only", action="store_true", help="run the whole-process stage only")
    args = parser.parse_args(argv)
    if args.process_only:
        with tempfile.TemporaryDirectory() as tmp:
            _report_process(whole_process(args.process_events, args.repeat, Path(tmp)))
        return 0
    rules = EventRules()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        jsonl, parquet = _write_inputs(args.events, Path(tmp))
        for fmt, path in (("parquet", parquet), ("jsonl", jsonl)):
            t0 = time.perf_counter()
            raw = _load_batches(path, args.batch_size)
            read_s = time.perf_counter() - t0
            rows.append(
                {
                    "case": f"read {fmt} (file -> raw batches)",
                    "events_per_s": args.events / read_s,
                    "events": args.events,
                }
            )
            for stage, label in (
                ("decode", "decode + validate"),
                ("features", "decode + validate + features"),
                ("replay", "full replay, ftrl"),
            ):
                res = _time_stage(raw, stage, rules)
                rows.append({"case": f"{label} ({fmt})", **res})
                print(f"{rows[-1]['case']:<45} {res['events_per_s']:>12,.0f} ev/s", file=sys.stderr)
        base = _river_baseline(parquet, min(args.river_events, args.events))
        rows.append(
            {"case": "baseline: river progressive_val_score (StandardScaler|LogisticRegression)", **base}
        )
        print(f"{rows[-1]['case']:<45} {base['events_per_s']:>12,.0f} ev/s", file=sys.stderr)
    ftrl = next(r for r in rows if r["case"] == "full replay, ftrl (parquet)")
    ftrl_json = next(r for r in rows if r["case"] == "full replay, ftrl (jsonl)")
    speedup = {
        "parquet": ftrl["events_per_s"] / base["events_per_s"],
        "jsonl": ftrl_json["events_per_s"] / base["events_per_s"],
    }
    path = save(
        "replay",
        {
            "events": args.events,
            "batch_size": args.batch_size,
            "rows": rows,
            "ftrl_vs_river_speedup": speedup,
            "peak_rss_mb": peak_rss_mb(),
        },
    )
    print(
        table(
            rows,
            [
                ("case", "case"),
                ("events_per_s", "events/s"),
                ("p50_ms", "p50 batch ms"),
                ("p99_ms", "p99 batch ms"),
                ("auc", "AUC"),
            ],
        )
    )
    print(
        f"\nftrl replay vs river loop: {speedup['parquet']:.1f}x (Parquet), {speedup['jsonl']:.1f}x (JSONL); peak RSS {peak_rss_mb():.0f} MB"
    )
    print(f"saved {path}")
    with tempfile.TemporaryDirectory() as tmp:
        _report_process(whole_process(args.process_events, args.repeat, Path(tmp)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
