"""The ``[join]`` section: which events are exposures and outcomes, how long an outcome may take,
and how the learners see an exposure before its outcome is known (docs/delayed_feedback.md).

Kept free of numpy and pyarrow: the configuration imports it before any batch exists.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from pipeline.errors import require

__all__ = ["CORRECTIONS", "LABEL_RULES", "LINKS", "STRATEGIES", "JoinConfig"]

STRATEGIES = ("wait", "fake_negative", "es_dfm")
LABEL_RULES = ("first", "max", "sum")
LINKS = ("request_item", "exposure_id")
CORRECTIONS = ("fnw", "fnc")


@dataclass(frozen=True)
class JoinConfig:
    """Settings of the exposure/outcome join (off by default: every event is then a labelled example).

    Parameters
    ----------
    enabled
        Join exposures with their later outcomes instead of learning each record on its own.
    strategy
        ``wait`` (learn an exposure when its window closes, with its final label),
        ``fake_negative`` (learn it at once as a negative and again as a positive when its first
        outcome comes, with the importance weights of FNW, Ktena et al. 2019) or ``es_dfm``
        (learn it after ``elapsed_s`` with the label known by then, a late positive again, with
        ES-DFM's importance weights, Yang et al. 2021).
    correction
        How ``fake_negative`` undoes its bias: ``fnw`` (importance weights on the loss, FNW) or
        ``fnc`` (plain loss; every score calibrated as ``b / (1 - b)``, FNC, in evaluation and
        serving alike).
    exposure_types, outcome_types
        ``event_type`` values of exposures (impressions, served decisions) and of outcomes.
        Events of any other type, or without one, are examples whose label is already final.
    link
        How an outcome names its exposure: ``request_item`` (the same ``request_id`` and
        ``item_id``) or ``exposure_id`` (the outcome's ``exposure_id`` is the exposure's
        ``event_id``, as ``/v1/decide`` returns it for each chosen item).
    window_s
        Attribution window: an outcome more than this after its exposure is not attributed to it.
    windows_s
        Per outcome type overrides of ``window_s``, e.g. ``{order = 86400}``.
    label
        The example's label from its outcomes' ``label`` values: ``first`` (the first outcome's),
        ``max`` or ``sum``. An exposure without an attributed outcome has label 0.
    emit_on_first_outcome
        With ``wait``: learn a positive at its first outcome instead of at the window's end.
    elapsed_s
        ``es_dfm``'s waiting time before an exposure is learned.
    allowed_lateness_ms
        The watermark trails the largest event time seen by this much; an exposure closes when the
        watermark passes its time plus the longest window.
    max_open, max_open_bytes
        Bounds of the open-exposure store; over either the oldest exposures are closed early
        (counted as evicted) with the outcomes they have.
    max_pending
        Outcomes that came before their exposure are held (until the watermark passes them) up to
        this many; the oldest beyond it are counted as orphans.
    """

    enabled: bool = False
    strategy: str = "fake_negative"
    correction: str = "fnw"
    exposure_types: tuple[str, ...] = ("impression", "view")
    outcome_types: tuple[str, ...] = ("click", "add_to_cart", "order", "purchase")
    link: str = "request_item"
    window_s: float = 3600.0
    windows_s: Mapping[str, float] = field(default_factory=dict)
    label: str = "first"
    emit_on_first_outcome: bool = False
    elapsed_s: float = 60.0
    allowed_lateness_ms: int = 10_000
    max_open: int = 2_000_000
    max_open_bytes: int = 1 << 30
    max_pending: int = 100_000

    def validate(self) -> None:
        require(
            self.strategy in STRATEGIES, "join.strategy", self.strategy, "one of " + ", ".join(STRATEGIES)
        )
        require(
            self.correction in CORRECTIONS,
            "join.correction",
            self.correction,
            "one of " + ", ".join(CORRECTIONS),
        )
        require(
            self.correction == "fnw" or self.strategy == "fake_negative",
            "join.correction",
            self.correction,
            'fnw unless join.strategy = "fake_negative" (FNC calibrates fake negatives only)',
        )
        require(self.link in LINKS, "join.link", self.link, "one of " + ", ".join(LINKS))
        require(self.label in LABEL_RULES, "join.label", self.label, "one of " + ", ".join(LABEL_RULES))
        require(len(self.exposure_types) >= 1, "join.exposure_types", list(self.exposure_types), "a type")
        require(len(self.outcome_types) >= 1, "join.outcome_types", list(self.outcome_types), "a type")
        both = sorted(set(self.exposure_types) & set(self.outcome_types))
        require(
            not both, "join.outcome_types", list(self.outcome_types), f"types not also exposures ({both})"
        )
        require(self.window_s > 0, "join.window_s", self.window_s, "a number of seconds > 0")
        for name, seconds in self.windows_s.items():
            require(name in self.outcome_types, f"join.windows_s.{name}", seconds, "an outcome type's window")
            ok = isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and seconds > 0
            require(ok, f"join.windows_s.{name}", seconds, "a number of seconds > 0")
        require(self.elapsed_s >= 0, "join.elapsed_s", self.elapsed_s, "a number of seconds >= 0")
        require(
            self.strategy != "es_dfm" or self.elapsed_s < self.longest_window_s,
            "join.elapsed_s",
            self.elapsed_s,
            f"less than the longest window ({self.longest_window_s:g} s)",
        )
        require(self.allowed_lateness_ms >= 0, "join.allowed_lateness_ms", self.allowed_lateness_ms, ">= 0")
        require(self.max_open >= 1, "join.max_open", self.max_open, "an integer >= 1")
        require(self.max_open_bytes >= 1 << 16, "join.max_open_bytes", self.max_open_bytes, ">= 65536")
        require(self.max_pending >= 0, "join.max_pending", self.max_pending, "an integer >= 0")

    @property
    def calibration(self) -> str | None:
        """The score calibration the learners' outputs need (``"fnc"``), or None."""
        return (
            "fnc" if self.enabled and self.strategy == "fake_negative" and self.correction == "fnc" else None
        )

    @property
    def longest_window_s(self) -> float:
        return max([self.window_s, *self.windows_s.values()])

    def window_ms_of(self, outcome_type: str) -> int:
        return round(1000 * float(self.windows_s.get(outcome_type, self.window_s)))
