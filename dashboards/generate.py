"""Generate the Grafana dashboards of streamlearn (``grafana/dashboards/*.json``) from one readable spec.

The JSON files are committed (Grafana provisions them as they are); this script is where they are
edited. ``python dashboards/generate.py`` rewrites them; ``--check`` exits 1 if a committed file
differs from what the spec gives (a test runs it). Every query uses only metric names defined in
``pipeline/metrics.py`` and the dashboard variables ``$datasource``, ``$job`` (and per dashboard
``$learner``, ``$signal``, ``$policy``), plus Grafana's ``$__rate_interval`` and ``$__range``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "grafana" / "dashboards"
DS = {"type": "prometheus", "uid": "${datasource}"}
JOB = 'job=~"$job"'
RI = "$__rate_interval"


def q(expr: str, legend: str = "", instant: bool = False) -> dict:
    """One Prometheus query of a panel."""
    t = {"expr": expr, "legendFormat": legend or "__auto", "range": not instant, "instant": instant}
    return {"datasource": DS, "refId": "", **t}


def panel(
    title: str,
    kind: str,
    queries: list[dict],
    unit: str = "short",
    w: int = 12,
    h: int = 8,
    desc: str = "",
    **opts,
) -> dict:
    out = {
        "title": title,
        "type": kind,
        "description": desc,
        "datasource": DS,
        "gridPos": {"w": w, "h": h},
        "targets": [dict(t, refId=chr(ord("A") + i)) for i, t in enumerate(queries)],
        "fieldConfig": {"defaults": {"unit": unit, **opts.pop("defaults", {})}, "overrides": []},
        "options": opts.pop("options", {}),
    }
    if kind == "timeseries":
        out["options"].setdefault(
            "legend", {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull"]}
        )
        out["options"].setdefault("tooltip", {"mode": "multi", "sort": "desc"})
    out.update(opts)
    return out


def row(title: str) -> dict:
    return {"title": title, "type": "row", "collapsed": False, "gridPos": {"w": 24, "h": 1}, "panels": []}


def var_query(name: str, label: str, query: str, multi: bool = True) -> dict:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "query": {"query": query, "refId": f"{name}-var"},
        "definition": query,
        "refresh": 2,
        "multi": multi,
        "includeAll": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


def variables(*extra: dict) -> list[dict]:
    datasource = {
        "name": "datasource",
        "label": "Prometheus",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "refresh": 1,
    }
    job = var_query("job", "job", "label_values(streamlearn_build_info, job)")
    return [datasource, job, *extra]


def layout(panels: list[dict]) -> list[dict]:
    """Place panels left to right, wrapping at 24 columns; rows take a full line."""
    x = y = line_h = 0
    for i, p in enumerate(panels):
        g = p["gridPos"]
        if p["type"] == "row" or x + g["w"] > 24:
            x, y = 0, y + line_h
            line_h = 0
        g.update(x=x, y=y)
        p["id"] = i + 1
        if p["type"] == "row":
            y, line_h = y + g["h"], 0
        else:
            x, line_h = x + g["w"], max(line_h, g["h"])
    return panels


def dashboard(
    uid: str, title: str, desc: str, panels: list[dict], extra_vars: tuple = (), annotations: tuple = ()
) -> dict:
    builtin = {
        "builtIn": 1,
        "datasource": {"type": "grafana", "uid": "-- Grafana --"},
        "enable": True,
        "hide": True,
        "iconColor": "rgba(0, 211, 255, 1)",
        "name": "Annotations & Alerts",
        "type": "dashboard",
    }
    return {
        "uid": uid,
        "title": title,
        "description": desc,
        "tags": ["streamlearn"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": variables(*extra_vars)},
        "annotations": {"list": [builtin, *annotations]},
        "links": [
            {
                "title": "streamlearn",
                "type": "dashboards",
                "tags": ["streamlearn"],
                "asDropdown": True,
                "includeVars": True,
                "keepTime": True,
            }
        ],
        "panels": layout(panels),
    }


def drift_annotation() -> dict:
    return {
        "name": "Drift alarms",
        "datasource": DS,
        "enable": True,
        "iconColor": "red",
        "expr": f"sum by (signal, detector) (changes(streamlearn_drift_detected_total{{{JOB}}}[2m])) > 0",
        "step": "60s",
        "titleFormat": "drift: {{signal}}",
        "textFormat": "{{detector}}",
        "useValueForTime": False,
    }


# --------------------------------------------------------------------------- the dashboards


def overview() -> dict:
    hist = "streamlearn_event_freshness_seconds_bucket"
    panels = [
        panel(
            "Ready",
            "stat",
            [q(f"min(streamlearn_ready{{{JOB}}})", instant=True)],
            w=4,
            h=4,
            desc="1 while every worker is connected and consuming (the /readyz endpoint).",
            defaults={
                "mappings": [
                    {
                        "type": "value",
                        "options": {
                            "0": {"text": "NOT READY", "color": "red"},
                            "1": {"text": "READY", "color": "green"},
                        },
                    }
                ]
            },
        ),
        panel(
            "Events / s",
            "stat",
            [q(f'sum(rate(streamlearn_events_total{{{JOB}, outcome="applied"}}[{RI}]))', instant=True)],
            unit="ops",
            w=5,
            h=4,
        ),
        panel(
            "Consumer lag (records)",
            "stat",
            [q(f"sum(streamlearn_consumer_lag_records{{{JOB}}})", instant=True)],
            w=5,
            h=4,
        ),
        panel(
            "Freshness p95",
            "stat",
            [q(f"histogram_quantile(0.95, sum by (le) (rate({hist}{{{JOB}}}[{RI}])))", instant=True)],
            unit="s",
            w=5,
            h=4,
        ),
        panel(
            "Dead-letter ratio",
            "stat",
            [
                q(
                    f'sum(rate(streamlearn_events_total{{{JOB}, outcome="dead_letter"}}[{RI}])) / sum(rate(streamlearn_events_total{{{JOB}}}[{RI}]))',
                    instant=True,
                )
            ],
            unit="percentunit",
            w=5,
            h=4,
        ),
        row("Throughput and lag"),
        panel(
            "Records by outcome",
            "timeseries",
            [q(f"sum by (outcome) (rate(streamlearn_events_total{{{JOB}}}[{RI}]))", "{{outcome}}")],
            unit="ops",
            desc="applied, duplicate, late and dead_letter records per second.",
        ),
        panel(
            "Consumer lag per partition",
            "timeseries",
            [
                q(
                    f"sum by (topic, partition) (streamlearn_consumer_lag_records{{{JOB}}})",
                    "{{topic}}/{{partition}}",
                )
            ],
            desc="Records between the committed position and the end of each partition.",
        ),
        panel(
            "Event freshness (apply time - event time)",
            "timeseries",
            [
                q(f"histogram_quantile({p}, sum by (le) (rate({hist}{{{JOB}}}[{RI}])))", f"p{int(p * 100)}")
                for p in (0.5, 0.95, 0.99)
            ],
            unit="s",
        ),
        panel(
            "Batch time by stage (p95)",
            "timeseries",
            [
                q(
                    f"histogram_quantile(0.95, sum by (le, stage) (rate(streamlearn_batch_duration_seconds_bucket{{{JOB}}}[{RI}])))",
                    "{{stage}}",
                )
            ],
            unit="s",
        ),
        row("Delayed-feedback join"),
        panel(
            "Open exposures and pending outcomes",
            "timeseries",
            [
                q(f"sum(streamlearn_join_open_exposures{{{JOB}}})", "open exposures"),
                q(f"sum(streamlearn_join_pending_outcomes{{{JOB}}})", "outcomes before their exposure"),
            ],
            desc="Exposures waiting for outcomes, bounded by join.max_open / join.max_open_bytes (docs/delayed_feedback.md).",
        ),
        panel(
            "Join outcomes",
            "timeseries",
            [
                q(
                    f'sum by (outcome) (rate(streamlearn_join_events_total{{{JOB}, outcome=~"attributed|orphans|after_window|evicted|closed"}}[{RI}]))',
                    "{{outcome}}",
                )
            ],
            unit="ops",
            desc="Orphans: outcomes whose exposure never came; evicted: exposures closed early over the store's bounds.",
        ),
        panel(
            "Join latency (exposure to final label, event time)",
            "timeseries",
            [
                q(
                    f"histogram_quantile({p}, sum by (le) (rate(streamlearn_join_latency_seconds_bucket{{{JOB}}}[{RI}])))",
                    f"p{int(p * 100)}",
                )
                for p in (0.5, 0.95)
            ],
            unit="s",
        ),
        panel(
            "Open exposure bytes",
            "timeseries",
            [q(f"sum(streamlearn_join_open_bytes{{{JOB}}})", "bytes")],
            unit="bytes",
        ),
        row("Dead letters"),
        panel(
            "Dead letters by reason",
            "timeseries",
            [q(f"sum by (reason) (rate(streamlearn_dead_letter_total{{{JOB}}}[{RI}]))", "{{reason}}")],
            unit="ops",
        ),
        panel(
            "Records per micro-batch",
            "timeseries",
            [
                q(
                    f"sum(rate(streamlearn_batch_size_events_sum{{{JOB}}}[{RI}])) / sum(rate(streamlearn_batch_size_events_count{{{JOB}}}[{RI}]))",
                    "mean records per batch",
                )
            ],
        ),
        panel(
            "Running versions",
            "table",
            [q(f"sum by (instance, version) (streamlearn_build_info{{{JOB}}})", instant=True)],
            w=24,
            h=5,
            options={"showHeader": True},
            transformations=[{"id": "labelsToFields", "options": {"mode": "columns"}}],
        ),
    ]
    return dashboard(
        "streamlearn-overview",
        "streamlearn / Overview",
        "Throughput, consumer lag, freshness, the delayed-feedback join and dead letters.",
        panels,
        annotations=(drift_annotation(),),
    )


def models() -> dict:
    lr = 'learner=~"$learner"'
    panels = [
        panel(
            "AUC (windowed, prequential)",
            "timeseries",
            [
                q(
                    f"max by (learner, window) (streamlearn_model_auc{{{JOB}, {lr}}})",
                    "{{learner}} (window {{window}})",
                )
            ],
            defaults={"min": 0.5, "max": 1},
        ),
        panel(
            "AUC by worker",
            "timeseries",
            [
                q(
                    f"min by (learner, instance) (streamlearn_model_auc{{{JOB}, {lr}}})",
                    "{{learner}} @ {{instance}}",
                )
            ],
            desc="Each worker's own window (its smallest), so a cold or lagging worker of a group shows "
            "instead of hiding behind the best one.",
            defaults={"min": 0.5, "max": 1},
        ),
        panel(
            "Logloss (windowed, prequential)",
            "timeseries",
            [
                q(
                    f"max by (learner, window) (streamlearn_model_logloss{{{JOB}, {lr}}})",
                    "{{learner}} (window {{window}})",
                )
            ],
        ),
        panel(
            "Calibration (sum p / sum y)",
            "timeseries",
            [q(f"max by (learner) (streamlearn_model_calibration_ratio{{{JOB}, {lr}}})", "{{learner}}")],
            desc="1 = calibrated; above 1 the learner over-predicts.",
        ),
        panel(
            "Excess logloss over the base rate",
            "timeseries",
            [
                q(
                    f'max by (signal) (streamlearn_drift_score{{{JOB}, method="excess_logloss", signal=~"loss:($learner)"}})',
                    "{{signal}}",
                )
            ],
            desc="The signal the concept-drift detector watches: below 0 the learner beats the recent click rate.",
        ),
        row("Error memory (ReLoop2)"),
        panel(
            "Error-memory buckets in use",
            "timeseries",
            [q(f"max by (learner) (streamlearn_error_memory_entries{{{JOB}, {lr}}})", "{{learner}}")],
        ),
        panel(
            "Mean |compensation|",
            "timeseries",
            [
                q(
                    f"max by (learner) (streamlearn_error_memory_mean_abs_compensation{{{JOB}, {lr}}})",
                    "{{learner}}",
                )
            ],
        ),
    ]
    learner = var_query("learner", "learner", "label_values(streamlearn_model_auc, learner)")
    return dashboard(
        "streamlearn-models",
        "streamlearn / Model quality",
        "Prequential quality per learner.",
        panels,
        (learner,),
        (drift_annotation(),),
    )


def drift() -> dict:
    sig = 'signal=~"$signal"'
    panels = [
        panel(
            "Alarms in the time range",
            "stat",
            [q(f"sum(increase(streamlearn_drift_detected_total{{{JOB}, {sig}}}[$__range]))", instant=True)],
            w=6,
            h=4,
            defaults={"decimals": 0},
        ),
        panel(
            "Alarms by signal and detector",
            "bargauge",
            [
                q(
                    f"sum by (signal, detector) (increase(streamlearn_drift_detected_total{{{JOB}, {sig}}}[$__range]))",
                    "{{signal}} {{detector}}",
                    instant=True,
                )
            ],
            w=18,
            h=4,
            defaults={"decimals": 0},
        ),
        panel(
            "Data-drift scores (PSI, KS, JS, Cramér's V)",
            "timeseries",
            [
                q(
                    f'max by (signal, method) (streamlearn_drift_score{{{JOB}, {sig}, method!="excess_logloss"}})',
                    "{{signal}} {{method}}",
                )
            ],
            w=24,
            desc="Reference window against the current window; alarm thresholds: PSI 0.2, KS 0.2, JS 0.03, Cramér's V 0.1.",
        ),
        panel(
            "Excess logloss per learner (concept-drift signal)",
            "timeseries",
            [
                q(
                    f'max by (signal) (streamlearn_drift_score{{{JOB}, {sig}, method="excess_logloss"}})',
                    "{{signal}}",
                )
            ],
        ),
        panel(
            "Alarms over time",
            "timeseries",
            [
                q(
                    f"sum by (signal, detector) (increase(streamlearn_drift_detected_total{{{JOB}, {sig}}}[5m]))",
                    "{{signal}} {{detector}}",
                )
            ],
            defaults={"custom": {"drawStyle": "bars"}},
        ),
    ]
    signal = var_query("signal", "signal", "label_values(streamlearn_drift_score, signal)")
    return dashboard(
        "streamlearn-drift",
        "streamlearn / Drift",
        "Concept drift on each learner's loss, data drift on features, predictions and labels.",
        panels,
        (signal,),
        (drift_annotation(),),
    )


def bandits() -> dict:
    pol = 'policy=~"$policy"'
    panels = [
        panel(
            "Off-policy value estimate",
            "timeseries",
            [
                q(
                    f"max by (policy, estimator) (streamlearn_policy_value_estimate{{{JOB}, {pol}}})",
                    "{{policy}} {{estimator}}",
                )
            ],
            desc="What each policy would earn if it chose instead of the logging policy (IPS / SNIPS / DR).",
        ),
        panel(
            "Reward rate (windowed)",
            "timeseries",
            [q(f"max by (policy, window) (streamlearn_bandit_reward_rate{{{JOB}, {pol}}})", "{{policy}}")],
            defaults={"min": 0},
        ),
        panel(
            "Arms known",
            "timeseries",
            [q(f"max by (policy) (streamlearn_bandit_arms{{{JOB}, {pol}}})", "{{policy}}")],
        ),
        panel(
            "Policy drift resets",
            "timeseries",
            [
                q(
                    f"sum by (policy) (increase(streamlearn_bandit_drift_resets_total{{{JOB}, {pol}}}[$__range]))",
                    "{{policy}}",
                )
            ],
            desc="A policy's own change detector restarted its exploration (reset_on_drift).",
        ),
        panel(
            "Estimate vs logged reward",
            "timeseries",
            [
                q(
                    f"max by (policy) (streamlearn_policy_value_estimate{{{JOB}, {pol}}}) - on (policy) max by (policy) (streamlearn_bandit_reward_rate{{{JOB}, {pol}}})",
                    "{{policy}}",
                )
            ],
            desc="Above 0: the policy is estimated to beat the logging policy.",
        ),
    ]
    policy = var_query("policy", "policy", "label_values(streamlearn_policy_value_estimate, policy)")
    return dashboard(
        "streamlearn-bandits",
        "streamlearn / Bandits and off-policy estimates",
        "Contextual bandit policies and their off-policy value.",
        panels,
        (policy,),
    )


def state() -> dict:
    last = f"max(streamlearn_snapshot_last_success_timestamp_seconds{{{JOB}}})"
    panels = [
        panel(
            "Since the last snapshot",
            "stat",
            [q(f"time() - {last}", instant=True)],
            unit="s",
            w=6,
            h=4,
            defaults={
                "thresholds": {
                    "mode": "absolute",
                    "steps": [
                        {"color": "green", "value": None},
                        {"color": "orange", "value": 300},
                        {"color": "red", "value": 900},
                    ],
                }
            },
        ),
        panel(
            "Snapshots in the time range",
            "stat",
            [
                q(
                    f"sum(increase(streamlearn_snapshot_duration_seconds_count{{{JOB}}}[$__range]))",
                    instant=True,
                )
            ],
            w=6,
            h=4,
            defaults={"decimals": 0},
        ),
        panel(
            "Snapshot failures in the time range",
            "stat",
            [q(f"sum(increase(streamlearn_snapshot_failures_total{{{JOB}}}[$__range]))", instant=True)],
            w=6,
            h=4,
            defaults={"decimals": 0},
        ),
        panel(
            "Snapshot time p95",
            "stat",
            [
                q(
                    f"histogram_quantile(0.95, sum by (le) (rate(streamlearn_snapshot_duration_seconds_bucket{{{JOB}}}[$__range])))",
                    instant=True,
                )
            ],
            unit="s",
            w=6,
            h=4,
        ),
        panel(
            "Snapshot duration",
            "timeseries",
            [
                q(
                    f"sum(rate(streamlearn_snapshot_duration_seconds_sum{{{JOB}}}[5m])) / sum(rate(streamlearn_snapshot_duration_seconds_count{{{JOB}}}[5m]))",
                    "mean",
                )
            ],
            unit="s",
        ),
        panel(
            "Age of the newest snapshot",
            "timeseries",
            [
                q(
                    f"time() - max by (instance) (streamlearn_snapshot_last_success_timestamp_seconds{{{JOB}}})",
                    "{{instance}}",
                )
            ],
            unit="s",
        ),
        row("Many workers, one model ([group])"),
        panel(
            "Model deltas / s by outcome",
            "timeseries",
            [q(f"sum by (outcome) (rate(streamlearn_group_deltas_total{{{JOB}}}[{RI}]))", "{{outcome}}")],
            unit="ops",
            desc="published and own: this worker's; accepted: peers' added; duplicate: retries or replays "
            "(harmless); conflict, refused, incompatible, unreadable: look at the worker's log.",
        ),
        panel(
            "Delta bytes / s",
            "timeseries",
            [
                q(
                    f"sum by (direction) (rate(streamlearn_group_sync_bytes_total{{{JOB}}}[{RI}]))",
                    "{{direction}}",
                )
            ],
            unit="Bps",
        ),
        panel(
            "Share of each worker's loop on sync",
            "timeseries",
            [
                q(
                    f"sum by (instance) (rate(streamlearn_group_sync_seconds_total{{{JOB}}}[{RI}]))",
                    "{{instance}}",
                )
            ],
            unit="percentunit",
            desc="CPU time making, sending, reading and adding deltas, per second of wall time.",
        ),
        panel(
            "Updates not yet read",
            "timeseries",
            [q(f"max by (instance) (streamlearn_group_updates_lag{{{JOB}}})", "{{instance}}")],
            w=6,
        ),
        panel(
            "Frontier spread (records)",
            "stat",
            [
                q(
                    f"max(streamlearn_group_frontier_records{{{JOB}}}) - min(streamlearn_group_frontier_records{{{JOB}}})",
                    instant=True,
                )
            ],
            w=6,
            desc="How many records the slowest worker's copy of the model is behind the newest one's.",
        ),
        row("Embedding tables"),
        panel(
            "Embedding rows in use",
            "timeseries",
            [q(f"sum by (table) (streamlearn_embedding_rows{{{JOB}}})", "{{table}}")],
        ),
        panel(
            "Embedding evictions / s",
            "timeseries",
            [q(f"sum by (table) (rate(streamlearn_embedding_evictions_total{{{JOB}}}[{RI}]))", "{{table}}")],
            unit="ops",
        ),
    ]
    return dashboard(
        "streamlearn-state",
        "streamlearn / State and snapshots",
        "Snapshot cadence, age, failures; bounded state tables.",
        panels,
    )


DASHBOARDS = {
    "streamlearn-overview.json": overview,
    "streamlearn-models.json": models,
    "streamlearn-drift.json": drift,
    "streamlearn-bandits.json": bandits,
    "streamlearn-state.json": state,
}


def render(build) -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed dashboard is out of date")
    args = parser.parse_args(argv)
    stale = []
    for name, build in DASHBOARDS.items():
        path, text = OUT / name, render(build)
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if stale:
        print(f"out of date: {', '.join(stale)}; run python dashboards/generate.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
