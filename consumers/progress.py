"""Progress line and closing summary for long-running commands (stderr).

On a terminal the line redraws in place every ``interval`` seconds; in logs (not a TTY) a new
line is printed every ``log_interval`` seconds instead, so CI output stays readable. Duplicates
join the line once they are more than a trickle (:data:`DUPLICATE_SHARE` of the records read):
a stream that repeats itself, e.g. two producer runs of the same events, shows at once.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

__all__ = ["DUPLICATE_SHARE", "Progress", "format_summary"]

#: share of duplicates among the records read above which the progress line shows them
DUPLICATE_SHARE = 0.01


def _fmt_int(n: float) -> str:
    return f"{int(n):,}"


class Progress:
    def __init__(
        self,
        stream: TextIO | None = None,
        interval: float = 0.5,
        log_interval: float = 2.0,
        enabled: bool = True,
    ):
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.interval = interval if self.tty else log_interval
        self.enabled = enabled
        self.started = time.perf_counter()
        self._last = self.started
        self._last_records = 0

    def update(
        self,
        records: int,
        applied: int,
        dead: int,
        where: str = "",
        extra: str | Callable[[], str] = "",
        force: bool = False,
        duplicates: int = 0,
    ) -> None:
        """Print the line if it is due; ``extra`` may be a callable, evaluated only when printing
        (windowed AUC costs a sort, not worth paying on every micro-batch)."""
        if not self.enabled:
            return
        now = time.perf_counter()
        if not force and now - self._last < self.interval:
            return
        rate = (records - self._last_records) / max(now - self._last, 1e-9)
        self._last, self._last_records = now, records
        line = f"{_fmt_int(records)} records | {_fmt_int(applied)} applied | {_fmt_int(dead)} dead"
        if records and duplicates > DUPLICATE_SHARE * records:
            line += f" | {_fmt_int(duplicates)} duplicates ({duplicates / records:.0%})"
        line += f" | {_fmt_int(rate)} ev/s"
        if where:
            line += f" | {where}"
        if callable(extra):
            extra = extra()
        if extra:
            line += f" | {extra}"
        if self.tty:
            self.stream.write("\r\x1b[2K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _num(x: Any, digits: int = 4) -> str:
    if isinstance(x, float):
        return "n/a" if math.isnan(x) else f"{x:.{digits}f}"
    return str(x)


def format_summary(summary: dict[str, Any]) -> str:
    """A short human summary of a run: counts, throughput and windowed metrics per learner."""
    lines = [
        f"records read      {_fmt_int(summary['records'])}",
        f"events applied    {_fmt_int(summary['applied'])}",
        f"dead letters      {_fmt_int(summary['dead_letters'])}"
        + (
            "  (" + ", ".join(f"{k}: {v}" for k, v in summary["dead_letters_by_reason"].items()) + ")"
            if summary.get("dead_letters_by_reason")
            else ""
        ),
        f"duplicates        {_fmt_int(summary['duplicates'])}",
        f"late events       {_fmt_int(summary['late'])}",
    ]
    for warning in summary.get("warnings", ()):
        lines.append(f"warning           {warning}")
    if summary.get("blank_lines"):
        lines.append(f"blank lines       {_fmt_int(summary['blank_lines'])}  (skipped)")
    if "events_per_second" in summary:
        lines.append(
            f"throughput        {_fmt_int(summary['events_per_second'])} events/s over {summary['seconds']:.1f} s"
        )
    learners = summary.get("learners", {})
    if learners:
        width = max(len(n) for n in learners)
        lines.append("")
        lines.append(
            f"{'learner'.ljust(width)}  {'AUC':>7}  {'logloss':>8}  {'calib':>6}  {'CTR':>6}  window"
        )
        for name, m in learners.items():
            lines.append(
                f"{name.ljust(width)}  {_num(m['auc']):>7}  {_num(m['logloss']):>8}  {_num(m['calibration'], 3):>6}"
                f"  {_num(m['ctr'], 3):>6}  {m['n']:,}"
            )
    return "\n".join(lines)
