"""Tests of the replay report (pipeline.report): what the recorder samples and what the page shows."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.drift import DriftMonitor, DriftSettings
from pipeline.report import ReportData, ReportRecorder, _event_times, write_report
from pipeline.runner import RawBatch, Runner
from pipeline.simulate import Drift, SimConfig, Simulator

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def replay():
    sim = Simulator(
        SimConfig(seed=0, preference_scale=2.0, popularity_scale=1.2, drifts=(Drift(12_000, "abrupt"),))
    )
    monitor = DriftMonitor(DriftSettings(warmup_events=2000, reference_events=2000, window_events=1000))
    recorder = ReportRecorder(every_events=1000, drift=monitor)
    runner = Runner.from_config(load_config(), observers=[monitor, recorder])
    for i, batch in enumerate(sim.batches(24_000, chunk_size=1000, invalid_fraction=0.01)):
        runner.process(RawBatch(arrow=batch, positions={"sim": i}))
    return runner, monitor, recorder.data(runner.summary()), sim


def test_recorder_samples_metrics_every_n_events_and_counts_dead_letters(replay):
    runner, monitor, data, _ = replay
    events = [r["events"] for r in data.history if r["learner"] == "ftrl"]
    # one row at the first batch past each multiple of 1,000 applied events (batches hold invalid rows too)
    assert [e // 1000 for e in events] == list(range(1, 25)) and len(data.history) == len(events)
    assert data.dead_letters == runner.dead_by_reason and sum(data.dead_letters.values()) > 0
    assert data.samples[-1][1:] == (runner.counters["records"], 24_000, runner.counters["dead_letters"])
    assert data.drift_events == list(monitor.alarms) and data.drift_events
    assert {s["signal"] for s in data.drift_scores} >= {"loss:ftrl", "label"}


def test_report_writes_pngs_and_a_page_listing_the_alarms(replay, tmp_path):
    _, monitor, data, sim = replay
    page = write_report(tmp_path / "report", data, title="drift <demo>", truth=sim.drift_points)
    for name in ("metrics.png", "drift.png", "dead_letters.png", "throughput.png"):
        assert (page.parent / name).read_bytes()[:8] == PNG_MAGIC
        assert f'src="{name}"' in page.read_text()
    text = page.read_text()
    assert "drift &lt;demo&gt;" in text  # escaped
    for a in monitor.alarms:
        assert f"<td>{a['signal']}</td><td>{a['detector']}</td>" in text
    for reason in data.dead_letters:
        assert f"<td>{reason}</td>" in text


def test_event_times_interpolate_between_recorded_points():
    data = ReportData(
        history=[{"events": 1000, "event_ts_ms": 10_000}, {"events": 3000, "event_ts_ms": 50_000}]
    )
    assert _event_times(data, (1000, 2000, 2500, 5000)) == [10_000, 30_000, 40_000]


def test_recorder_keeps_a_bounded_number_of_samples():
    recorder = ReportRecorder(every_events=10**9, max_samples=100)
    runner = Runner.from_config(load_config(), observers=[recorder])
    line = b'{"event_id":"e%d","ts":%d,"user_id":"u","item_id":"i","label":0}'
    for i in range(1000):
        runner.process(RawBatch(values=[line % (i, i)], positions={"f": i}))
    samples = recorder.data().samples
    assert 50 <= len(samples) <= 100
    assert np.all(np.diff([s[1] for s in samples]) > 0) and samples[-1][1] >= 990
