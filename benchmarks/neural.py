"""The Grubhub claim, measured: stateful online fine-tuning of the neural ranker against frozen and
periodically retrained models on the simulator's drifting stream, and its throughput.

1. An offline log of ``--pretrain`` events (before any drift) trains the ranker (``pretrain``:
   time-ordered validation split, early stopping); then ``--events`` more events stream past four
   drifts (abrupt preference change, popularity shuffle, new items, gradual preference change),
   and four strategies score every event *before* they may learn from it (prequential):

   (a) ``frozen``: the offline model, never updated;
   (b) ``retrain``: stateless retraining from scratch every ``--every`` events on the trailing
       ``--window`` events (the same offline procedure: fresh weights and vocabularies, early stopping);
   (c) ``warm retrain``: every ``--every`` events, the current model trains on the events since the
       last retrain (``--warm-epochs`` epochs, warm-started from its weights: Grubhub's setting);
   (d) ``online``: the ``neural`` learner fine-tuning on every micro-batch of ``--batch-size``.

   FTRL (the default learner) runs beside them as a reference. Reported: AUC and logloss per
   segment between drifts, windowed AUC over the stream (``neural_auc.png``, drift points marked),
   and CPU seconds (``time.process_time``: every thread of this process, training included).
2. The optimiser sweep behind the defaults of ``neural``: (d) with other optimisers, step sizes,
   replay, rank penalty and double hashing.
3. Off-policy evaluation: every ``--ope-every``-th batch, the candidate sets of its requests are
   rebuilt from the simulator and each strategy's ranking policy (softmax of its logits at T=0.5)
   is evaluated per segment with IPS, SNIPS and DR, beside its true value (known in simulation).
4. Throughput of online fine-tuning (predict + learn of featurised batches) with the default
   ~1M-parameter model at batch sizes 256..4096, with 1 and 2 torch threads (best of ``--repeat``),
   and the whole runner (decode + features + predict + learn) at 1024.

Usage: ``python benchmarks/neural.py [--quick]``; writes ``benchmarks/results/neural.json`` and
``benchmarks/results/neural_auc.png`` and prints markdown tables.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, save, table

from consumers.stack import build_stack
from pipeline.config import load_config
from pipeline.evaluation import auc, logloss
from pipeline.events import EventRules, decode_arrow
from pipeline.features import Featurizer
from pipeline.learners.ftrl import FTRL
from pipeline.learners.neural import NeuralRanker, pretrain
from pipeline.learners.neural.policy_eval import logged_rounds, ranking_policy
from pipeline.ope import evaluate
from pipeline.runner import RawBatch
from pipeline.simulate import Drift, Simulator
from pipeline.simulation.environment import Contexts

OPE_T = 0.5
RUNNER_ROW = "1024, whole runner (decode + features + predict + learn)"
SWEEP = [
    ("adam lr 1e-3 / emb 1e-2", {"lr": 1e-3, "embedding_lr": 1e-2}),
    ("adam lr 3e-3 / emb 3e-2", {"lr": 3e-3, "embedding_lr": 3e-2}),
    ("adam lr 3e-3 / emb 0.1 (default)", {}),
    ("adam lr 1e-2 / emb 0.3", {"lr": 1e-2, "embedding_lr": 0.3}),
    ("adagrad lr 1e-2 / emb 0.1", {"optimizer": "adagrad", "lr": 1e-2, "embedding_lr": 0.1}),
    ("sgd lr 0.05 / emb 0.5", {"optimizer": "sgd", "lr": 0.05, "embedding_lr": 0.5}),
    ("default + replay 50k x0.5", {"replay_size": 50_000, "replay_ratio": 0.5}),
    ("default + rank penalty 0.5", {"rank_penalty": 0.5}),
]


# ------------------------------------------------------------------------------ data


def make_stream(args) -> tuple[list, tuple[Drift, ...], Simulator]:
    p, n = args.pretrain, args.events
    drifts = (
        Drift(p + n * 20 // 100, "abrupt"),
        Drift(p + n * 40 // 100, "popularity"),
        Drift(p + n * 60 // 100, "new_items", n_items=50),
        Drift(p + n * 75 // 100, "gradual", span=n // 10),
    )
    sim = Simulator(seed=args.seed, drifts=drifts)
    fz = Featurizer()
    batches = [
        fz.transform_and_update(decode_arrow(b, EventRules())[0])
        for b in sim.batches(p + n, chunk_size=args.batch_size)
    ]
    return batches, drifts, sim


def candidate_sets(sim: Simulator, batches: list, every: int, first: int) -> dict[int, tuple]:
    """For every ``every``-th stream batch: (candidate FeatureBatch, logged column, true click probabilities)."""
    env, total = sim.environment(), sum(len(b) for b in batches)
    parts = []
    while env.clock < total:  # the stream drew its requests in blocks of 8192: draw them again
        parts.append(env.contexts(8192))
    ctx_all = Contexts(
        *(np.concatenate([getattr(c, f) for c in parts]) for f in Contexts.__dataclass_fields__)
    )
    fz, out, start = Featurizer(), {}, 0
    for i, b in enumerate(batches):
        if i >= first and (i - first) % every == 0:
            ctx = Contexts(
                *(getattr(ctx_all, f)[start : start + len(b)] for f in Contexts.__dataclass_fields__)
            )
            cands = fz.transform(decode_arrow(env.records(ctx, ctx.candidates), EventRules())[0])
            k = ctx.candidates.shape[1]
            col = (cands.item_hash.reshape(-1, k) == b.item_hash[:, None]).argmax(axis=1)
            p_true = env.reward_probabilities(ctx, ctx.candidates, positions=np.zeros(k, np.int64))
            out[i] = (cands, col, p_true)
        start += len(b)
    return out


# ------------------------------------------------------------------------------ strategies


class Recorder:
    """Prequential predictions, CPU time and OPE inputs of one strategy."""

    def __init__(self, name: str, ope: dict):
        self.name, self.ope = name, ope
        self.preds: list[np.ndarray] = []
        self.ope_rows: list[tuple] = []
        self.cpu = 0.0

    def score(self, i: int, model, fb) -> np.ndarray:
        p = model.predict(fb)
        self.preds.append(p)
        if i in self.ope and isinstance(model, NeuralRanker):
            cands, col, p_true = self.ope[i]
            self.ope_rows.append((i, model.logits(cands).reshape(len(fb), -1), col, p_true))
        return p


def run_online(name, model, stream, first, ope, learn=True) -> Recorder:
    rec = Recorder(name, ope)
    t0 = time.process_time()
    for i, fb in enumerate(stream[first:], start=first):
        p = rec.score(i, model, fb)
        if learn:
            model.learn(fb, p)
    rec.cpu = time.process_time() - t0
    return rec


def run_periodic(name, stream, first, ope, args, make) -> Recorder:
    """(b) and (c): serve a frozen model, every ``--every`` events replace it by ``make(model, history)``."""
    rec = Recorder(name, ope)
    model = NeuralRanker(checkpoint=args.ckpt)
    t0 = time.process_time()
    seen, next_at = 0, args.every
    for i, fb in enumerate(stream[first:], start=first):
        rec.score(i, model, fb)
        seen += len(fb)
        if seen >= next_at:
            model = make(model, stream[: i + 1])
            next_at += args.every
    rec.cpu = time.process_time() - t0
    return rec


def stateless(args):
    def make(_, history):
        model = NeuralRanker(seed=args.seed)
        window = history[-max(1, args.window // args.batch_size) :]
        pretrain(model, window, epochs=args.epochs, batch_size=args.batch_size, val_fraction=0.1, patience=1)
        return model

    return make


def warm(args):
    def make(model, history):
        recent = history[-max(1, args.every // args.batch_size) :]
        pretrain(model, recent, epochs=args.warm_epochs, batch_size=args.batch_size, val_fraction=0.0)
        return model

    return make


# ------------------------------------------------------------------------------ reporting


def segments(drifts, first_event, total):
    edges = [first_event, *(d.at_event for d in drifts), total]
    names = ["before drifts", *(f"after {d.kind}" for d in drifts)]
    return [(n, a - first_event, b - first_event) for n, a, b in zip(names, edges[:-1], edges[1:])]


def summarise(rec: Recorder, y: np.ndarray, segs, block: int) -> dict:
    p = np.concatenate(rec.preds)
    row = {"strategy": rec.name, "cpu_s": rec.cpu, "auc": auc(y, p), "logloss": logloss(y, p)}
    for name, a, b in segs:
        row[f"auc {name}"] = auc(y[a:b], p[a:b])
        row[f"logloss {name}"] = logloss(y[a:b], p[a:b])
    row["windowed_auc"] = [
        auc(y[s : s + block], p[s : s + block]) for s in range(0, len(y) - block + 1, block)
    ]
    return row


def ope_table(rec: Recorder, stream, first, segs) -> list[dict]:
    starts = np.cumsum([0] + [len(b) for b in stream[first:]])
    out = []
    for name, a, b in segs:
        rows = [r for r in rec.ope_rows if a <= starts[r[0] - first] < b]
        if not rows:
            continue
        logits = np.concatenate([r[1] for r in rows])
        col = np.concatenate([r[2] for r in rows])
        fbs = [stream[r[0]] for r in rows]
        rounds = logged_rounds(
            logits,
            col,
            np.concatenate([f.labels for f in fbs]),
            np.concatenate([f.events.propensity for f in fbs]),
            OPE_T,
        )
        truth = (ranking_policy(logits, OPE_T) * np.concatenate([r[3] for r in rows])).sum(axis=1).mean()
        est = evaluate(rounds)
        out.append(
            {
                "strategy": rec.name,
                "segment": name,
                "rounds": len(col),
                "true value": float(truth),
                **{k: est[k].value for k in ("IPS", "SNIPS", "DR")},
                "DR 95% CI": f"[{est['DR'].lower:.3f}, {est['DR'].upper:.3f}]",
                "ESS": est["IPS"].ess,
                "logging CTR": float(rounds.reward.mean()),
            }
        )
    return out


def plot(rows, segs, drifts, first_event, block, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5))
    for r in rows:
        xs = (np.arange(len(r["windowed_auc"])) + 0.5) * block
        style = {"linestyle": "--", "color": "0.5"} if r["strategy"].startswith("ftrl") else {}
        ax.plot(xs, r["windowed_auc"], label=r["strategy"], **style)
    for d in drifts:
        ax.axvline(d.at_event - first_event, color="k", linestyle=":", linewidth=1)
        if d.span:
            ax.axvspan(d.at_event - first_event, d.end_event - first_event, color="0.9", zorder=0)
        ax.text(d.at_event - first_event, ax.get_ylim()[1], f" {d.kind}", va="top", fontsize=8)
    ax.set_xlabel("stream events (after the offline log)")
    ax.set_ylabel(f"AUC per window of {block:,} events")
    ax.set_title("Online fine-tuning vs frozen and periodically retrained rankers (simulator, drifts dotted)")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------ throughput


def throughput(ckpt: str, sizes, events: int, repeat: int) -> list[dict]:
    rows = []
    fz = Featurizer()
    sim = Simulator(seed=1)
    raw = next(sim.batches(max(sizes) * 4 + events, chunk_size=1 << 20))
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for bs in sizes:
            fbs = [
                fz.transform_and_update(decode_arrow(raw.slice(s, bs), EventRules())[0])
                for s in range(0, events, bs)
            ]
            dt = dp = np.inf
            for _ in range(repeat):  # best of `repeat`: the machine may be shared
                model = NeuralRanker(checkpoint=ckpt)
                for fb in fbs[:2]:  # warm-up: first calls allocate
                    model.learn(fb, model.predict(fb))
                t0 = time.perf_counter()
                for fb in fbs[2:]:
                    model.learn(fb, model.predict(fb))
                dt = min(dt, time.perf_counter() - t0)
                t1 = time.perf_counter()
                for fb in fbs[2:]:
                    model.predict(fb)
                dp = min(dp, time.perf_counter() - t1)
            n = sum(len(fb) for fb in fbs[2:])
            rows.append(
                {
                    "threads": threads,
                    "batch size": bs,
                    "events/s (predict + learn)": n / dt,
                    "events/s (predict only)": n / dp,
                    "ms per batch": 1000 * dt / len(fbs[2:]),
                }
            )
            print(f"threads {threads} batch {bs:>5}: {n / dt:>10,.0f} ev/s", file=sys.stderr)
        raws = [RawBatch(arrow=raw.slice(s, 1024)) for s in range(0, events, 1024)]
        best = np.inf
        for _ in range(repeat):
            stack = build_stack(load_config(environ={}), learners=[NeuralRanker(checkpoint=ckpt)])
            runner = stack.runner
            runner.process(raws[0])
            t0 = time.perf_counter()
            for r in raws[1:]:
                runner.process(r)
            best = min(best, time.perf_counter() - t0)
        rate = sum(len(r) for r in raws[1:]) / best
        rows.append({"threads": threads, "batch size": RUNNER_ROW, "events/s (predict + learn)": rate})
    return rows


OPE_COLS = [
    (k, k) for k in ("strategy", "segment", "true value", "IPS", "SNIPS", "DR", "DR 95% CI", "ESS", "rounds")
]
TPUT_COLS = [
    ("threads", "torch threads"),
    ("batch size", "batch size"),
    ("events/s (predict + learn)", "events/s predict+learn"),
    ("events/s (predict only)", "events/s predict"),
    ("ms per batch", "ms/batch"),
]


def report_tables(rows, sweep, ope_rows, tput, segs) -> None:
    cols = [("strategy", "strategy"), *((f"auc {n}", f"AUC {n}") for n, _, _ in segs)]
    cols += [("auc", "AUC all"), ("logloss", "logloss all"), ("cpu_s", "CPU s")]
    print("\n## Strategies (AUC per segment between drifts; CPU seconds incl. retraining)\n")
    print(table(rows, cols))
    if sweep:
        print("\n## Online fine-tuning: optimiser sweep\n")
        print(table(sweep, cols))
    print(
        f"\n## Off-policy estimates of each strategy's ranking policy (softmax T={OPE_T}) vs its true value\n"
    )
    print(table(ope_rows, OPE_COLS))
    print("\n## Throughput of online fine-tuning (~1M parameters)\n")
    print(table(tput, TPUT_COLS))


# ------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small smoke run (~1 minute)")
    ap.add_argument("--pretrain", type=int, default=50_000, help="events of the offline log")
    ap.add_argument("--events", type=int, default=300_000, help="events of the drifting stream")
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--every", type=int, default=30_000, help="retrain period D of (b) and (c)")
    ap.add_argument("--window", type=int, default=60_000, help="trailing window of (b)")
    ap.add_argument("--epochs", type=int, default=5, help="most epochs of offline training and (b)")
    ap.add_argument("--warm-epochs", type=int, default=2, help="epochs of each (c) retrain")
    ap.add_argument("--ope-every", type=int, default=8, help="evaluate off-policy every N-th batch")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for parts 1-3")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3, help="throughput: best of N runs")
    ap.add_argument("--no-sweep", action="store_true", help="skip the optimiser sweep")
    args = ap.parse_args(argv)
    if args.quick:
        args.pretrain, args.events, args.every, args.window = 20_000, 60_000, 12_000, 24_000
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    stream, drifts, sim = make_stream(args)
    first = args.pretrain // args.batch_size
    first_event = first * args.batch_size
    y = np.concatenate([b.labels for b in stream[first:]])
    segs = segments(drifts, first_event, first_event + len(y))
    ope = candidate_sets(sim, stream, args.ope_every, first)
    block = max(2_000, args.events // 40)

    with tempfile.TemporaryDirectory() as tmp:
        args.ckpt = os.path.join(tmp, "offline.ckpt")
        offline = NeuralRanker(seed=args.seed)
        t0 = time.process_time()
        report = pretrain(offline, stream[:first], epochs=args.epochs, batch_size=args.batch_size)
        pretrain_cpu = time.process_time() - t0
        offline.save_checkpoint(args.ckpt)
        print(
            f"offline: {report.epochs_run} epochs, best {report.best_epoch}, {pretrain_cpu:.1f} CPU s",
            file=sys.stderr,
        )
        recs = [
            run_online("(a) frozen", NeuralRanker(checkpoint=args.ckpt), stream, first, ope, learn=False),
            run_periodic("(b) retrain from scratch", stream, first, ope, args, stateless(args)),
            run_periodic("(c) warm-start retrain", stream, first, ope, args, warm(args)),
            run_online("(d) online fine-tuning", NeuralRanker(checkpoint=args.ckpt), stream, first, ope),
            run_online("ftrl (reference)", FTRL(), stream, first, {}),
        ]
        rows = [summarise(r, y, segs, block) for r in recs]
        for r in rows:
            print(f"{r['strategy']:<28} AUC {r['auc']:.4f}  CPU {r['cpu_s']:.1f} s", file=sys.stderr)
        sweep = []
        if not args.no_sweep:
            for label, params in SWEEP:
                rec = run_online(label, NeuralRanker(checkpoint=args.ckpt, **params), stream, first, {})
                sweep.append(summarise(rec, y, segs, block))
                print(f"sweep {label:<34} AUC {sweep[-1]['auc']:.4f}", file=sys.stderr)
            dh = NeuralRanker(seed=args.seed, vocab="double_hash")
            pretrain(dh, stream[:first], epochs=args.epochs, batch_size=args.batch_size)
            dh_path = os.path.join(tmp, "dh.ckpt")
            dh.save_checkpoint(dh_path)
            rec = run_online(
                "default, double-hash vocab", NeuralRanker(checkpoint=dh_path), stream, first, {}
            )
            sweep.append(summarise(rec, y, segs, block))
        ope_rows = [row for rec in recs[:4] for row in ope_table(rec, stream, first, segs)]
        tput = throughput(
            args.ckpt, (256, 512, 1024, 2048, 4096), 20_480 if args.quick else 40_960, args.repeat
        )

    plot(rows, segs, drifts, first_event, block, RESULTS / "neural_auc.png")
    report_tables(rows, sweep, ope_rows, tput, segs)
    d, a, b = (next(r for r in rows if r["strategy"].startswith(k)) for k in ("(d)", "(a)", "(b)"))
    after = [n for n, _, _ in segs[1:]]
    checks = {
        "d_beats_a_after_every_drift": all(d[f"auc {n}"] > a[f"auc {n}"] for n in after),
        "d_beats_b_after_every_drift": all(d[f"auc {n}"] > b[f"auc {n}"] for n in after),
        "d_cheaper_than_b": d["cpu_s"] < b["cpu_s"],
        "throughput_1024_ge_20000": max(
            r["events/s (predict + learn)"] for r in tput if r["batch size"] == 1024
        )
        >= 20_000,
    }
    print("\n" + "\n".join(f"- {k}: {v}" for k, v in checks.items()))
    path = save(
        "neural",
        {
            "config": {k: v for k, v in vars(args).items() if k != "ckpt"},
            "drifts": [d.spec() for d in drifts],
            "loadavg": os.getloadavg(),
            "offline": {**report.to_json(), "cpu_s": pretrain_cpu, "parameters": offline.n_parameters()},
            "strategies": rows,
            "sweep": sweep,
            "ope": ope_rows,
            "throughput": tput,
            "checks": checks,
            "seconds": time.perf_counter() - started,
        },
    )
    print(
        f"\nwrote {path} and {RESULTS / 'neural_auc.png'} in {time.perf_counter() - started:.0f} s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
