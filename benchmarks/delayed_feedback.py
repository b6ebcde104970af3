"""Delayed feedback: what each join strategy costs in accuracy and freshness, and what the join costs.

The simulator writes exposures (label 0) and click records later by a known delay
(``feedback = "delayed"``), with the default drift schedule, so that freshness matters. Every run
goes through :func:`consumers.stack.build_stack` with its own ``[join]``:

* ``oracle``: the same exposures with their eventual clicks already on them (the joined log of
  the same seed), learned at once: the bound no strategy can pass;
* ``wait`` with three attribution windows: learned when the window closes, with the label it has;
* ``fake_negative`` (FNW) and ``es_dfm`` (wait ``--elapsed`` seconds): learned before the outcome.

Each exposure is scored when it arrives (before its batch is learned); the benchmark scores those
predictions against the simulator's truth (``clicked``: the eventual click, whatever its delay),
over every exposure (one exposure 30 days after the log makes every open one final at the end).
Freshness is how far the stream had moved on in event time when an exposure first changed the
model: it includes the micro-batch's own span (``--batch`` records, about 25 s of this log). Throughput: the same delayed log replayed with the join (``fake_negative``)
beside the join-free replay (every record learned as it is), best of ``--repeat`` each, same run.

Usage: ``python benchmarks/delayed_feedback.py [--events N] [--delays exponential,heavy_tailed]``;
writes ``benchmarks/results/delayed_feedback.json`` and ``.png`` and prints markdown tables.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, peak_rss_mb, save, table

from consumers.stack import build_stack
from pipeline.config import load_config
from pipeline.evaluation import auc, calibration_ratio, logloss
from pipeline.hashing import hash_strings
from pipeline.runner import RawBatch
from pipeline.simulate import Simulator
from pipeline.simulation import SimConfig, default_drifts

TRUTH = ("p_click", "p_best", "clicked", "delay_ms")


def _log(n: int, delay: str, feedback: str, seed: int) -> list[pa.RecordBatch]:
    config = SimConfig(
        seed=seed, feedback=feedback, delay=delay, drifts=default_drifts(n), log_candidates=False
    )
    return list(Simulator(config).batches(n, chunk_size=2000, include_truth=True))


def _truth(batches: list[pa.RecordBatch]) -> tuple[np.ndarray, np.ndarray]:
    """Hashed exposure ids and their eventual clicks (0/1), from the delayed log's truth columns."""
    ids, clicked = [], []
    for b in batches:
        c = b.column("clicked")
        keep = c.is_valid()
        ids.append(hash_strings(b.column("event_id").filter(keep), "event_id"))
        clicked.append(c.filter(keep).to_numpy(zero_copy_only=False).astype(np.float64))
    return np.concatenate(ids), np.concatenate(clicked)


def _strip(batch: pa.RecordBatch) -> pa.RecordBatch:
    return batch.drop_columns([c for c in TRUTH if c in batch.schema.names])


def _sentinel(batches: list[pa.RecordBatch]) -> pa.RecordBatch:
    """One exposure 30 days after the log: the watermark passes every window, so every exposure of
    every run is final (scored with its exposure-time prediction, whatever the window)."""
    last = _strip(batches[-1]).slice(batches[-1].num_rows - 1, 1)
    ts = pa.array([max(int(pc.max(b.column("ts")).as_py()) for b in batches) + 30 * 86_400_000])
    last = last.set_column(last.schema.get_field_index("ts"), "ts", ts)
    for name, value in (("event_id", "sentinel"), ("request_id", "sentinel"), ("event_type", "impression")):
        last = last.set_column(last.schema.get_field_index(name), name, pa.array([value]))
    return last


def _rebatch(batches: list[pa.RecordBatch], size: int) -> list[pa.RecordBatch]:
    table = pa.Table.from_batches(batches)
    return [table.slice(i, size).combine_chunks().to_batches()[0] for i in range(0, table.num_rows, size)]


def _run(batches: list[pa.RecordBatch], join: dict, learner: dict, collect: bool = True) -> dict:
    config = load_config(overrides={"join": join, "learners": [learner]}, environ={})
    runner = build_stack(config).runner
    raws = [RawBatch(arrow=_strip(b), positions={"log": i}) for i, b in enumerate(batches)]
    if collect:
        raws.append(RawBatch(arrow=_sentinel(batches), positions={"log": len(batches)}))
    ids, preds, lags = [], [], []
    name = runner.learners[0].name
    started = time.perf_counter()
    for raw in raws:
        result = runner.process(raw)
        if not collect:
            continue
        if len(result.events):
            ids.append(hash_strings(result.events.column("event_id"), "event_id"))
            preds.append(result.predictions[name])
        effect = result.events.ts if result.first_effect_ts is None else result.first_effect_ts
        if collect and raw is raws[-1]:
            continue  # the sentinel's batch: every open exposure becomes final 30 days on
        if len(effect):  # event time the stream had reached when the example first changed the model
            lags.append(runner.lateness.max_ts - effect)
    seconds = time.perf_counter() - started
    out = {"seconds": seconds, "records": sum(len(r) for r in raws), "summary": runner.summary(seconds)}
    out["join"] = runner.summary().get("join", {})
    if collect:
        out["ids"] = np.concatenate(ids)
        out["preds"] = np.concatenate(preds)
        out["lag_ms"] = np.concatenate(lags) if lags else np.zeros(1)
    return out


def _score(run: dict, common: np.ndarray, truth_ids: np.ndarray, truth: np.ndarray) -> dict:
    order = np.argsort(run["ids"])
    pos = order[np.searchsorted(run["ids"], common, sorter=order)]
    p = np.clip(run["preds"][pos], 1e-7, 1 - 1e-7)
    y = truth[np.searchsorted(truth_ids, common)]
    lag = run["lag_ms"] / 1000.0
    return {
        "auc": auc(y, p),
        "logloss": logloss(y, p),
        "calibration": calibration_ratio(y, p),
        "freshness_p50_s": float(np.percentile(lag, 50)),
        "freshness_p90_s": float(np.percentile(lag, 90)),
        "events_per_s": run["records"] / run["seconds"],
    }


def compare(args, delay: str) -> list[dict]:
    """Every strategy on ``--seeds`` logs: means of the metrics, and the AUC's spread over seeds."""
    per_seed = [_compare_one(args, delay, seed) for seed in args.seeds]
    rows = []
    for i, first in enumerate(per_seed[0]):
        runs = [s[i] for s in per_seed]
        row = dict(first)
        for key, value in first.items():
            if isinstance(value, float) or (isinstance(value, int) and key != "scored"):
                row[key] = float(np.mean([r[key] for r in runs if r[key] is not None]))
        row["auc_sd"] = float(np.std([r["auc"] for r in runs]))
        row["seeds"] = len(runs)
        rows.append(row)
    _gap_closed(rows)  # from the mean AUCs: a ratio per seed of gaps this small is mostly noise
    return rows


def _gap_closed(rows: list[dict]) -> None:
    waits = [r for r in rows if r["strategy"].startswith("wait")]
    best_wait = max(waits, key=lambda r: r["auc"])
    gap = rows[0]["auc"] - best_wait["auc"]
    for r in rows:
        r["gap_closed"] = (r["auc"] - best_wait["auc"]) / gap if gap > 0 else float("nan")
        r["best_wait"] = best_wait["strategy"]


def _compare_one(args, delay: str, seed: int) -> list[dict]:
    delayed = _rebatch(_log(args.events, delay, "delayed", seed), args.batch)
    joined = _rebatch(_log(args.events, delay, "joined", seed), args.batch)
    truth_ids, truth = _truth(delayed)
    order = np.argsort(truth_ids)
    truth_ids, truth = truth_ids[order], truth[order]
    learner = {"kind": args.learner}
    base = {"enabled": True, "allowed_lateness_ms": args.lateness_ms}
    runs = {"oracle": ({}, joined)}
    for w in args.windows:
        runs[f"wait {w:g} s"] = ({**base, "strategy": "wait", "window_s": w}, delayed)
    # learning at once costs no freshness for a long window, only memory: attribute for longer
    longest = args.nowait_window
    runs["fake_negative (FNW)"] = ({**base, "strategy": "fake_negative", "window_s": longest}, delayed)
    runs["fake_negative (FNC)"] = (
        {**base, "strategy": "fake_negative", "correction": "fnc", "window_s": longest},
        delayed,
    )
    runs[f"es_dfm (wait {args.elapsed:g} s)"] = (
        {**base, "strategy": "es_dfm", "window_s": longest, "elapsed_s": args.elapsed},
        delayed,
    )
    done = {}
    for label, (join, log) in runs.items():
        done[label] = _run(log, join, learner)
        rate = done[label]["records"] / done[label]["seconds"]
        print(f"  {delay:>12} seed {seed} {label:<24} {rate:>9,.0f} records/s", flush=True)
    common = done["oracle"]["ids"]
    for r in done.values():
        common = np.intersect1d(common, r["ids"])
    common = common[np.isin(common, truth_ids)]
    rows = []
    for label, r in done.items():
        row = {
            "delay": delay,
            "strategy": label,
            "scored": len(common),
            **_score(r, common, truth_ids, truth),
        }
        join = r["join"]
        row.update({k: join.get(k) for k in ("attributed", "after_window", "orphans", "evicted")})
        rows.append(row)
    _gap_closed(rows)
    return rows


def throughput(args) -> list[dict]:
    """Records/s of the delayed log with and without the join, per learner, best of ``--repeat``."""
    delayed = _rebatch(_log(args.events, "exponential", "delayed", args.seed), args.throughput_batch)
    join = {"enabled": True, "strategy": "fake_negative", "allowed_lateness_ms": args.lateness_ms}
    rows = []
    for kind in args.throughput_learners.split(","):
        best = {"plain": 0.0, "join": 0.0}
        for _ in range(args.repeat):
            for label, j in (("plain", {}), ("join", join)):
                r = _run(delayed, j, {"kind": kind}, collect=False)
                best[label] = max(best[label], r["records"] / r["seconds"])
        rows.append(
            {
                "learner": kind,
                "records": sum(b.num_rows for b in delayed),
                "join_free_per_s": best["plain"],
                "join_per_s": best["join"],
                "join_cost": 1 - best["join"] / best["plain"],
            }
        )
        print(f"  throughput {kind}: {best['plain']:,.0f} vs {best['join']:,.0f} records/s", flush=True)
    return rows


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    delays = sorted({r["delay"] for r in rows})
    fig, axes = plt.subplots(1, len(delays), figsize=(6 * len(delays), 4), squeeze=False)
    for ax, delay in zip(axes[0], delays, strict=True):
        sub = [r for r in rows if r["delay"] == delay]
        for r in sub:
            x = max(r["freshness_p50_s"], 0.5)
            ax.scatter(x, r["auc"], s=50)
            ax.annotate(r["strategy"], (x, r["auc"]), fontsize=8, xytext=(4, 4), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel("freshness: exposure to first effect, p50 (s, event time; log)")
        ax.set_ylabel("AUC against the eventual click")
        ax.set_title(f"{delay} delays")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=300_000, help="exposures per log")
    ap.add_argument("--delays", default="exponential,heavy_tailed")
    ap.add_argument("--windows", default="60,600,3600", help="wait windows in seconds")
    ap.add_argument("--elapsed", type=float, default=30.0, help="es_dfm's wait in seconds")
    ap.add_argument("--lateness-ms", type=int, default=5000)
    ap.add_argument("--learner", default="ftrl")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batch", type=int, default=500, help="records per micro-batch in the comparison")
    ap.add_argument(
        "--nowait-window",
        type=float,
        default=6 * 3600.0,
        help="attribution window of fake_negative, es_dfm (s)",
    )
    ap.add_argument("--throughput-batch", type=int, default=2000)
    ap.add_argument("--throughput-learners", default="ftrl,neural")
    args = ap.parse_args(argv)
    args.windows = [float(w) for w in args.windows.split(",")]
    args.seeds = [int(x) for x in args.seeds.split(",")]
    args.seed = args.seeds[0]
    rows = []
    for delay in args.delays.split(","):
        rows += compare(args, delay)
    tp = throughput(args)
    cols = [
        ("delay", "delays"),
        ("strategy", "strategy"),
        ("auc", "AUC"),
        ("auc_sd", "± (seeds)"),
        ("logloss", "logloss"),
        ("calibration", "calibration"),
        ("freshness_p50_s", "freshness p50 (s)"),
        ("freshness_p90_s", "p90 (s)"),
        ("gap_closed", "gap closed"),
        ("after_window", "after window"),
    ]
    print(table(rows, cols))
    print()
    print(
        table(
            tp,
            [
                ("learner", "learner"),
                ("join_free_per_s", "join-free replay (records/s)"),
                ("join_per_s", "with the join (records/s)"),
                ("join_cost", "join's cost"),
            ],
        )
    )
    print(f"peak RSS {peak_rss_mb():.0f} MB")
    RESULTS.mkdir(parents=True, exist_ok=True)
    _plot(rows, RESULTS / "delayed_feedback.png")
    path = save(
        "delayed_feedback", {"args": {k: v for k, v in vars(args).items()}, "rows": rows, "throughput": tp}
    )
    print(f"saved {path}")


if __name__ == "__main__":
    main()
