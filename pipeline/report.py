"""Pictures of a replay: windowed metrics per learner over event time with drift alarms marked, drift
scores, dead letters and throughput, as PNG files and one self-contained HTML page.

A :class:`ReportRecorder` is a runner observer that samples what the report needs while the replay
runs (bounded: it thins its samples when they grow past ``max_samples``); :func:`write_report`
draws them with matplotlib's Agg backend (no display, no pyplot state) into a directory::

    recorder = ReportRecorder(every_events=config.evaluation.report_every, drift=monitor)
    runner.observers.append(recorder)
    ...                                   # the replay
    write_report("out/report", recorder.data(), title="replay of stream.jsonl.gz")

Examples
--------
>>> import tempfile
>>> from pipeline.config import load_config
>>> from pipeline.runner import RawBatch, Runner
>>> recorder = ReportRecorder(every_events=2)
>>> runner = Runner.from_config(load_config(), observers=[recorder])
>>> ev = b'{"event_id":"e%d","ts":%d,"user_id":"u","item_id":"i","label":%d}'
>>> for i in range(6):
...     _ = runner.process(RawBatch(values=[ev % (i, 1000 * i, i % 2), b"{"], positions={"f": i}))
>>> data = recorder.data()
>>> len(data.history), data.dead_letters
(3, {'malformed_json': 6})
>>> out = write_report(tempfile.mkdtemp(), data)
>>> sorted(p.name for p in out.parent.iterdir())
['dead_letters.png', 'drift.png', 'index.html', 'metrics.png', 'throughput.png']
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ReportData", "ReportRecorder", "write_report"]

_METRICS = (("auc", "AUC"), ("logloss", "logloss"), ("calibration", "calibration (sum p / sum y)"))


@dataclass
class ReportData:
    """Everything a report shows; plain lists and dicts (JSON-friendly)."""

    history: list[dict[str, Any]] = field(default_factory=list)  # events, event_ts_ms, learner, auc, ...
    drift_events: list[dict[str, Any]] = field(default_factory=list)  # ts_ms, events, signal, detector, score
    drift_scores: list[dict[str, Any]] = field(default_factory=list)  # event_ts_ms, signal, method, score
    samples: list[tuple[float, int, int, int]] = field(default_factory=list)  # wall_s, records, applied, dead
    dead_letter_samples: list[tuple[int, dict[str, int]]] = field(default_factory=list)  # records, by reason
    dead_letters: dict[str, int] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)


class ReportRecorder:
    """Runner observer that samples metrics, drift, dead letters and throughput for :func:`write_report`.

    Parameters
    ----------
    every_events
        A row of windowed metrics per learner every this many applied events.
    drift
        A :class:`~pipeline.drift.DriftMonitor` whose alarms and scores the report shows.
    max_samples
        Throughput samples kept (every other one is dropped when there are more): bounded memory.
    """

    def __init__(
        self,
        every_events: int = 10_000,
        drift: Any = None,
        max_samples: int = 5000,
        clock: Callable[[], float] = time.perf_counter,
    ):
        if every_events < 1:
            raise ValueError(f"every_events must be >= 1, got {every_events}")
        self.every_events = every_events
        self.drift = drift
        self.max_samples = max_samples
        self._clock = clock
        self._t0: float | None = None
        self._next = every_events
        self._data = ReportData()

    def on_batch(self, runner: Any, result: Any) -> None:
        now = self._clock()
        if self._t0 is None:
            self._t0 = now - result.durations.get("total", 0.0)
        c = runner.counters
        d = self._data
        d.samples.append((now - self._t0, c["records"], c["applied"], c["dead_letters"]))
        if result.dead_letters:
            d.dead_letter_samples.append((c["records"], dict(runner.dead_by_reason)))
        if len(d.samples) > self.max_samples:
            d.samples = d.samples[::2]
            d.dead_letter_samples = d.dead_letter_samples[::2]
        if c["applied"] >= self._next and result.applied:
            self._sample_models(runner, int(result.events.ts.max()))
            self._next = (c["applied"] // self.every_events + 1) * self.every_events

    def _sample_models(self, runner: Any, ts_ms: int) -> None:
        for name, wm in runner.metrics.items():
            row = {"events": runner.counters["applied"], "event_ts_ms": ts_ms, "learner": name}
            row.update(wm.get())
            self._data.history.append(row)
        if self.drift is not None:
            for (signal, method), score in self.drift.scores().items():
                self._data.drift_scores.append(
                    {"event_ts_ms": ts_ms, "signal": signal, "method": method, "score": score}
                )

    def data(self, summary: dict[str, Any] | None = None) -> ReportData:
        """What was recorded so far, with the drift monitor's alarms and an optional run summary."""
        d = self._data
        out = ReportData(
            history=list(d.history),
            drift_events=list(self.drift.alarms) if self.drift is not None else [],
            drift_scores=list(d.drift_scores),
            samples=list(d.samples),
            dead_letter_samples=list(d.dead_letter_samples),
            dead_letters=dict(d.dead_letter_samples[-1][1]) if d.dead_letter_samples else {},
            summary=dict(summary or {}),
        )
        return out


# ------------------------------------------------------------------------------------ drawing


def _figure(rows: int, height: float = 2.6):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, height * rows), layout="constrained")
    return fig, fig.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]


def _dates(ms: Iterable[int]) -> np.ndarray:
    return np.asarray(list(ms), dtype="int64").astype("datetime64[ms]")


def _mark_truth(ax, truth_ms: Sequence[int]) -> None:
    for i, t in enumerate(truth_ms):
        ax.axvline(_dates([t])[0], color="black", lw=1.4, alpha=0.7, label="known drift" if i == 0 else None)


def _plot_metrics(data: ReportData, truth_ms: Sequence[int], path: Path) -> None:
    fig, axes = _figure(len(_METRICS))
    learners = sorted({r["learner"] for r in data.history})
    colors = {name: f"C{i % 10}" for i, name in enumerate(learners)}
    for ax, (key, title) in zip(axes, _METRICS):
        for name in learners:
            rows = [r for r in data.history if r["learner"] == name]
            ax.plot(
                _dates(r["event_ts_ms"] for r in rows),
                [r[key] for r in rows],
                lw=1.4,
                color=colors[name],
                label=name,
            )
        _mark_truth(ax, truth_ms)
        labelled = set()
        for a in data.drift_events:  # a learner's concept-drift alarms in its own colour
            name = a["signal"].removeprefix("loss:")
            if a["signal"].startswith("loss:") and name in colors:
                label = None if name in labelled else f"concept drift alarm: {name}"
                ax.axvline(
                    _dates([a["ts_ms"]])[0], color=colors[name], ls="--", lw=1.0, alpha=0.8, label=label
                )
                labelled.add(name)
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
    axes[0].set_title("Windowed prequential metrics per learner over event time")
    axes[0].legend(loc="lower right", fontsize=7)
    axes[-1].set_xlabel("event time (UTC)")
    fig.savefig(path, dpi=100)


def _plot_drift(data: ReportData, truth_ms: Sequence[int], path: Path) -> None:
    fig, (ax_loss, ax_data, ax_alarms) = _figure(3, 3.0)
    series = sorted({(s["signal"], s["method"]) for s in data.drift_scores})
    for signal, method in series:
        rows = [s for s in data.drift_scores if (s["signal"], s["method"]) == (signal, method)]
        loss = signal.startswith("loss:")
        ax = ax_loss if loss else ax_data
        values = [r["score"] if loss else max(r["score"], 1e-4) for r in rows]  # log axis for data drift
        ax.plot(
            _dates(r["event_ts_ms"] for r in rows),
            values,
            lw=1.0,
            label=signal if loss else f"{signal} {method}",
        )
    ax_loss.axhline(0.0, color="grey", lw=0.8)
    ax_loss.set_ylabel("excess logloss")
    ax_loss.set_title(
        "Concept drift: each learner's logloss minus the recent base rate's (the detectors' input)"
    )
    ax_data.set_yscale("log")
    ax_data.set_ylabel("score")
    ax_data.set_title("Data drift: reference vs current window (PSI, KS, Jensen-Shannon, Cramer's V)")
    for ax in (ax_loss, ax_data):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper left", fontsize=6, ncol=3)
    signals = sorted({a["signal"] for a in data.drift_events})
    for y, signal in enumerate(signals):
        rows = [a for a in data.drift_events if a["signal"] == signal]
        ax_alarms.scatter(_dates(a["ts_ms"] for a in rows), [y] * len(rows), marker="v", s=60)
    ax_alarms.set_yticks(range(len(signals)), signals, fontsize=7)
    ax_alarms.set_ylim(-1, max(len(signals), 1))
    ax_alarms.set_title("Alarms")
    ax_alarms.set_xlabel("event time (UTC)")
    for ax in (ax_loss, ax_data, ax_alarms):
        _mark_truth(ax, truth_ms)
        ax.grid(alpha=0.3)
    fig.savefig(path, dpi=100)


def _plot_dead_letters(data: ReportData, path: Path) -> None:
    fig, (ax,) = _figure(1, 3.2)
    reasons = sorted({r for _, by in data.dead_letter_samples for r in by})
    records = [0] + [n for n, _ in data.dead_letter_samples]
    for reason in reasons:
        ax.step(
            records,
            [0] + [by.get(reason, 0) for _, by in data.dead_letter_samples],
            where="post",
            label=reason,
        )
    if reasons:
        ax.legend(loc="upper left", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no dead letters", transform=ax.transAxes, ha="center", va="center")
    ax.set_title("Dead letters (cumulative, by reason)")
    ax.set_xlabel("records read")
    ax.set_ylabel("dead letters")
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=100)


def _plot_throughput(data: ReportData, path: Path) -> None:
    fig, (ax,) = _figure(1, 3.2)
    if len(data.samples) >= 2:
        s = np.asarray(data.samples, dtype=np.float64)
        dt, dn = np.diff(s[:, 0]), np.diff(s[:, 1])
        ok = dt > 0
        ax.plot(s[1:, 0][ok], dn[ok] / dt[ok], lw=0.6, alpha=0.5, label="per batch")
        k = max(1, len(dn) // 50)  # a smoother line over ~2 % of the run
        ax.plot(
            s[k:, 0],
            (s[k:, 1] - s[:-k, 1]) / np.maximum(s[k:, 0] - s[:-k, 0], 1e-9),
            lw=1.6,
            label="smoothed",
        )
        ax.legend(loc="lower right", fontsize=8)
    ax.set_title("Throughput")
    ax.set_xlabel("wall time since start (s)")
    ax.set_ylabel("records / s")
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=100)


# ------------------------------------------------------------------------------------ page


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:,.4g}"
    if isinstance(v, int):
        return f"{v:,}"
    return html.escape(str(v))


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _summary_rows(data: ReportData) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    if data.samples:
        wall, records, applied, dead = data.samples[-1]
        rows += [
            ("records read", int(records)),
            ("events applied", int(applied)),
            ("dead letters", int(dead)),
        ]
        rows += [("wall time (s)", float(wall)), ("records / s", records / wall if wall > 0 else math.nan)]
    rows += [("drift alarms", len(data.drift_events))]
    rows += [(k, v) for k, v in data.summary.items() if isinstance(v, (int, float, str))]
    return rows


def _event_times(data: ReportData, events: Sequence[int]) -> list[int]:
    """Event times of event indices, interpolated between the recorded (events, event time) points."""
    points = sorted({(r["events"], r["event_ts_ms"]) for r in data.history})
    points += sorted((a["events"], a["ts_ms"]) for a in data.drift_events)
    points.sort()
    if len(points) < 2:
        return []
    x, y = np.array(points, dtype=np.float64).T
    return [int(np.interp(e, x, y)) for e in events if x[0] <= e <= x[-1]]


def write_report(
    out_dir: str | Path,
    data: ReportData,
    title: str = "streamlearn replay",
    truth: Sequence[int] = (),
) -> Path:
    """Write the PNGs and ``index.html`` into ``out_dir`` (created); returns the HTML path.

    ``truth`` optionally lists known drift points as event indices (a simulated stream's
    ``Simulator.drift_points``), drawn as black lines at their event time.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    truth_ms = _event_times(data, truth)
    _plot_metrics(data, truth_ms, out / "metrics.png")
    _plot_drift(data, truth_ms, out / "drift.png")
    _plot_dead_letters(data, out / "dead_letters.png")
    _plot_throughput(data, out / "throughput.png")
    last: dict[str, dict] = {}
    for r in data.history:
        last[r["learner"]] = r
    learners = _table(
        ["learner", "AUC", "logloss", "calibration", "CTR", "window n"],
        [
            (n, r["auc"], r["logloss"], r["calibration"], r.get("ctr", math.nan), r.get("n", 0))
            for n, r in sorted(last.items())
        ],
    )
    alarms = _table(
        ["event time (UTC)", "events", "signal", "detector", "score"],
        [
            (str(_dates([a["ts_ms"]])[0]), a["events"], a["signal"], a["detector"], a["score"])
            for a in data.drift_events[:500]
        ],
    )
    dead = _table(["reason", "count"], sorted(data.dead_letters.items()))
    figures = "".join(
        f'<h2>{html.escape(caption)}</h2><img src="{name}" alt="{html.escape(caption)}">'
        for name, caption in (
            ("metrics.png", "Model quality per learner"),
            ("drift.png", "Drift"),
            ("dead_letters.png", "Dead letters"),
            ("throughput.png", "Throughput"),
        )
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1150px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:0.5em 0 1.5em}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}
th{{background:#f3f3f3}}td:first-child{{text-align:left}}img{{max-width:100%}}</style></head>
<body><h1>{html.escape(title)}</h1>
<h2>Summary</h2>{_table(["", "value"], _summary_rows(data))}
<h2>Learners (last window)</h2>{learners}
{figures}
<h2>Drift alarms</h2>{alarms}
<h2>Dead letters by reason</h2>{dead}
</body></html>
"""
    path = out / "index.html"
    path.write_text(page, encoding="utf-8")
    return path
