"""The lag panels and the lag alert, against a real worker consuming from a real broker.

``tests/test_prometheus.py`` scrapes a replay (no Kafka, so no lag); here a real Prometheus scrapes a
real ``streamlearn worker`` subprocess, and every dashboard panel and alert rule that needs consumer
lag must be accepted and return data.
"""

from __future__ import annotations

import pytest

from tests.kafka.workers import WorkerProcesses, wait_for, worker_config
from tests.prometheus.promql import (
    alert_rules,
    comparisons_as_bool,
    dashboard_queries,
    grafana_to_promql,
    metric_names,
)
from tests.prometheus.target import NEEDS_WORKER
from tests.test_conformance import make_events

pytestmark = pytest.mark.prometheus

LAG_QUERIES = [q for q in dashboard_queries() if metric_names(q.expr) & set(NEEDS_WORKER)]
LAG_RULES = [r for r in alert_rules() if metric_names(r.expr) & set(NEEDS_WORKER)]


def test_lag_panels_and_alert_have_data_from_a_real_worker(
    kafka_broker,
    topic_factory,
    producer,
    prometheus_server,
    tmp_path,
):
    assert LAG_QUERIES and LAG_RULES
    topic = topic_factory(partitions=2)
    for j, value in enumerate(make_events(3000, prefix="lag")):
        producer.send(topic, value=value, partition=j % 2)
    producer.flush()
    config = worker_config(
        tmp_path / "w.toml", kafka_broker.bootstrap, [topic], "g-prom-lag", tmp_path / "state"
    )
    procs = WorkerProcesses(tmp_path)
    try:
        worker = procs.start("worker", config)
        prometheus_server.set_targets([f"127.0.0.1:{worker.metrics_port}"])
        wait_for(
            lambda: prometheus_server.query("streamlearn_consumer_lag_records"),
            "Prometheus to scrape the worker's consumer lag",
            timeout=90,
            procs=[worker],
        )
        for q in LAG_QUERIES:
            assert prometheus_server.query(grafana_to_promql(q.expr)), f"{q.source}:{q.where}: no data"
        for r in LAG_RULES:
            # deriv() needs two samples of the series: give the scraper a few intervals
            wait_for(
                lambda r=r: prometheus_server.query(comparisons_as_bool(r.expr)),
                f"{r.where}: series behind {r.expr}",
                timeout=60,
            )
    finally:
        prometheus_server.set_targets([])
        procs.close()
