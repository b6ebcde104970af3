"""The PromQL of streamlearn's dashboards and alert rules, collected for tests.

:func:`dashboard_queries` walks every panel target, template variable and annotation of
``dashboards/grafana/dashboards/*.json``; :func:`alert_rules` reads the rule files;
:func:`grafana_to_promql` replaces Grafana's variables by values Prometheus accepts;
:func:`metric_names` lists the metric names an expression uses (everything that is neither a
function, an aggregation, a keyword nor inside label matchers, ranges or grouping clauses);
:func:`comparisons_as_bool` turns an alert condition into one that returns every series it compares.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

__all__ = [
    "ROOT",
    "Query",
    "alert_rules",
    "base_metric",
    "comparisons_as_bool",
    "dashboard_queries",
    "grafana_to_promql",
    "metric_names",
]

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "dashboards" / "grafana" / "dashboards"
RULES = ROOT / "dashboards" / "prometheus" / "rules"

_FUNCTIONS = {
    "abs", "absent", "absent_over_time", "avg_over_time", "ceil", "changes", "clamp", "clamp_max",
    "clamp_min", "count_over_time", "day_of_month", "day_of_week", "days_in_month", "delta", "deriv",
    "exp", "floor", "histogram_quantile", "holt_winters", "hour", "idelta", "increase", "irate",
    "label_join", "label_replace", "last_over_time", "ln", "log10", "log2", "max_over_time",
    "min_over_time", "minute", "month", "predict_linear", "quantile_over_time", "rate", "resets",
    "round", "scalar", "sgn", "sort", "sort_desc", "sqrt", "stddev_over_time", "stdvar_over_time",
    "sum_over_time", "time", "timestamp", "vector", "year", "present_over_time",
}  # fmt: skip
_AGGREGATIONS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk",
    "topk", "quantile",
}  # fmt: skip
_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
}
_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


@dataclass(frozen=True)
class Query:
    """One PromQL expression and where it comes from."""

    source: str  # file name
    where: str  # panel title, variable or annotation
    expr: str
    instant: bool = False


def dashboard_queries() -> Iterator[Query]:
    """Every panel target and annotation expression, and every ``label_values`` variable (as a series match)."""
    for path in sorted(DASHBOARDS.glob("*.json")):
        board = json.loads(path.read_text(encoding="utf-8"))
        for p in board["panels"]:
            for t in p.get("targets", []):
                yield Query(path.name, f"panel {p['title']!r}", t["expr"], bool(t.get("instant")))
        for v in board["templating"]["list"]:
            if v["type"] == "query":
                m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", v["query"]["query"])
                if m is None:
                    raise ValueError(
                        f"{path.name}: variable {v['name']}: only label_values(metric, label) is used"
                    )
                yield Query(path.name, f"variable ${v['name']} ({m[2]})", m[1])
        for a in board["annotations"]["list"]:
            if "expr" in a:
                yield Query(path.name, f"annotation {a['name']!r}", a["expr"])


def alert_rules() -> Iterator[Query]:
    for path in sorted(RULES.glob("*.yml")):
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]:
            for rule in group["rules"]:
                name = rule.get("alert") or rule.get("record")
                yield Query(path.name, f"rule {name}", " ".join(str(rule["expr"]).split()))


def grafana_to_promql(expr: str, rate_interval: str = "15s", range_: str = "1m") -> str:
    """Grafana's variables replaced: multi-value variables match everything, intervals are fixed."""
    expr = (
        expr.replace("$__rate_interval", rate_interval)
        .replace("$__range", range_)
        .replace("$__interval", "5s")
    )
    return re.sub(r"\$\{?(\w+)\}?", ".*", expr)


def _strip(expr: str) -> str:
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    expr = re.sub(r"\{[^{}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\[\]]*\]", " ", expr)  # range and subquery durations
    return re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", expr)


def metric_names(expr: str) -> set[str]:
    """Metric names in ``expr``; histogram series (``_bucket``, ``_sum``, ``_count``) kept as written."""
    out = set()
    for m in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(\s*\()?", _strip(expr)):
        word, call = m.group(1), m.group(2)
        if word in _KEYWORDS or (call and (word in _FUNCTIONS or word in _AGGREGATIONS)):
            continue
        if word in _AGGREGATIONS and not call:
            continue  # ``sum by (x) (...)``: the grouping was stripped, the call follows later
        out.add(word)
    return out


def base_metric(name: str, histograms: set[str] | frozenset[str]) -> str:
    """``x_bucket`` / ``x_sum`` / ``x_count`` -> ``x`` when ``x`` is one of ``histograms``."""
    for suffix in _HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in histograms:
            return name[: -len(suffix)]
    return name


def comparisons_as_bool(expr: str) -> str:
    """``a > 0 and b == 1`` -> ``a > bool 0 and b == bool 1``: every compared series, not only the matching ones."""
    return re.sub(r"(==|!=|>=|<=|>|<)\s*(?!bool\b)(-?\d+(?:\.\d+)?(?:e[+-]?\d+)?)\b", r"\1 bool \2", expr)
