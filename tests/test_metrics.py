"""Prometheus metrics: the observer counts what the runner did, with fixed small label sets."""

from __future__ import annotations

import re
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from consumers.http_server import OpsServer
from pipeline.learners.ftrl import FTRL
from pipeline.metrics import METRIC_NAMES, StreamMetrics
from pipeline.runner import RawBatch, Runner


def _records(n, start=0):
    return [
        b'{"event_id":"e%d","ts":%d,"user_id":"u%d","item_id":"i%d","label":%d}'
        % (i, 1_700_000_000_000 + i, i % 9, i % 4, i % 2)
        for i in range(start, start + n)
    ]


def _samples(metrics: StreamMetrics) -> dict[tuple[str, tuple], float]:
    out = {}
    for fam in text_string_to_metric_families(metrics.exposition().decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_observer_counts_outcomes_reasons_and_model_quality():
    metrics = StreamMetrics(model_every_s=0.0)
    runner = Runner([FTRL(bits=12)], observers=[metrics])
    runner.process(RawBatch(values=[*_records(300), b"nope", b'{"event_id": "x"}']))
    runner.process(RawBatch(values=_records(300, 300) + _records(5)))  # 5 duplicates
    s = _samples(metrics)
    assert s[("streamlearn_events_total", (("outcome", "applied"),))] == 600
    assert s[("streamlearn_events_total", (("outcome", "dead_letter"),))] == 2
    assert s[("streamlearn_events_total", (("outcome", "duplicate"),))] == 5
    assert s[("streamlearn_dead_letter_total", (("reason", "malformed_json"),))] == 1
    assert s[("streamlearn_dead_letter_total", (("reason", "missing_field"),))] == 1
    assert s[("streamlearn_batch_duration_seconds_count", (("stage", "learn"),))] == 2
    auc = s[("streamlearn_model_auc", (("learner", "ftrl"), ("window", "10000")))]
    assert auc == runner.summary()["learners"]["ftrl"]["auc"]
    assert s[("streamlearn_event_freshness_seconds_count", ())] > 0


def test_label_values_never_hold_ids():
    metrics = StreamMetrics(model_every_s=0.0)
    runner = Runner([FTRL(bits=12)], observers=[metrics])
    runner.process(RawBatch(values=_records(100)))
    for (_, labels), _v in _samples(metrics).items():
        for _k, value in labels:
            assert not re.fullmatch(r"[uie]\d+", value), f"an id as a label value: {value!r}"


def test_every_exposed_family_is_declared():
    metrics = StreamMetrics(model_every_s=0.0)
    runner = Runner([FTRL(bits=12)], observers=[metrics])
    runner.process(RawBatch(values=_records(50)))
    names = {fam.name for fam in text_string_to_metric_families(metrics.exposition().decode())}
    declared = {n.removesuffix("_total") for n in METRIC_NAMES}
    assert names <= declared


def test_set_named_rejects_unknown_metric():
    import pytest

    with pytest.raises(KeyError, match="unknown metric 'streamlearn_nope'"):
        StreamMetrics().set_named("streamlearn_nope", {}, 1.0)


def test_ops_server_serves_metrics_text():
    metrics = StreamMetrics()
    server = OpsServer(metrics, port=0)
    server.start()
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10).read().decode()
    finally:
        server.stop()
    assert "streamlearn_build_info" in body
