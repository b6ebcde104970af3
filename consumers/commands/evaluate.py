"""``streamlearn evaluate``: off-policy evaluation of a policy on logged events.

Estimates what a *target* policy would have earned on the logged requests from the logged rewards
and the logging policy's propensities (:mod:`pipeline.ope`): IPS, SNIPS and doubly robust (DR)
with confidence intervals and effective sample sizes, and Li et al.'s (2011) replay estimator,
unbiased when the log is uniformly random. The logging policy's own average reward (the
on-policy value of the log) is printed beside them for reference.

The log is read, validated and deduplicated as ``streamlearn replay`` reads it (same
configuration); invalid records are counted and skipped. The target is one of:

``--policy NAME``
    A bandit policy learned prequentially over the log. ``NAME`` is a configured bandit
    learner's name, or a kind (any of ``POLICY_KINDS``: linucb, diag_linucb, linear_ts, beta_ts,
    epsilon_greedy, hybrid_linucb, hybrid_ts, bootstrap, neural_linucb, neural_ts) whose
    parameters come from the first configured learner of that kind, else the defaults with
    ``dim=16`` (the neural-linear kinds need a configured ``checkpoint``). For every micro-batch (``--batch-size``) the policy's top-1 decision is taken as a
    distribution over the candidates *before* it learns the batch
    (:class:`~pipeline.learners.bandits.offpolicy.PrequentialEvaluation`); then it learns from
    every event of the batch.

    * Candidates: an event's own ``candidates`` field where the log has one (the set the logging
      policy chose from: the serving decision log and the simulator write it), so the target
      decides among exactly what the logger decided among. Events without one use every item of
      a valid event of the log, or its ``--candidates N`` most frequent (ties by id), fixed for
      the whole run — found by a first pass over the log; a logged item outside them has target
      probability 0. The logging propensities must refer to the same set: where the logging
      policy chose among per-request subsets that the log does not record, IPS estimates
      ``Σ_a π(a|x) P(a offered) r(x, a)``, not the policy's value (a note says how many events
      were evaluated that way).
    * Target probability of the logged item: the probability that the policy picks it
      (:meth:`~pipeline.learners.bandits.BanditPolicy.distribution`): 1 or 0 for the
      deterministic LinUCB and Diag-LinUCB (IPS and DR stay unbiased; only events where the
      policy agrees with the log carry weight — see the ESS), exact for ε-greedy, a Monte-Carlo
      estimate for Thompson sampling (its ``n_mc`` draws, or 100, per event and candidate: the
      cost of evaluating a Thompson policy).
    * Only events at position 0 (or without a position) are evaluated, since the policy fills
      one slot; all events are learned.
    * DR's reward model: the policy's own reward estimates, clipped to [0, 1].
    * Replay: an event matches when a choice drawn from the policy's distribution is the logged
      item. Unlike Li et al.'s replay of a learning policy, the policy learns every logged event,
      so every estimator targets the same policy.
    * Contexts come from the event's features (:func:`~pipeline.learners.bandits.context_vectors`).
      Configure ``exclude_features`` with the features that describe the shown item (price,
      category, ...): otherwise the logged action leaks into the context and biases the estimate.

``--target-probs FILE``
    A Parquet table of target probabilities from elsewhere, either

    * column ``pi_e``: one row per valid event in log order (the row count must equal the number
      of valid events), or
    * columns ``item_id``, ``position``, ``prob``: a context-free policy, joined on each logged
      event's item and position (an event without a position counts as position 0). Logged pairs
      missing from the table get probability 0; they are counted and reported.

    DR's reward model: with ``item_id, position, prob``, per-item mean rewards cross-fitted over
    two halves of the log (:func:`~pipeline.learners.bandits.offpolicy.item_position_model`);
    with ``pi_e`` the target's probabilities of the other items are unknown, so DR is omitted
    (with a note). Replay: the event matches with probability ``pi_e`` (a seeded draw), which is
    the replay of a policy that picks the logged item with that probability.

IPS, SNIPS and DR use the events with a logging propensity in (0, 1]; replay needs none.
``--max-weight`` clips the importance weights ``π_e / p`` (clipped IPS: less variance, some bias).
The mean importance weight is reported as a diagnostic: its expectation is 1 whenever the target
chooses among the items the logging policy chose among, so a note flags a mean more than three
standard errors away (mismatched candidate sets, target probabilities that do not sum to 1, or
wrong propensities).
Exit status: 0 on success, 2 on a usage or configuration error (the message names the argument
or column).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

from consumers.commands.common import config_from_args, positive_int
from pipeline.config import Config
from pipeline.errors import ConfigError

if TYPE_CHECKING:  # numpy, pyarrow and the learners are imported where used: `--help` needs none
    import numpy as np
    import pyarrow as pa

    from pipeline.events import EventRules
    from pipeline.learners.bandits import BanditPolicy
    from pipeline.ope import Interval

__all__ = ["register", "run"]

ESTIMATORS = ("ips", "snips", "dr", "replay")
#: the bandit kinds of pipeline.learners.bandits.POLICIES (a test keeps the two equal)
POLICY_KINDS = (
    "linucb",
    "diag_linucb",
    "linear_ts",
    "beta_ts",
    "epsilon_greedy",
    "hybrid_linucb",
    "hybrid_ts",
    "bootstrap",
    "neural_linucb",
    "neural_ts",
)
DEFAULT_DIM = 16
_FIELDS = ("value", "lower", "upper", "std_error", "ess", "n")


def _log_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [
            ("item_id", pa.string()),
            ("label", pa.float64()),
            ("propensity", pa.float64()),
            ("position", pa.int64()),
        ]
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="off-policy evaluation of a policy on logged events (IPS, SNIPS, DR, replay)",
        description="Estimate a target policy's value on logged events from the logging propensities: "
        "IPS, SNIPS and doubly robust with confidence intervals and effective sample size, and the "
        "replay estimator for uniformly random logs. The target is a bandit policy learned "
        "prequentially over the log (--policy) or a table of probabilities (--target-probs).",
        epilog="With --policy each event is evaluated on its own candidates field where the log has "
        "one (the set the logging policy chose from), else on every item of the log (or its "
        "--candidates N most frequent), fixed for the run; the policy's top-1 distribution over them is taken before it "
        "learns each batch; only position-0 events are evaluated; deterministic policies (LinUCB) "
        "give probability 1 to their choice and 0 elsewhere; DR uses the policy's own reward "
        "estimates. With --target-probs: column pi_e (one row per valid event, log order; DR "
        "omitted) or columns item_id, position, prob (missing pairs count as 0; DR uses per-item "
        "mean rewards cross-fitted on two halves). See the module documentation for details.",
    )
    p.add_argument("paths", nargs="+", metavar="LOG", help="event files, directories or glob patterns")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--policy",
        metavar="NAME",
        help=f"bandit kind ({', '.join(POLICY_KINDS)}) or configured bandit learner name, learned on the log",
    )
    target.add_argument(
        "--target-probs",
        metavar="FILE",
        help="Parquet with column pi_e (per valid event, log order) or columns item_id, position, prob",
    )
    p.add_argument("--config", metavar="FILE", help="TOML configuration (event rules, features, learners)")
    p.add_argument(
        "--batch-size",
        type=positive_int,
        metavar="N",
        help="events per micro-batch (the policy's update cadence)",
    )
    p.add_argument(
        "--estimators",
        default="ips,snips,dr,replay",
        metavar="LIST",
        help="comma-separated subset of ips, snips, dr, replay (default: all)",
    )
    p.add_argument("--alpha", type=float, default=0.05, help="1 - confidence level (default: 0.05)")
    p.add_argument("--interval", choices=("normal", "bootstrap"), default="normal")
    p.add_argument("--n-bootstrap", type=positive_int, default=1000, metavar="N", help="bootstrap resamples")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table", help="output format")
    p.add_argument("--max-weight", type=float, metavar="W", help="clip importance weights at W")
    p.add_argument(
        "--candidates",
        type=positive_int,
        metavar="N",
        help="--policy: events without a candidates field choose among the N most frequent items only",
    )
    p.add_argument("--seed", type=int, help="seed of the random draws (default: the config's seed)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        report = _evaluate(args)
    except ConfigError as exc:
        print(f"streamlearn evaluate: error: {exc}", file=sys.stderr)
        return 2
    print(_render(report, args.format), end="")
    return 0


# ------------------------------------------------------------------------------ the two targets


def _evaluate(args: argparse.Namespace) -> dict[str, Any]:
    estimators = _parse_estimators(args.estimators)
    if not (0 < args.alpha < 1):
        raise ConfigError(f"--alpha must be in (0, 1), got {args.alpha}")
    if args.max_weight is not None and not (args.max_weight > 0 and math.isfinite(args.max_weight)):
        raise ConfigError(f"--max-weight must be a finite number > 0, got {args.max_weight}")
    if args.candidates is not None and (args.candidates < 1 or args.target_probs):
        raise ConfigError(f"--candidates must be >= 1 and goes with --policy, got {args.candidates}")
    if args.interval == "bootstrap" and args.n_bootstrap < 2:
        raise ConfigError(f"--n-bootstrap must be >= 2, got {args.n_bootstrap}")
    config = config_from_args(args)
    seed = config.seed if args.seed is None else args.seed
    if args.policy:
        rounds, counts, target, notes = _policy_rounds(args, config, seed)
    else:
        rounds, counts, target, notes = _table_rounds(args, config, seed)
    if counts["valid"] == 0:
        raise ConfigError("the log holds no valid event")
    if "dr" in estimators and "q_hat" not in rounds:
        notes.append("DR omitted: with per-event pi_e the target's probabilities of other items are unknown")
        estimators.remove("dr")
    return _report(rounds, counts, target, notes, estimators, args, seed)


def _parse_estimators(text: str) -> list[str]:
    names = [s.strip().lower() for s in text.split(",") if s.strip()]
    bad = [s for s in names if s not in ESTIMATORS]
    if bad or not names:
        raise ConfigError(
            f"--estimators: unknown estimator {bad[0] if bad else text!r}; allowed: ips, snips, dr, replay"
        )
    return list(dict.fromkeys(names))


def _rules(config: Config) -> EventRules:
    from pipeline.events import EventRules

    ev = config.events
    return EventRules.from_config(ev)


def _read_log(args: argparse.Namespace, config: Config) -> tuple[pa.Table, dict[str, int]]:
    """Valid, deduplicated events (item_id, label, propensity, position) in log order, and counts."""
    import pyarrow as pa

    from consumers.file_source import FileSource
    from pipeline.dedup import Deduplicator
    from pipeline.events import decode_arrow, decode_json

    log_schema = _log_schema()
    rules, dedup = _rules(config), Deduplicator(config.events.dedup_window)
    source = FileSource(args.paths, config.source.batch_size, config.source.format)
    parts, counts = [], {"records": 0, "invalid": 0, "duplicates": 0}
    for raw in source:
        events, dead = (
            decode_arrow(raw.arrow, rules) if raw.arrow is not None else decode_json(raw.values, rules)
        )
        keep = dedup.filter(events.column("event_id"))
        counts["records"] += len(raw)
        counts["invalid"] += len(dead)
        counts["duplicates"] += int(len(keep) - keep.sum())
        cols = [events.column(c) for c in log_schema.names]
        parts.append(pa.Table.from_arrays(cols, schema=log_schema).filter(pa.array(keep)))
    table = pa.concat_tables(parts) if parts else log_schema.empty_table()
    counts["valid"] = table.num_rows
    return table, counts


def _policy_rounds(args, config: Config, seed: int):
    import pyarrow as pa
    import pyarrow.compute as pc

    from consumers.file_source import FileSource
    from consumers.stack import build_stack
    from pipeline.learners.bandits.offpolicy import PrequentialEvaluation

    log, counts = _read_log(args, config)
    if not log.num_rows:
        return {}, counts, {}, []
    freq = pc.value_counts(log.column("item_id")).flatten()
    order = pc.sort_indices(
        pa.table({"n": freq[1], "id": freq[0]}), [("n", "descending"), ("id", "ascending")]
    )
    candidates = freq[0].take(order).to_pylist()[: args.candidates or None]
    policy = _build_policy(args.policy, config, seed)
    evaluation = PrequentialEvaluation(policy, candidates, seed=seed)
    # the replay's runner over the wrapped policy; no drift monitor: a fixed log has no live model to watch
    runner = build_stack(config, learners=[evaluation], drift=False).runner
    runner.run(FileSource(args.paths, config.source.batch_size, config.source.format))
    rec = evaluation.records()
    if len(rec["reward"]) != counts["valid"]:  # both passes apply the same rules: a changed file
        raise ConfigError(
            f"the log changed while it was read ({counts['valid']} then {len(rec['reward'])} events)"
        )
    scope = rec["position"] <= 0
    notes = _candidate_notes(rec, scope, candidates, args.candidates)
    if (~scope).any():
        notes.append(f"{int((~scope).sum())} events at position > 0 learned but not evaluated")
    missed = int((scope & (rec["candidate"] < 0)).sum())
    if missed:
        notes.append(f"{missed} evaluated events show an item outside the candidates (target probability 0)")
    rounds = {
        "reward": rec["reward"],
        "pscore": rec["pscore"],
        "target_prob": rec["target_prob"],
        "q_hat": rec["q_hat"],
        "q_target": rec["q_target"],
        "action": rec["candidate"],
        "target_action": rec["choice"],
        "scope": scope,
    }
    target = {
        "policy": policy.name,
        "kind": policy.kind,
        "params": policy.params(),
        "candidates": len(candidates),
        "events_on_own_candidates": int((rec["own_candidates"] & scope).sum()),
    }
    return rounds, counts, target, notes


def _candidate_notes(rec, scope, candidates: list, limited: int | None) -> list[str]:
    """What the evaluated events were evaluated on: their own candidate sets, the fixed set, or both."""
    import numpy as np

    own = rec["own_candidates"] & scope
    rest = int((scope & ~rec["own_candidates"]).sum())
    notes = []
    if own.any():
        sizes = rec["n_candidates"][own]
        low, high = int(sizes.min()), int(sizes.max())
        span = f"{low}" if low == high else f"{low} to {high}, median {int(np.median(sizes))}"
        notes.append(f"candidates: each event's own set for {int(own.sum())} evaluated events ({span} items)")
    if rest or not own.any():
        which = f"the {len(candidates)} most frequent items" if limited else "every item"
        head = "candidates" if not own.any() else "the other"
        notes.append(
            f"{head}: {which} of the log ({len(candidates)})"
            + (f" for {rest} evaluated events without a candidates field" if own.any() else "")
        )
        if rest:
            notes.append(
                "events without a candidates field are scored against a fixed set: if their logger "
                "chose among fewer items, the estimates are not the policy's value there"
            )
    return notes


def _build_policy(name: str, config: Config, seed: int) -> BanditPolicy:
    from pipeline.learners.bandits import POLICIES
    from pipeline.learners.registry import build_learner

    bandits = [s for s in config.learners if s.kind in POLICIES]
    specs = [s for s in bandits if s.label == name] or [s for s in bandits if s.kind == name]
    if specs:
        kind, params = specs[0].kind, dict(specs[0].params)
    elif name in POLICIES:
        kind, params = name, {}
    else:
        raise ConfigError(
            f"--policy must be a bandit kind ({', '.join(POLICIES)}) or a configured bandit learner's name, got {name!r}"
        )
    if POLICIES[kind].uses_context:
        params.setdefault("dim", DEFAULT_DIM)
    params.setdefault("seed", seed)
    params["gauge_window"] = 0  # the command reports its own estimates; no running gauge needed
    return build_learner(kind, name, params)


def _table_rounds(args, config: Config, seed: int):
    import numpy as np

    from pipeline.learners.bandits.offpolicy import item_position_model, join_item_position

    target_table = _read_target(args.target_probs)
    log, counts = _read_log(args, config)
    n = log.num_rows
    reward = log.column("label").to_numpy()
    pscore = log.column("propensity").fill_null(math.nan).to_numpy(zero_copy_only=False)
    rounds: dict[str, np.ndarray] = {"reward": reward, "pscore": pscore, "scope": np.ones(n, bool)}
    notes: list[str] = []
    info: dict[str, Any] = {"target_probs": args.target_probs}
    if "pi_e" in target_table.column_names:
        if target_table.num_rows != n:
            raise ConfigError(
                f"--target-probs: column pi_e has {target_table.num_rows} rows but the log has {n} valid events"
            )
        rounds["target_prob"] = target_table.column("pi_e").to_numpy()
        info["kind"] = "per_event"
    else:
        items = log.column("item_id")
        positions = log.column("position").fill_null(0).to_numpy(zero_copy_only=False)
        rounds["target_prob"], missing = join_item_position(items, positions, target_table)
        rounds["q_hat"], rounds["q_target"] = item_position_model(
            items, positions, reward, target_table, seed
        )
        counts["missing_pairs"] = missing
        if missing:
            notes.append(
                f"{missing} logged (item_id, position) pairs are not in --target-probs: probability 0"
            )
        info["kind"] = "per_item_position"
    u = np.random.default_rng(seed).random(n)
    rounds["action"] = np.zeros(n, np.int64)
    rounds["target_action"] = np.where(u < rounds["target_prob"], 0, -1)  # replay: match with prob pi_e
    return rounds, counts, info, notes


def _read_target(path: str) -> pa.Table:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.learners.bandits.offpolicy import check_target_table

    try:
        return check_target_table(pq.read_table(path))
    except (OSError, pa.ArrowInvalid) as exc:
        raise ConfigError(f"--target-probs: cannot read Parquet file {path!r}: {exc}") from None
    except ValueError as exc:
        raise ConfigError(f"--target-probs: {exc}") from None


# ------------------------------------------------------------------------------ estimates and output


def _report(rounds, counts, target, notes, estimators, args, seed) -> dict[str, Any]:
    import numpy as np

    from pipeline.ope import IPS, SNIPS, DoublyRobust, LoggedBandit, Replay

    classes = {"ips": IPS, "snips": SNIPS, "dr": DoublyRobust}
    reward, pscore, scope = rounds["reward"], rounds["pscore"], rounds["scope"]
    logged = scope & np.isfinite(pscore) & (pscore > 0) & (pscore <= 1)
    counts["evaluated"] = int(logged.sum())
    counts["without_propensity"] = int((scope & ~logged).sum())
    data = LoggedBandit(
        **{
            k: rounds[k][logged]
            for k in ("reward", "pscore", "target_prob", "q_hat", "q_target")
            if k in rounds
        }
    )
    replay = LoggedBandit(
        reward=reward[scope], action=rounds["action"][scope], target_action=rounds["target_action"][scope]
    )
    results: dict[str, Interval] = {}
    for key in estimators:
        est = Replay() if key == "replay" else classes[key](max_weight=args.max_weight)
        sample = replay if key == "replay" else data
        if not len(sample):
            why = (
                "no event at position 0" if key == "replay" else "no event has a logging propensity in (0, 1]"
            )
            notes.append(f"{est.name} skipped: {why}")
            continue
        results[est.name] = est.estimate_interval(
            sample, args.alpha, args.interval, max(args.n_bootstrap, 2), seed
        )
    p = pscore[logged]
    if "Replay" in results and len(p) and p.max() > p.min() * (1 + 1e-9):
        notes.append(
            f"Replay assumes uniformly random logging; this log's propensities range {p.min():.4g}..{p.max():.4g}"
        )
    weight = _mean_interval(data.target_prob / data.pscore, args.alpha) if len(data) else None
    if weight and abs(weight["value"] - 1) > 3 * weight["std_error"]:
        notes.append(
            f"mean importance weight {weight['value']:.4g} ± {weight['std_error']:.2g}, where 1 is expected "
            "when the target chooses among the items the logging policy chose among (same candidates, "
            "probabilities summing to 1, right propensities): IPS and DR are biased; SNIPS normalises"
        )
    base = reward[logged] if logged.any() else reward[scope]
    return {
        "target": target,
        "events": counts,
        "mean_weight": weight,
        "logged": _mean_interval(base, args.alpha),
        "estimates": {name: {f: getattr(iv, f) for f in _FIELDS} for name, iv in results.items()},
        "alpha": args.alpha,
        "interval": args.interval,
        "max_weight": args.max_weight,
        "notes": notes,
    }


def _mean_interval(r: np.ndarray, alpha: float) -> dict[str, float]:
    n = len(r)
    value = float(r.mean()) if n else math.nan
    se = float(r.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    z = NormalDist().inv_cdf(1 - alpha / 2)
    return dict(zip(_FIELDS, (value, value - z * se, value + z * se, se, float(n), n)))


def _render(report: dict[str, Any], fmt: str) -> str:
    rows = [(name, iv) for name, iv in report["estimates"].items()] + [("logged", report["logged"])]
    if fmt == "json":
        return json.dumps(_finite(report), indent=2, default=str) + "\n"
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["estimator", *_FIELDS])
        writer.writerows([name, *(iv[f] for f in _FIELDS)] for name, iv in rows)
        return out.getvalue()
    return _table(report, rows)


def _table(report: dict[str, Any], rows) -> str:
    ev, target = report["events"], report["target"]
    what = (
        f"policy {target['policy']} ({target['kind']})"
        if "policy" in target
        else f"target probabilities {target['target_probs']}"
    )
    lines = [
        f"target: {what}",
        f"events: {ev['records']:,} records, {ev['valid']:,} valid, {ev['invalid']:,} invalid, "
        f"{ev['duplicates']:,} duplicates; {ev['evaluated']:,} with a logging propensity",
        f"confidence: {1 - report['alpha']:.0%} ({report['interval']})",
        "",
        f"{'estimator':<10}{'value':>10}{'lower':>10}{'upper':>10}{'std_error':>11}{'ESS':>11}{'n':>9}",
    ]
    for name, iv in rows:
        if name == "logged":
            lines.append("-" * 71)
        nums = "".join(f"{iv[f]:>10.4f}" for f in ("value", "lower", "upper")) + f"{iv['std_error']:>11.4f}"
        lines.append(f"{name:<10}{nums}{iv['ess']:>11.1f}{iv['n']:>9,}")
    lines.append("(logged = the logging policy's own average reward, on-policy)")
    lines += [f"note: {n}" for n in report["notes"]]
    return "\n".join(lines) + "\n"


def _finite(obj):
    """NaN and infinities as null: strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    import numpy as np  # loaded by then: the estimates are numpy

    if isinstance(obj, np.generic):
        return _finite(obj.item())
    return obj
