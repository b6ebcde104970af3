"""Off-policy estimates (IPS, SNIPS, DR, replay) of bandit policies learned prequentially on a simulated
log, against each policy's true value computed from the simulator's click model.

Usage: ``python benchmarks/bandits_ope.py [--events N] [--epsilon E ...]``; one run per logging
epsilon (0.05: a softmax logging policy; 1.0: uniformly random logging). Writes
``benchmarks/results/bandits_ope.json`` and prints one markdown table per logging policy.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import save

from consumers.stack import build_stack
from pipeline.config import load_config
from pipeline.learners.bandits.offpolicy import PrequentialEvaluation
from pipeline.learners.registry import build_learner
from pipeline.ope import IPS, SNIPS, DoublyRobust, LoggedBandit, Replay
from pipeline.runner import RawBatch
from pipeline.simulate import Simulator
from pipeline.simulation.stream import BLOCK_REQUESTS

ITEMS = 20
EXCLUDE = ["price", "category"]  # item-side features must not leak into the context
POLICIES = {
    "uniform (epsilon-greedy, epsilon=1)": (
        "epsilon_greedy",
        {"dim": 16, "epsilon": 1.0, "exclude_features": EXCLUDE},
    ),
    "linucb": ("linucb", {"dim": 16, "alpha": 0.3, "exclude_features": EXCLUDE}),
    "diag_linucb": ("diag_linucb", {"dim": 16, "alpha": 0.3, "exclude_features": EXCLUDE}),
    "linear_ts": ("linear_ts", {"dim": 16, "v": 0.1, "n_mc": 100, "exclude_features": EXCLUDE}),
    "beta_ts": ("beta_ts", {"n_mc": 100}),
    "epsilon_greedy": ("epsilon_greedy", {"dim": 16, "epsilon": 0.05, "exclude_features": EXCLUDE}),
}

EVAL_CONFIG = load_config(environ={}, overrides={"evaluation": {"window": 1000}})


class _Capture(PrequentialEvaluation):
    """Also keeps the full choice distribution of every event, for the true value."""

    def predict(self, batch):
        contexts = self.policy.batch_contexts(batch)
        probs, _ = self.policy.distribution(contexts, self.candidates, np.random.default_rng(1), self.n_mc)
        self.all_probs.append(probs)
        return super().predict(batch)


def _run(n: int, epsilon: float) -> dict:
    # every item is a candidate of every request, so the log's fixed set is the logger's own set
    sim = Simulator(
        seed=0, n_users=1000, n_items=ITEMS, n_candidates=ITEMS, epsilon=epsilon, log_candidates=False
    )
    batches = list(sim.batches(n, chunk_size=500))
    env = sim.environment()
    contexts = [env.contexts(BLOCK_REQUESTS) for _ in range((n + BLOCK_REQUESTS - 1) // BLOCK_REQUESTS)]
    probs_true = np.concatenate(
        [env.reward_probabilities(c, c.candidates, positions=np.zeros(ITEMS, np.int64)) for c in contexts]
    )[:n]
    cand_all = np.concatenate([c.candidates for c in contexts])[:n]
    truth_items = np.zeros((n, ITEMS))
    truth_items[np.arange(n)[:, None], cand_all] = probs_true
    candidates = [f"i{i}" for i in range(ITEMS)]
    item_of_col = np.array([int(c[1:]) for c in candidates])
    logged = pa.Table.from_batches(batches)
    rows = []
    for label, (kind, params) in POLICIES.items():
        policy = build_learner(kind, kind, {**params, "gauge_window": 0})
        capture = _Capture(policy, candidates, seed=0)
        capture.all_probs = []
        # evaluate's stack: the policy under test, no drift monitor (a fixed log has no live model)
        runner = build_stack(EVAL_CONFIG, learners=[capture], drift=False).runner
        t0 = time.perf_counter()
        for i, b in enumerate(batches):
            runner.process(RawBatch(arrow=b, positions={"sim": i}))
        seconds = time.perf_counter() - t0
        choice = np.concatenate(capture.all_probs)
        truth = float((choice * truth_items[:, item_of_col]).sum(axis=1).mean())
        rec = capture.records()
        data = LoggedBandit(
            reward=rec["reward"],
            pscore=rec["pscore"],
            target_prob=rec["target_prob"],
            q_hat=rec["q_hat"],
            q_target=rec["q_target"],
        )
        replay = LoggedBandit(reward=rec["reward"], action=rec["candidate"], target_action=rec["choice"])
        row = {"policy": label, "truth": truth, "seconds": seconds}
        for estimator, d in ((IPS(), data), (SNIPS(), data), (DoublyRobust(), data), (Replay(), replay)):
            iv = estimator.estimate_interval(d)
            row[estimator.name] = {
                "value": iv.value,
                "lower": iv.lower,
                "upper": iv.upper,
                "ess": iv.ess,
                "covers": bool(iv.lower <= truth <= iv.upper),
            }
        rows.append(row)
        print(f"epsilon={epsilon} {label}: truth {truth:.3f}", file=sys.stderr)
    return {
        "epsilon": epsilon,
        "logged_reward": float(logged.column("label").to_numpy().mean()),
        "rows": rows,
    }


def _table(run: dict) -> str:
    names = ("IPS", "SNIPS", "DR", "Replay")
    lines = [
        f"logging epsilon {run['epsilon']} (logged reward {run['logged_reward']:.3f})",
        "| target policy | true value | " + " | ".join(names) + " | ESS |",
        "|---|---:|" + "---|" * len(names) + "---:|",
    ]
    for r in run["rows"]:
        cells = []
        for name in names:
            e = r.get(name)
            if e is None:
                cells.append("")
                continue
            mark = "" if e["covers"] else " ✗"
            cells.append(f"{e['value']:.3f} [{e['lower']:.3f}, {e['upper']:.3f}]{mark}")
        ess = r.get("IPS", {}).get("ess", float("nan"))
        lines.append(f"| {r['policy']} | {r['truth']:.3f} | " + " | ".join(cells) + f" | {ess:,.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--epsilon", type=float, action="append", help="logging epsilon (repeatable)")
    args = parser.parse_args(argv)
    runs = [_run(args.events, eps) for eps in (args.epsilon or [0.05, 1.0])]
    path = save("bandits_ope", {"events": args.events, "items": ITEMS, "runs": runs})
    for run in runs:
        print(_table(run) + "\n")
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
