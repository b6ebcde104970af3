"""Replay throughput: decode, decode + features, and full prequential replay with ``ftrl``,
beside a plain river ``progressive_val_score`` loop (StandardScaler | LogisticRegression over the
same events as dicts) measured in the same run.

Usage: ``python benchmarks/replay.py [--events N] [--river-events N]``; writes
``benchmarks/results/replay.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import peak_rss_mb, percentiles, save, table

from consumers.file_source import FileSource
from pipeline.config import load_config
from pipeline.events import EventRules, decode_arrow, decode_json
from pipeline.features import Featurizer
from pipeline.runner import Runner
from pipeline.simulate import Simulator, to_json_lines


def _write_inputs(n: int, tmp: Path) -> tuple[Path, Path]:
    sim = Simulator(seed=0)
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
    runner = Runner.from_config(load_config(environ={})) if stage == "replay" else None
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
                featurizer.transform(events)
        per_batch.append(time.perf_counter() - t0)
        n += len(raw)
    seconds = time.perf_counter() - start
    out = {"events": n, "seconds": seconds, "events_per_s": n / seconds, **percentiles(per_batch)}
    if runner is not None:
        out["auc"] = runner.summary()["learners"]["ftrl"]["auc"]
    return out


def _river_baseline(parquet: Path, n: int) -> dict:
    from river import compose, evaluate, linear_model, metrics, preprocessing

    rows = pq.read_table(parquet).slice(0, n).to_pylist()
    dataset = []
    for r in rows:
        f = r["features"]
        x = {
            f"user_id={r['user_id']}": 1.0,
            f"item_id={r['item_id']}": 1.0,
            f"device={f['device']}": 1.0,
            f"category={f['category']}": 1.0,
            "hour": float(f["hour"]),
            "price": float(f["price"]),
        }
        dataset.append((x, r["label"] > 0))
    model = compose.Pipeline(preprocessing.StandardScaler(), linear_model.LogisticRegression())
    start = time.perf_counter()
    metric = evaluate.progressive_val_score(dataset, model, metrics.ROCAUC())
    seconds = time.perf_counter() - start
    return {"events": n, "seconds": seconds, "events_per_s": n / seconds, "auc": metric.get()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--river-events", type=int, default=60_000)
    parser.add_argument("--batch-size", type=int, default=2000)
    args = parser.parse_args(argv)
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
