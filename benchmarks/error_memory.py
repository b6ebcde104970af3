"""Ablation of the ReLoop2 error memory: base learner vs base + memory on a stream with abrupt drifts.

Two simulator streams (``SimConfig`` defaults, a user x category cross in the features), each with two
abrupt drifts at 1/3 and 2/3 of it: ``abrupt`` (every user's preference vector replaced: user x item
errors) and ``popularity`` (the items' popularity offsets permuted: item-level errors shared by all
users). Three memories: the learner's defaults (hashed-feature or representation key, decay 0.98),
``ITEM_MEMORY`` (a key dominated by the item id, decay 0.8) and ``USER_CATEGORY_MEMORY`` (a key
dominated by the user x category cross, decay 0.9, 2**14 buckets per table); all gate their errors
at half a standard error (``confidence = 0.5``, the learner's default). For every base (``ftrl``, ``neural``, optionally
``river:linear_model.LogisticRegression``) and seed:

1. **Prequential** (predict, score, learn per micro-batch): one pass of the base serves every
   memory (``ErrorMemoryLearner.serve_base``); the wrapper trains its base on the base's own
   predictions, so this equals separate ``error_memory(<base>)`` runs (``tests/test_error_memory.py``
   checks that the wrapped base is the base alone, bit for bit). Windowed AUC and
   logloss (trailing ``--window`` events, every ``--step``), and per drift the *recovery time*:
   events from the drift until a fully post-drift window's AUC is within 1 point of the pre-drift
   level (mean of the windows ending in the n/12 events before the drift) at two consecutive
   checkpoints; censored at the next drift. It is reported against the arm's own pre-drift level
   and against the base's (a memory that lowered the level would otherwise "recover" sooner).
   "Stationary" is every window that starts n/12 events into the stream and does not overlap
   ``[drift, drift + n/6)`` (n/6 = 40k at the default 240k events); "after drifts" is the rest.
   Two schedules for the base: ``online`` (it learns every batch, the pipeline's default) and
   ``periodic`` (it learns the last slot's batches once per slot, n/12 events — ReLoop2's slowly
   updated model), while the memory always learns every batch.
2. **The paper's protocol** (abrupt stream, the default and the user x category memories): chronological slots; slot 0 trains the base; slot t is scored by the
   base as it stands (``fixed``: trained on slot 0 only; ``incremental``: one more pass over every
   earlier slot) and by base + a memory written from slots 1..t-1 with the predictions served then.
3. **Cost**: steady-state µs per event of the base alone and of each wrapper (predict + learn over
   the first 120k events in batches of each ``--cost-batch``, 2,000 (the runner's default) and 5,000; a quarter of
   them warms both up, the rest is timed in alternating runs, best of ``--repeats``), BLAS and
   torch on one thread.

Usage: ``python benchmarks/error_memory.py [--quick] [--events N] [--seeds 0 1 ...] [--river] [--cost-only]``;
writes ``benchmarks/results/error_memory.json`` and ``error_memory.png`` and prints markdown tables.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, save, table

from pipeline.evaluation import auc, logloss
from pipeline.events import EventRules, decode_arrow
from pipeline.features import FeatureSpec, Featurizer
from pipeline.learners.error_memory import ErrorMemoryLearner
from pipeline.learners.error_memory.learner import score_base
from pipeline.learners.registry import build_learner, known_kinds
from pipeline.simulate import Drift, Simulator

#: memory configuration under test (the learner's defaults, spelled out)
MEMORY = {
    "bits": 10,
    "tables": 8,
    "tau": 1.0,
    "lam": 0.5,
    "gamma": 0.0,
    "decay": 0.98,
    "key_dim": 16,
    "confidence": 0.5,
}
#: keys dominated by one field, forgetting fast: the item (popularity shifts) or the user x category
#: cross (taste shifts). Chosen on seeds 10-17 (never the reported ones) among decay 0.8-0.9,
#: confidence 0-1, lam 0.5-1, min_count 0-1, 2**14-2**16 buckets: the item key as the best recovery
#: that costs <= 0.2 AUC points on both streams and bases; the user x category key as the best
#: recovery that costs nothing on either stream (stronger settings, e.g. lam = 1, recover 35-50%
#: faster but cost up to 0.9 points where tastes do not shift)
ITEM_MEMORY = {**MEMORY, "key_fields": {"item_id": 8.0}, "decay": 0.8}
USER_CATEGORY_MEMORY = {**MEMORY, "key_fields": {"user_id:category": 8.0}, "decay": 0.9, "bits": 14}
CONFIGS = {"features": MEMORY, "item": ITEM_MEMORY, "user_category": USER_CATEGORY_MEMORY}
LABELS = {"features": "", "item": ", item key", "user_category": ", user×category key"}
COLORS = {"features": "tab:blue", "item": "tab:orange", "user_category": "tab:green"}
KINDS = ("abrupt", "popularity")
#: memories of the slot protocol (on the abrupt stream)
SLOT_CONFIGS = {"features": MEMORY, "user_category": USER_CATEGORY_MEMORY}
BASES = {
    "ftrl": {},
    "neural": {"dim": 16, "hidden": [64, 32], "user_rows": 4096, "item_rows": 1024, "feature_rows": 512},
    "river:linear_model.LogisticRegression": {},
}


def stream(seed: int, n: int, batch: int, kind: str = "abrupt") -> tuple[list, tuple[int, ...]]:
    drifts = (n // 3, 2 * n // 3)
    sim = Simulator(seed=seed, drifts=tuple(Drift(d, kind) for d in drifts))
    featurizer = Featurizer(FeatureSpec(crosses=(("user_id", "category"),)))
    batches = [
        featurizer.transform_and_update(decode_arrow(rb, EventRules())[0]) for rb in sim.batches(n, batch)
    ]
    return batches, drifts


def wrapper(base: str, seed: int, memory: dict | None = None) -> ErrorMemoryLearner:
    return ErrorMemoryLearner(base, dict(BASES[base]), seed=seed, **(memory or MEMORY))


# ------------------------------------------------------------------------------ prequential
def prequential(base: str, batches: list, seed: int, period: int = 0) -> dict[str, np.ndarray]:
    """One base and every memory of ``CONFIGS`` over it (each serves from the base's predictions).

    Online: the base learns every batch. ``period > 0``: it learns the last ``period`` batches at
    once every ``period`` batches (a slowly updated model), while the memories learn every batch.
    """
    learner = build_learner(base, params=dict(BASES[base]))
    memories = {tag: wrapper(base, seed, cfg) for tag, cfg in CONFIGS.items()}
    out: dict[str, list] = {"base": [], "label": [], **{tag: [] for tag in memories}}
    pending = []
    for fb in batches:
        y_base, rep = score_base(learner, fb)
        for tag, model in memories.items():
            served = model.serve_base(fb, y_base, rep)
            model.remember(fb, served)
            out[tag].append(served.y)
        if period:
            pending.append(fb)
            if len(pending) == period:
                for old in pending:
                    learner.learn(old, learner.predict(old))
                pending = []
        else:
            learner.learn(fb, y_base)
        out["base"].append(y_base)
        out["label"].append(fb.labels)
    return {k: np.concatenate(v) for k, v in out.items()}


def windowed(labels: np.ndarray, preds: np.ndarray, window: int, step: int) -> dict[str, np.ndarray]:
    ends = np.arange(window, len(labels) + 1, step)
    return {
        "ends": ends,
        "auc": np.array([auc(labels[e - window : e], preds[e - window : e]) for e in ends]),
        "logloss": np.array([logloss(labels[e - window : e], preds[e - window : e]) for e in ends]),
    }


def pre_level(curve: dict, drift: int, span: int) -> float:
    ends = curve["ends"]
    return float(curve["auc"][(ends > drift - span) & (ends <= drift)].mean())


def recovery(curve: dict, drift: int, level: float, until: int, window: int) -> float:
    """Events from ``drift`` to the first of two consecutive post-drift windows back within 1 point."""
    ends, ok = curve["ends"], curve["auc"] >= level - 0.01
    idx = np.flatnonzero((ends >= drift + window) & (ends <= until))
    for a, b in itertools.pairwise(idx):
        if ok[a] and ok[b]:
            return float(ends[a] - drift)
    return float("nan")  # not recovered before the next drift (censored)


def stationary(ends: np.ndarray, drifts: tuple[int, ...], window: int, n: int) -> np.ndarray:
    mask = ends - window >= n // 12
    for d in drifts:
        mask &= (ends <= d) | (ends - window >= d + n // 6)
    return mask


def score_prequential(run: dict, drifts: tuple[int, ...], window: int, step: int) -> dict:
    curves = {arm: windowed(run["label"], run[arm], window, step) for arm in ("base", *CONFIGS)}
    n = len(run["label"])
    bounds = [*drifts[1:], n]
    out: dict = {"curves": curves}
    base_levels = [pre_level(curves["base"], d, n // 12) for d in drifts]
    for arm, curve in curves.items():
        mask = stationary(curve["ends"], drifts, window, n)
        own = [recovery(curve, d, pre_level(curve, d, n // 12), u, window) for d, u in zip(drifts, bounds)]
        common = [recovery(curve, d, lv, u, window) for d, u, lv in zip(drifts, bounds, base_levels)]
        post = ~mask & (curve["ends"] - window >= drifts[0])
        out[arm] = {
            "stationary_auc": float(np.nanmean(curve["auc"][mask])),
            "post_drift_auc": float(np.nanmean(curve["auc"][post])),
            "post_drift_logloss": float(np.nanmean(curve["logloss"][post])),
            "logloss": logloss(run["label"], run[arm]),
            "auc": auc(run["label"], run[arm]),
            "recovery_own": own,
            "recovery_vs_base_level": common,
        }
    return out


# ------------------------------------------------------------------------------ slots (the paper's protocol)
def slot_protocol(base: str, batches: list, seed: int, slots: int) -> dict[str, list[dict]]:
    per_slot = -(-len(batches) // slots)
    parts = [batches[i * per_slot : (i + 1) * per_slot] for i in range(slots)]
    out: dict[str, list[dict]] = {}
    for mode in ("fixed", "incremental"):
        learner = build_learner(base, params=dict(BASES[base]))
        memories = {tag: wrapper(base, seed, cfg) for tag, cfg in SLOT_CONFIGS.items()}
        for fb in parts[0]:
            learner.learn(fb, learner.predict(fb))
        rows = []
        for t in range(1, slots):
            # the base and the memories are read-only within a slot
            scored = [score_base(learner, fb) for fb in parts[t]]
            labels = np.concatenate([fb.labels for fb in parts[t]])
            y_base = np.concatenate([y for y, _ in scored])
            row = {"slot": t, "base_auc": auc(labels, y_base), "base_logloss": logloss(labels, y_base)}
            served = {
                tag: [m.serve_base(fb, y, rep) for fb, (y, rep) in zip(parts[t], scored)]
                for tag, m in memories.items()
            }
            for tag, sv in served.items():
                y_mem = np.concatenate([x.y for x in sv])
                row[f"{tag}_auc"], row[f"{tag}_logloss"] = auc(labels, y_mem), logloss(labels, y_mem)
            rows.append(row)
            for tag, m in memories.items():
                for fb, x in zip(parts[t], served[tag]):
                    m.remember(fb, x)
            if mode == "incremental":
                for fb in parts[t]:
                    learner.learn(fb, learner.predict(fb))
        out[mode] = rows
    return out


# ------------------------------------------------------------------------------ cost
def cost(base: str, batches: list, seed: int, repeats: int) -> dict[str, float]:
    """Steady-state µs per event: every learner first sees a quarter of the batches (first touches of
    fresh tables cost page faults, once), then the rest is timed alternately, best of ``repeats``."""
    warm, timed = batches[: len(batches) // 4], batches[len(batches) // 4 :]
    models = {"base": build_learner(base, params=dict(BASES[base]))}
    models.update({tag: wrapper(base, seed, mem) for tag, mem in CONFIGS.items()})
    for model in models.values():
        for fb in warm:
            model.learn(fb, model.predict(fb))
    best = dict.fromkeys(models, np.inf)
    for _ in range(repeats):
        for arm, model in models.items():
            start = time.perf_counter()
            for fb in timed:
                model.learn(fb, model.predict(fb))
            best[arm] = min(best[arm], time.perf_counter() - start)
    n = sum(len(fb) for fb in timed)
    us = {arm: 1e6 * s / n for arm, s in best.items()}
    out = {"base_us": us["base"]}
    for tag in CONFIGS:
        out[f"{tag}_us"] = us[tag]
        out[f"{tag}_overhead_pct"] = 100 * (us[tag] / us["base"] - 1)
    return out


# ------------------------------------------------------------------------------ report
def plot(curves: dict, slots: dict, drifts: tuple[int, ...], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bases = list(curves)
    panels = [(kind, mode) for kind in KINDS for mode in ("online", "periodic")]
    fig, axes = plt.subplots(len(panels) + 1, len(bases), figsize=(6 * len(bases), 3.4 * (len(panels) + 1)))
    axes = np.asarray(axes).reshape(len(panels) + 1, len(bases))
    for j, base in enumerate(bases):
        for i, (kind, mode) in enumerate(panels):
            ax, runs = axes[i, j], curves[base][kind][mode]
            c = runs["base"]
            ax.plot(c["ends"] / 1000, c["auc"], "--", color="black", label=base)
            for tag in CONFIGS:
                c = runs[tag]
                ax.plot(c["ends"] / 1000, c["auc"], "-", color=COLORS[tag], label=f"+ memory{LABELS[tag]}")
            for d in drifts:
                ax.axvline(d / 1000, color="grey", lw=0.8)
            what = "learns every batch" if mode == "online" else "learns once per slot"
            ax.set(title=f"{base} ({what}), {kind} drifts", xlabel="events (k)", ylabel="windowed AUC")
            ax.legend(fontsize=8)
        ax = axes[-1, j]
        for mode, style in (("fixed", ":"), ("incremental", "--")):
            rows = slots[base][mode]
            t = [r["slot"] for r in rows]
            ax.plot(t, [r["base_auc"] for r in rows], style, color="black", label=f"{mode} base")
            for tag in SLOT_CONFIGS:
                ax.plot(
                    t,
                    [r[f"{tag}_auc"] for r in rows],
                    style,
                    color=COLORS[tag],
                    label=f"+ memory{LABELS[tag]}",
                )
        ax.set(title=f"{base}: chronological slots (abrupt drifts)", xlabel="slot", ylabel="AUC")
        ax.legend(fontsize=8)
    fig.suptitle("seed 0; grey lines: drifts")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _mean(values: list) -> float:
    arr = np.asarray(values, dtype=float)
    return float(np.nanmean(arr)) if np.isfinite(arr).any() else float("nan")


def _row(name: str, kind: str, mode: str, s: list[dict], base_rec: float) -> dict:
    own = [r for sc in s for r in sc["recovery_own"]]
    common = [r for sc in s for r in sc["recovery_vs_base_level"]]
    rec = _mean(own) / 1000
    return {
        "learner": name,
        "drift": kind,
        "mode": mode,
        "stationary_auc": _mean([x["stationary_auc"] for x in s]),
        "post_drift_auc": _mean([x["post_drift_auc"] for x in s]),
        "post_drift_logloss": _mean([x["post_drift_logloss"] for x in s]),
        "recovery_k": rec,
        "recovery_change_pct": 100 * (rec / base_rec - 1) if base_rec else float("nan"),
        "recovery_base_level_k": _mean(common) / 1000,
        "censored": f"{int(np.isnan(own).sum())}/{len(own)}",
    }


def summarise(base: str, kind: str, mode: str, scores: dict[str, list[dict]]) -> list[dict]:
    """Rows for the base and each memory; ``scores[tag]`` holds one {base, memory} score per seed."""
    first = next(iter(scores.values()))
    base_row = _row(base, kind, mode, [sc["base"] for sc in first], 0.0)
    rows = [base_row]
    for tag, sc in scores.items():
        name = f"error_memory({base}){LABELS[tag]}"
        rows.append(_row(name, kind, mode, [x["memory"] for x in sc], base_row["recovery_k"]))
    return rows


def summarise_slots(base: str, runs: list[dict]) -> list[dict]:
    rows = []
    for mode in ("fixed", "incremental"):
        for arm in ("base", *SLOT_CONFIGS):
            name = base if arm == "base" else f"error_memory({base}){LABELS[arm]}"
            rows.append(
                {
                    "learner": f"{name}, {mode} base",
                    "auc": _mean([r[f"{arm}_auc"] for run in runs for r in run[mode]]),
                    "logloss": _mean([r[f"{arm}_logloss"] for run in runs for r in run[mode]]),
                    "drift_slot_auc": _mean(
                        [
                            r[f"{arm}_auc"]
                            for run in runs
                            for r in run[mode]
                            if r["slot"] in run["drift_slots"]
                        ]
                    ),
                }
            )
    return rows


def run_base(base: str, args: argparse.Namespace, curves0: dict) -> tuple[dict, tuple[int, ...], list[dict]]:
    """Every drift kind, seed, base schedule and memory for one base: raw scores and summary rows."""
    period = -(-args.events // args.slots) // args.batch  # batches per slot
    raw: dict = {}
    rows: list[dict] = []
    for kind in KINDS:
        scores = {mode: {tag: [] for tag in CONFIGS} for mode in ("online", "periodic")}
        for seed in args.seeds:
            batches, drifts = stream(seed, args.events, args.batch, kind)
            t0 = time.perf_counter()
            for mode in scores:
                run = prequential(base, batches, seed, period if mode == "periodic" else 0)
                sc = score_prequential(run, drifts, args.window, args.step)
                if seed == args.seeds[0]:
                    curves0.setdefault(base, {}).setdefault(kind, {})[mode] = sc["curves"]
                for tag in CONFIGS:
                    scores[mode][tag].append({"base": sc["base"], "memory": sc[tag]})
            if kind == "abrupt":
                sl = slot_protocol(base, batches, seed, args.slots)
                sl["drift_slots"] = [d // (period * args.batch) for d in drifts]
                raw.setdefault("slots", []).append(sl)
            print(f"{base} {kind} seed {seed}: {time.perf_counter() - t0:.0f}s", file=sys.stderr)
        raw.setdefault("prequential", {})[kind] = scores
        for mode, by_tag in scores.items():
            rows += summarise(base, kind, mode, by_tag)
    return raw, drifts, rows


def time_base(base: str, args: argparse.Namespace, cost_rows: list[dict]) -> dict:
    """:func:`cost` at every ``--cost-batch``; appends the summary rows to ``cost_rows``."""
    out = {}
    for size in args.cost_batch:
        timing = cost(base, stream(args.seeds[0], min(args.events, 120_000), size)[0], 0, args.repeats)
        out[size] = timing
        cost_rows.append({"learner": base, "batch": size, **timing})
    return out


def cost_table(cost_rows: list[dict]) -> str:
    cols = [("learner", "base"), ("batch", "batch"), ("base_us", "base µs/event")]
    for tag in CONFIGS:
        cols += [(f"{tag}_us", f"+ memory{LABELS[tag]} µs/event"), (f"{tag}_overhead_pct", "overhead %")]
    return table(cost_rows, cols)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=240_000)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--window", type=int, default=5000)
    parser.add_argument("--step", type=int, default=1000)
    parser.add_argument("--slots", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--cost-batch", type=int, nargs="+", default=[2000, 5000], help="batch sizes of the cost runs"
    )
    parser.add_argument("--river", action="store_true", help="also river:linear_model.LogisticRegression")
    parser.add_argument("--quick", action="store_true", help="60k events, one seed, one timing repeat")
    parser.add_argument(
        "--cost-only",
        action="store_true",
        help="only time the learners (on a quiet machine), replacing the cost rows of the saved results",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.seeds, args.repeats = 60_000, [0], 1
    import torch

    torch.set_num_threads(1)
    bases = ["ftrl", *(["neural"] if "neural" in known_kinds() else [])]
    bases += ["river:linear_model.LogisticRegression"] if args.river else []
    results: dict = {
        "memory": CONFIGS,
        "bases": {b: BASES[b] for b in bases},
        "args": vars(args),
        "runs": {},
    }
    if args.cost_only:
        results = json.loads((RESULTS / "error_memory.json").read_text())
        results.pop("machine", None)
        results["summary"]["cost"] = []
        for base in bases:
            results["runs"][base]["cost"] = time_base(base, args, results["summary"]["cost"])
        save("error_memory", results)
        print(cost_table(results["summary"]["cost"]))
        return 0
    prequential_rows, slot_rows, cost_rows, curves0, slots0 = [], [], [], {}, {}
    for base in bases:
        raw, drifts, rows = run_base(base, args, curves0)
        slots0[base] = raw["slots"][0]
        raw["cost"] = time_base(base, args, cost_rows)
        results["runs"][base] = raw
        prequential_rows += rows
        slot_rows += summarise_slots(base, raw["slots"])
    results["summary"] = {"prequential": prequential_rows, "slots": slot_rows, "cost": cost_rows}
    png = RESULTS / "error_memory.png"
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot(curves0, slots0, drifts, png)
    path = save("error_memory", results)
    print(
        table(
            prequential_rows,
            [
                ("learner", "learner"),
                ("drift", "drifts"),
                ("mode", "base updated"),
                ("stationary_auc", "AUC stationary"),
                ("post_drift_auc", "AUC after drifts"),
                ("post_drift_logloss", "logloss after drifts"),
                ("recovery_k", "recovery (k events)"),
                ("recovery_change_pct", "vs base %"),
                ("recovery_base_level_k", "recovery to base's level (k)"),
                ("censored", "not recovered"),
            ],
        )
    )
    print()
    print(
        table(
            slot_rows,
            [
                ("learner", "slots protocol"),
                ("auc", "AUC"),
                ("logloss", "logloss"),
                ("drift_slot_auc", "AUC, drift slots"),
            ],
        )
    )
    print()
    print(cost_table(cost_rows))
    print(f"\nsaved {path} and {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
