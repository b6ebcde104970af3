"""Bandits beside the peers: streamlearn's policies with their defaults, Vowpal Wabbit and Open Bandit Pipeline.

1. **obp's simulator** (an environment none of us wrote): ``obp.simulator.BanditEnvironmentSimulator``
   with obp's ``logistic_reward_function``, 20 actions with 5-dimensional action features
   (``action_context``, standard normal), 5-dimensional standard-normal contexts, binary rewards;
   stationary, and with obp's ``CoefficientDrifter`` changing every coefficient abruptly halfway.
   All rounds are drawn up front with ``next_bandit_round_batch`` (contexts, every action's
   reward and expected reward), so every policy meets the same rounds and the same reward draws.
   Decisions and updates go in batches of ``--batch`` rounds (a policy decides a whole batch,
   then learns from it), as a stream worker does.
2. **The project's simulator** (:mod:`pipeline.simulate`, 10 candidates per request, see
   ``benchmarks/bandits.py``): the same policies on the events' features, and the policies that
   explore around a pretrained neural ranker beside the frozen ranker choosing greedily: the
   neural-linear kinds with their defaults (a ridge correction on the ranker's last layer whose
   prior mean is the ranker's prediction, :mod:`pipeline.learners.bandits.neural_linear`; their
   time per decision includes the ranker's forward pass over every candidate) and the hybrid
   kinds with the ranker's score of each candidate as their item feature.

Policies: every streamlearn kind with its **defaults** (only ``dim`` / ``action_dim`` set by the
data; contexts are ``[1, x]``, the shared-parameter policies also get the actions' features; the
neural-linear kinds, which need a pretrained ranker, run on the project's simulator only);
VW ``--cb_explore_adf`` with ``--bag 5``, ``--squarecb`` and ``--epsilon 0.05``, each with ``-q SA``
(shared features × action features, and an id feature per action); obp's online policies
``LinUCB``, ``LinTS``, ``LogisticUCB``, ``LogisticTS``, ``LinEpsilonGreedy`` with their defaults
(``batch_size`` set to the batch); a uniform-random policy.

Reported per run (mean ± std over ``--seeds``): cumulative expected reward of the chosen actions,
regret against the best action per half, and milliseconds per 1,000 decisions and per 1,000
updates (VW and obp decide and learn one round at a time: their time per round is both).

Usage: ``python benchmarks/bandits_peers.py [--rounds N] [--seeds 0,1,2] [--skip-project]``; needs
obp and vowpalwabbit, which live in their own virtualenv (``make bench-peers`` builds it).
Writes ``benchmarks/results/bandits_peers.json`` and ``bandits_peers.png``.
BLAS runs single-threaded so timings do not depend on what else runs.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import sys
import tempfile
import time
import warnings
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, save, table

from pipeline.learners.bandits import POLICIES

N_ACTIONS, DIM_CONTEXT, DIM_ACTION = 20, 5, 5
VW_ARGS = {
    "vw --bag 5": "--bag 5",
    "vw --squarecb": "--squarecb",
    "vw --epsilon 0.05": "--epsilon 0.05",
}
OBP_POLICIES = ("LinUCB", "LinTS", "LogisticUCB", "LogisticTS", "LinEpsilonGreedy")


# ------------------------------------------------------------------------------------ obp's world


def obp_rounds(n_rounds: int, seed: int, drift: bool):
    """``(contexts [n, 5], action features [20, 5], rewards [n, 20], expected rewards [n, 20])``."""
    from obp.dataset import logistic_reward_function
    from obp.simulator.coefficient_drifter import CoefficientDrifter
    from obp.simulator.simulator import BanditEnvironmentSimulator

    action_context = np.random.default_rng(seed).normal(size=(N_ACTIONS, DIM_ACTION))
    kwargs = {}
    if drift:
        drifter = CoefficientDrifter(
            drift_interval=n_rounds // 2,
            # logistic_reward_function's degree-1 polynomial features add a bias column
            effective_dim_context=DIM_CONTEXT + 1,
            effective_dim_action_context=DIM_ACTION + 1,
            random_state=seed,
        )
        kwargs["coef_function"] = drifter.get_coefficients
    env = BanditEnvironmentSimulator(
        n_actions=N_ACTIONS,
        dim_context=DIM_CONTEXT,
        reward_type="binary",
        reward_function=logistic_reward_function,
        action_context=action_context,
        random_state=seed,
        **kwargs,
    )
    rounds = env.next_bandit_round_batch(n_rounds)
    return rounds.context, action_context, rounds.rewards, rounds.expected_rewards


def make_policy(kind: str, dim: int, action_dim: int):
    """A streamlearn policy with its defaults: only the widths come from the data."""
    cls = POLICIES[kind]
    if kind == "beta_ts":
        return cls()
    if getattr(cls, "uses_action_features", False):
        return cls(dim=dim, action_dim=action_dim)
    return cls(dim=dim)


def run_streamlearn(kind: str, X, A, R, Q, batch: int) -> dict:
    """Closed loop of one streamlearn policy: decide a batch, observe its rewards, learn."""
    n = len(X)
    policy = make_policy(kind, X.shape[1] + 1, A.shape[1])
    shared = policy.uses_action_features
    contexts = np.column_stack([np.ones(n), X])
    arms = np.array([f"a{j}" for j in range(A.shape[0])])
    chosen = np.empty(n, np.int64)
    decide = learn = 0.0
    for at in range(0, n, batch):
        sl = slice(at, min(at + batch, n))
        ctx = contexts[sl] if policy.uses_context else None
        t0 = time.perf_counter()
        j = policy.select(ctx, arms, action_features=A if shared else None)[0][:, 0]
        t1 = time.perf_counter()
        chosen[sl] = j
        r = R[sl][np.arange(len(j)), j]
        t2 = time.perf_counter()
        policy.update(
            contexts[sl] if policy.uses_context else None,
            arms[j],
            r,
            action_features=A[j] if shared else None,
        )
        decide, learn = decide + t1 - t0, learn + time.perf_counter() - t2
    return _summary(Q, chosen, decide, learn)


def run_vw(args: str, X, A, R, Q, batch: int, seed: int) -> dict:
    from vowpalwabbit import Workspace

    vw = Workspace(f"--cb_explore_adf {args} -q SA --quiet --random_seed {seed}")
    rng = np.random.default_rng(seed)
    n = len(X)
    shared_lines = ["shared |S " + " ".join(f"x{i}:{v:.6f}" for i, v in enumerate(row)) for row in X]
    action_lines = [
        f"|A id{j} " + " ".join(f"f{i}:{v:.6f}" for i, v in enumerate(a)) for j, a in enumerate(A)
    ]
    chosen = np.empty(n, np.int64)
    start = time.perf_counter()
    for at in range(0, n, batch):
        idx = range(at, min(at + batch, n))
        probs = []
        for t in idx:
            pmf = np.asarray(vw.predict([shared_lines[t], *action_lines]), dtype=np.float64)
            chosen[t] = rng.choice(len(pmf), p=pmf / pmf.sum())
            probs.append(pmf[chosen[t]])
        for t, p in zip(idx, probs):
            lines = list(action_lines)
            lines[chosen[t]] = f"0:{-R[t, chosen[t]]}:{p} {lines[chosen[t]]}"
            vw.learn([shared_lines[t], *lines])
    total = time.perf_counter() - start
    vw.finish()
    return _summary(Q, chosen, total, 0.0, per_round=True)


def run_obp(name: str, X, A, R, Q, batch: int, seed: int) -> dict:
    import obp.policy as obp_policy

    policy = getattr(obp_policy, name)(
        dim=X.shape[1], n_actions=A.shape[0], batch_size=batch, random_state=seed
    )
    n = len(X)
    chosen = np.empty(n, np.int64)
    start = time.perf_counter()
    for t in range(n):
        x = X[t : t + 1]
        a = int(policy.select_action(x)[0])
        chosen[t] = a
        policy.update_params(action=a, reward=float(R[t, a]), context=x)
    return _summary(Q, chosen, time.perf_counter() - start, 0.0, per_round=True)


def run_uniform(Q, seed: int) -> dict:
    chosen = np.random.default_rng(seed).integers(0, Q.shape[1], len(Q))
    return _summary(Q, chosen, 0.0, 0.0)


def _summary(Q, chosen, decide_s: float, learn_s: float, per_round: bool = False) -> dict:
    n = len(Q)
    got = Q[np.arange(n), chosen]
    regret = Q.max(axis=1) - got
    half = n // 2
    out = {
        "reward": float(got.sum()),
        "regret": float(regret.sum()),
        "regret_1st_half": float(regret[:half].sum()),
        "regret_2nd_half": float(regret[half:].sum()),
        "_curve": np.cumsum(regret),
    }
    if per_round:  # one call decides and learns a round: the time is both
        out["ms_per_1k_rounds"] = 1e6 * decide_s / n
    else:
        out["ms_per_1k_decisions"] = 1e6 * decide_s / n
        out["ms_per_1k_updates"] = 1e6 * learn_s / n
        out["ms_per_1k_rounds"] = 1e6 * (decide_s + learn_s) / n
    return out


def obp_part(n_rounds: int, seeds: list[int], batch: int, kinds: list[str], peers: bool) -> dict:
    out = {}
    for variant in ("stationary", "drift"):
        runs: dict[str, list[dict]] = {}
        for seed in seeds:
            X, A, R, Q = obp_rounds(n_rounds, seed, drift=variant == "drift")
            todo = [("uniform", partial(run_uniform, Q, seed))]
            todo += [
                (kind, partial(run_streamlearn, kind, X, A, R, Q, batch))
                for kind in kinds
                if not _needs_ranker(kind)
            ]
            if peers:
                todo += [(name, partial(run_vw, a, X, A, R, Q, batch, seed)) for name, a in VW_ARGS.items()]
                todo += [(f"obp {p}", partial(run_obp, p, X, A, R, Q, batch, seed)) for p in OBP_POLICIES]
            for name, fn in todo:
                runs.setdefault(name, []).append(fn())
                r = runs[name][-1]
                print(
                    f"  obp {variant} seed {seed} {name:>22}: reward {r['reward']:8.1f} regret {r['regret']:7.1f} "
                    f"({r['ms_per_1k_rounds']:.0f} ms/1k rounds)",
                    flush=True,
                )
        out[variant] = runs
    return out


# ------------------------------------------------------------------------------ the project's world


def project_part(
    n_requests: int, seeds: list[int], batch: int, kinds: list[str], n_logged: int, dim: int, peers: bool
) -> dict:
    """streamlearn's policies, VW and the ranker-based policies on :mod:`pipeline.simulate`."""
    import bandits as own

    from pipeline.simulate import SimConfig

    runs: dict[str, list[dict]] = {}
    for seed in seeds:
        config = SimConfig(seed=seed, n_candidates=10)
        folder = tempfile.TemporaryDirectory()
        embeddings, info = own.pretrain_embeddings(config, n_logged, Path(folder.name))
        checkpoint = str(Path(folder.name) / "ranker.ckpt")
        print(f"  project seed {seed}: ranker pretrained, val AUC {info['val_auc']:.3f}", flush=True)
        stream = own._Stream(config, n_requests, batch, dim, skip=n_logged, embeddings=embeddings)
        scores = _ranker_scores(stream, embeddings)
        best = np.concatenate([b[2] for b in stream.batches])
        todo = {
            "uniform": partial(own.run_uniform, stream, seed),
            "ranker greedy (frozen)": partial(own.run_fixed, stream, stream.ranker_choice),
        }
        if peers:
            todo["vw --epsilon 0.05"] = partial(own.run_vw, stream, seed)
        for kind in kinds:
            if not getattr(POLICIES[kind], "uses_action_features", False):
                todo[kind] = partial(_run_per_arm, kind, stream, dim)
        for kind in kinds:
            if _needs_ranker(kind):
                todo[kind] = partial(_run_neural_linear, kind, stream, checkpoint, seed)
        for kind in kinds:
            if getattr(POLICIES[kind], "uses_action_features", False) and not _needs_ranker(kind):
                todo[f"{kind} on ranker score"] = partial(_run_on_scores, kind, stream, scores, dim)
                todo[f"{kind} on ranker score, shared only"] = partial(
                    _run_on_scores, kind, stream, scores, dim, per_arm=False
                )
        for name, fn in todo.items():
            res = fn()
            if res is None:  # a peer that is not installed (--no-peers, or the project's own venv)
                continue
            res = {
                "reward": res["cumulative_reward"],
                "regret": res["cumulative_regret"],
                "regret_1st_half": res["regret_first_half"],
                "regret_2nd_half": res["regret_second_half"],
                "ms_per_1k_rounds": 1e6 * (res.get("select_s", 0.0) + res.get("update_s", 0.0)) / len(best),
                "_curve": res["_curve_regret"],
            }
            runs.setdefault(name, []).append(res)
            print(
                f"  project seed {seed} {name:>34}: reward {res['reward']:8.1f} regret {res['regret']:7.1f}",
                flush=True,
            )
        folder.cleanup()
    return runs


def _needs_ranker(kind: str) -> bool:
    """The neural-linear kinds explore around a pretrained ranker: no ranker, no policy."""
    return kind.startswith("neural_")


def _run_neural_linear(kind: str, stream, checkpoint: str, seed: int) -> dict:
    """A neural-linear policy with its defaults; every candidate's pair features come from its ranker."""
    from pipeline.events import EventRules, decode_arrow
    from pipeline.features import FeatureSpec, Featurizer

    policy = POLICIES[kind](checkpoint=checkpoint, seed=seed)
    env, featurizer = stream.oracle(), Featurizer(FeatureSpec())

    def decide(i, ctx, X):
        every, _ = decode_arrow(env.records(ctx, ctx.candidates), EventRules())
        A = policy.pair_features(featurizer.transform(every)).reshape(*ctx.candidates.shape, -1)
        return policy.select(None, ctx.candidates, action_features=A)[0][:, 0], A

    def learn(i, X, rows, j, items, r, A):
        policy.update(None, items, r, action_features=A[rows, j])

    return _closed_loop(stream, decide, learn)


def _closed_loop(stream, decide, learn) -> dict:
    """One run over the stream's batches: ``decide(i, ctx, X) -> (positions, extra)`` for batch i,
    the environment's rewards, then ``learn(i, X, rows, positions, items, rewards, extra)``;
    decide and learn are timed."""
    import bandits as own

    env = stream.oracle()
    reward, regret = [], []
    decide_s = learn_s = 0.0
    for i, (ctx, X, best_p) in enumerate(stream.batches):
        t0 = time.perf_counter()
        j, extra = decide(i, ctx, X)
        t1 = time.perf_counter()
        rows = np.arange(len(ctx))
        items = ctx.candidates[rows, j]
        p = env.reward_probabilities(ctx, items)
        r = env.step(ctx, items)
        t2 = time.perf_counter()
        learn(i, X, rows, j, items, r, extra)
        decide_s, learn_s = decide_s + t1 - t0, learn_s + time.perf_counter() - t2
        reward.append(p)
        regret.append(best_p - p)
    return own._summary(np.concatenate(reward), np.concatenate(regret), decide_s, learn_s)


def _run_per_arm(kind: str, stream, dim: int) -> dict:
    import bandits as own

    return own.run_policy(make_policy(kind, dim, 1), stream)


def _ranker_scores(stream, embeddings) -> list[np.ndarray]:
    """The frozen ranker's logit of every candidate, ``[n, m]`` per batch."""
    from pipeline.events import EventRules, decode_arrow
    from pipeline.features import FeatureSpec, Featurizer

    env = stream.oracle()
    featurizer = Featurizer(FeatureSpec())
    out = []
    for ctx, _, _ in stream.batches:
        every, _ = decode_arrow(env.records(ctx, ctx.candidates), EventRules())
        out.append(embeddings.ranker.logits(featurizer.transform(every)).reshape(ctx.candidates.shape))
    return out


def _run_on_scores(kind: str, stream, scores: list[np.ndarray], dim: int, per_arm: bool = True) -> dict:
    """A shared-parameter policy whose item feature is the ranker's score of the (user, candidate) pair.

    With ``per_arm=False`` the policy has no per-item weights: it learns (and explores) only how
    the context shifts the ranker's score, where the per-item parts explore each of the items."""
    policy = POLICIES[kind](dim=dim, action_dim=1, per_arm=per_arm)

    def decide(i, ctx, X):
        return policy.select(X, ctx.candidates, action_features=scores[i][:, :, None])[0][:, 0], None

    def learn(i, X, rows, j, items, r, _):
        policy.update(X, items, r, action_features=scores[i][rows, j][:, None])

    return _closed_loop(stream, decide, learn)


# ------------------------------------------------------------------------------------ reporting


def aggregate(runs: dict[str, list[dict]]) -> list[dict]:
    rows = []
    for name, results in runs.items():
        row = {"policy": name, "seeds": len(results)}
        for key in results[0]:
            if key.startswith("_"):
                continue
            v = np.array([r[key] for r in results])
            row[key] = float(v.mean())
            row[key + "_std"] = float(v.std())
        rows.append(row)
    return sorted(rows, key=lambda r: -r["reward"])


def render(rows: list[dict]) -> str:
    shown = []
    for r in rows:
        s = dict(r)
        for key in ("reward", "regret", "regret_1st_half", "regret_2nd_half"):
            s[key] = f"{r[key]:,.0f} ± {r[key + '_std']:,.0f}"
        for key in ("ms_per_1k_decisions", "ms_per_1k_updates", "ms_per_1k_rounds"):
            s[key] = f"{r[key]:,.1f}" if key in r else "–"
        shown.append(s)
    cols = [
        ("policy", "policy"),
        ("reward", "reward"),
        ("regret", "regret"),
        ("regret_1st_half", "regret 1st half"),
        ("regret_2nd_half", "regret 2nd half"),
        ("ms_per_1k_decisions", "ms / 1k decisions"),
        ("ms_per_1k_updates", "ms / 1k updates"),
        ("ms_per_1k_rounds", "ms / 1k rounds"),
    ]
    return table(shown, cols)


def plot(parts: dict[str, dict[str, list[dict]]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, len(parts), figsize=(6 * len(parts), 4.5), squeeze=False)
    for ax, (title, runs) in zip(axes[0], parts.items()):
        for name, results in runs.items():
            if name == "uniform":
                continue
            curve = np.mean([r["_curve"] for r in results], axis=0)
            style = "-" if not name.startswith(("vw", "obp", "ranker")) else "--"
            ax.plot(curve, style, label=name, lw=1.2)
        ax.set_title(title)
        ax.set_xlabel("round")
        ax.set_ylabel("cumulative regret (mean over seeds)")
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=10_000, help="rounds per run on obp's simulator")
    ap.add_argument(
        "--requests", type=int, default=40_000, help="requests per run on the project's simulator"
    )
    ap.add_argument("--logged", type=int, default=200_000, help="events the ranker is pretrained on")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--kinds", default=",".join(POLICIES), help="streamlearn policies to run")
    ap.add_argument("--skip-project", action="store_true", help="only obp's simulator")
    ap.add_argument("--skip-obp", action="store_true", help="only the project's simulator")
    ap.add_argument(
        "--name", default="bandits_peers", help="results file name (benchmarks/results/NAME.json, .png)"
    )
    ap.add_argument(
        "--dim", type=int, default=64, help="context slots on the project's simulator (16 of them embeddings)"
    )
    ap.add_argument("--no-peers", action="store_true", help="streamlearn policies only (no obp / VW)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    seeds = [int(s) for s in args.seeds.split(",")]
    kinds = [k for k in args.kinds.split(",") if k]
    start = time.perf_counter()
    result = {
        "config": {
            "rounds": args.rounds,
            "requests": args.requests,
            "logged": args.logged,
            "seeds": seeds,
            "batch": args.batch,
            "actions": N_ACTIONS,
            "dim_context": DIM_CONTEXT,
            "dim_action": DIM_ACTION,
        }
    }
    parts: dict[str, dict[str, list[dict]]] = {}
    obp_runs = {} if args.skip_obp else obp_part(args.rounds, seeds, args.batch, kinds, not args.no_peers)
    for variant, runs in obp_runs.items():
        parts[f"obp simulator, {variant}"] = runs
        result[f"obp_{variant}"] = aggregate(runs)
    if not args.skip_project:
        runs = project_part(args.requests, seeds, args.batch, kinds, args.logged, args.dim, not args.no_peers)
        parts["project simulator"] = runs
        result["project"] = aggregate(runs)
    result["seconds"] = time.perf_counter() - start
    for key in ("obp_stationary", "obp_drift", "project"):
        if key in result:
            print(f"\n## {key}\n" + render(result[key]))
    path = save(args.name, result)
    plot(parts, RESULTS / f"{args.name}.png")
    print(f"\nwrote {path} in {result['seconds']:.0f} s")


if __name__ == "__main__":
    main()
