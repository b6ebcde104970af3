"""A real Prometheus scrapes a real ``streamlearn worker`` under the simulator's stream
(docs/architecture.md, "Prometheus and Grafana"): every PromQL expression of every dashboard panel,
variable, annotation and alert rule is accepted and returns data — consumer lag included — and the
drift alert fires after the stream's drift.

The scrape target is :class:`tests.prometheus.target.WorkerTarget`: the worker process consuming a
real broker's topic, so a worker that misses an observer (the drift monitor, say) fails here.
"""

from __future__ import annotations

import math
import re
import time

import pytest

from tests.prometheus.promql import (
    Query,
    alert_rules,
    comparisons_as_bool,
    dashboard_queries,
    grafana_to_promql,
)
from tests.prometheus.server import PrometheusServer
from tests.prometheus.target import WorkerTarget

pytestmark = [pytest.mark.prometheus, pytest.mark.kafka]

EVENTS_BEFORE_QUERYING = 30_000  # past the drift at 15,000 and its detection, with snapshots written


@pytest.fixture(scope="module")
def scraped(prometheus_server: PrometheusServer, kafka_broker, tmp_path_factory):
    kafka_broker.ensure_running()
    target = WorkerTarget(kafka_broker, tmp_path_factory.mktemp("worker-target"), n_events=400_000)
    try:
        prometheus_server.wait_for(target.ready, 120, "the worker to own its partitions")
        prometheus_server.set_targets([target.address])
        prometheus_server.wait_for(
            lambda: bool(prometheus_server.query("streamlearn_build_info")),
            60,
            "the first scrape of the worker",
        )
        target.begin()
        prometheus_server.wait_for(
            lambda: target.applied() >= EVENTS_BEFORE_QUERYING or target.error is not None,
            120,
            f"the worker to apply {EVENTS_BEFORE_QUERYING:,} events",
        )
        assert target.error is None, target.error
        time.sleep(3)  # a few more scrapes, so that every rate() window holds several samples
        yield prometheus_server, target
    finally:
        prometheus_server.set_targets([])
        target.stop()


def _has_finite_value(result: list) -> bool:
    for r in result:
        value = r["value"][1] if isinstance(r, dict) else r[1]
        if math.isfinite(float(value)):
            return True
    return False


QUERIES = list(dashboard_queries())
RULES = list(alert_rules())


@pytest.mark.parametrize("query", QUERIES, ids=lambda q: f"{q.source}:{q.where}")
def test_dashboard_query_is_accepted_and_returns_data(scraped, query: Query):
    server, _ = scraped
    expr = grafana_to_promql(query.expr)
    result = server.query(expr)  # raises PrometheusError with Prometheus's message if rejected
    if query.where.startswith("annotation"):
        # the annotation marks alarms: it has data once a drift alarm was counted in the last 2 minutes
        server.wait_for(lambda: bool(server.query(expr)), 30, "a drift alarm annotation")
        return
    assert _has_finite_value(result), f"{query.source} {query.where}: no data for {expr}"


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.where)
def test_alert_rule_is_healthy_and_its_comparisons_return_data(scraped, rule: Query):
    server, _ = scraped
    name = rule.where.removeprefix("rule ")
    server.wait_for(
        lambda: any(
            r["name"] == name and r.get("lastEvaluation", "").startswith("2") for r in server.rules()
        ),
        10,
        f"{name} to be evaluated",
    )
    (state,) = [r for r in server.rules() if r["name"] == name]
    assert state["health"] == "ok", state.get("lastError")
    # deriv() and increase() need two samples of a series: give the scraper a few intervals
    server.wait_for(
        lambda: bool(server.query(comparisons_as_bool(rule.expr))),
        60,
        f"{name}: series behind {rule.expr}",
    )


def test_drift_alert_fires_after_the_streams_drift(scraped):
    server, _ = scraped
    alarms = server.query('streamlearn_drift_detected_total{signal=~"loss:.+"}')
    assert alarms, "the worker raised no loss-signal drift alarm"
    expr = 'ALERTS{alertname="StreamlearnDriftDetected", alertstate="firing"}'

    def loss_alert_firing() -> bool:
        return any(r["metric"]["signal"].startswith("loss:") for r in server.query(expr))

    # several signals alarm; rule evaluation picks them up one interval at a time
    server.wait_for(loss_alert_firing, 30, "StreamlearnDriftDetected to fire for a loss signal")


def test_exposed_label_values_are_small_fixed_sets(scraped):
    server, _ = scraped
    series = server.series('{__name__=~"streamlearn_.+"}')
    assert 0 < len(series) < 2000
    for s in series:
        for label, value in s.items():
            assert not re.fullmatch(r"[uier]\d+", value), f"{s['__name__']} has an id-like {label}={value!r}"
