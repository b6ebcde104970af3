"""Configuration of the simulator: the world's size and noise, the logging policy, the drift schedule.

Everything is a frozen dataclass validated on construction; errors are :class:`~pipeline.errors.ConfigError`
naming the bad field. A drift is written on the command line as ``kind@event[,key=value...]``:

>>> parse_drift("gradual@50000,span=20000")
Drift(at_event=50000, kind='gradual', span=20000, strength=1.0, n_items=0)
>>> [d.at_event for d in default_drifts(100_000)]
[20000, 40000, 60000, 75000]
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.errors import ConfigError

__all__ = [
    "DELAY_KINDS",
    "DRIFT_KINDS",
    "FEEDBACK_MODES",
    "Drift",
    "SimConfig",
    "default_drifts",
    "parse_drift",
]

#: ``abrupt``: every user's preference vector is replaced (rotated towards a fresh one by
#: ``strength`` x 90 degrees) at once; ``gradual``: the same rotation spread linearly over ``span``
#: events; ``new_items``: ``n_items`` new item ids become candidates; ``popularity``: the popularity
#: offsets of the active items are permuted.
DRIFT_KINDS = ("abrupt", "gradual", "new_items", "popularity")
PREFERENCE_KINDS = ("abrupt", "gradual")
#: ``joined``: one impression per shown item whose ``label`` is already its click; ``delayed``: an
#: exposure (label 0) per shown item and a separate ``click`` outcome record per click, later by a
#: delay drawn from ``delay`` (see :mod:`pipeline.simulation.delays`).
FEEDBACK_MODES = ("joined", "delayed")
#: ``exponential``: median ``delay_median_s``; ``heavy_tailed``: an exponential body mixed with a
#: log-normal tail of share ``delay_tail_fraction``, overall median still ``delay_median_s``.
DELAY_KINDS = ("exponential", "heavy_tailed")


@dataclass(frozen=True)
class Drift:
    """A scheduled change of the world, effective from valid event number ``at_event`` (0-based).

    Parameters
    ----------
    at_event
        Index of the first event generated under the new world (invalid injected records are not counted).
    kind
        One of :data:`DRIFT_KINDS`.
    span
        ``gradual`` only: number of events over which the change is interpolated.
    strength
        ``abrupt`` / ``gradual``: rotation of preference vectors, 1.0 = replaced by independent ones.
    n_items
        ``new_items`` only: how many new items appear.
    """

    at_event: int
    kind: str
    span: int = 0
    strength: float = 1.0
    n_items: int = 0

    def __post_init__(self) -> None:
        if self.kind not in DRIFT_KINDS:
            raise ConfigError(f"drift kind must be one of {', '.join(DRIFT_KINDS)}, got {self.kind!r}")
        if self.at_event < 0:
            raise ConfigError(f"drift at_event must be >= 0, got {self.at_event}")
        if self.kind == "gradual" and self.span <= 0:
            raise ConfigError(f"gradual drift span must be > 0, got {self.span}")
        if self.kind != "gradual" and self.span != 0:
            raise ConfigError(
                f"span is only meaningful for gradual drifts, got span={self.span} for {self.kind}"
            )
        if not 0.0 < self.strength <= 1.0:
            raise ConfigError(f"drift strength must be in (0, 1], got {self.strength}")
        if self.kind == "new_items" and self.n_items <= 0:
            raise ConfigError(f"new_items drift n_items must be > 0, got {self.n_items}")
        if self.kind != "new_items" and self.n_items != 0:
            raise ConfigError(
                f"n_items is only meaningful for new_items drifts, got {self.n_items} for {self.kind}"
            )

    @property
    def end_event(self) -> int:
        """First event at which the change is complete (``at_event + span``)."""
        return self.at_event + self.span

    def spec(self) -> str:
        """The command-line form, inverse of :func:`parse_drift`."""
        extra = {"gradual": f",span={self.span}", "new_items": f",n={self.n_items}"}.get(self.kind, "")
        if self.strength != 1.0:
            extra += f",strength={self.strength:g}"
        return f"{self.kind}@{self.at_event}{extra}"


_SPEC_KEYS = {
    "span": ("span", int),
    "n": ("n_items", int),
    "n_items": ("n_items", int),
    "strength": ("strength", float),
}


def parse_drift(spec: str) -> Drift:
    """Parse ``kind@event[,span=N][,n=N][,strength=X]``, e.g. ``abrupt@50000`` or ``new_items@60000,n=50``."""
    head, *opts = spec.strip().split(",")
    kind, sep, at = head.partition("@")
    if not sep:
        raise ConfigError(f"drift spec must look like kind@event[,key=value], got {spec!r}")
    try:
        kwargs: dict = {"kind": kind.strip(), "at_event": int(at)}
        for opt in opts:
            key, _, value = opt.partition("=")
            name, conv = _SPEC_KEYS[key.strip()]
            kwargs[name] = conv(value)
    except KeyError as exc:
        raise ConfigError(
            f"drift spec {spec!r}: unknown key {exc.args[0]!r}; allowed: span, n, strength"
        ) from None
    except ValueError:
        raise ConfigError(f"drift spec {spec!r}: event and values must be numbers") from None
    if kwargs["kind"] == "new_items":
        kwargs.setdefault("n_items", 50)
    return Drift(**kwargs)


def default_drifts(n_events: int, n_new_items: int = 50) -> tuple[Drift, ...]:
    """The default schedule: four drifts of the four kinds at 20 %, 40 %, 60 % and 75-85 % of the stream."""
    if n_events < 10:
        raise ConfigError(f"n_events must be >= 10 for the default drift schedule, got {n_events}")
    return (
        Drift(n_events * 20 // 100, "abrupt"),
        Drift(n_events * 40 // 100, "popularity"),
        Drift(n_events * 60 // 100, "new_items", n_items=n_new_items),
        Drift(n_events * 75 // 100, "gradual", span=n_events // 10),
    )


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass(frozen=True)
class SimConfig:
    """The simulated world, its traffic and its logging policy.

    Parameters
    ----------
    seed
        Seeds everything; the same config gives the same stream, bit for bit.
    n_users, n_items, dim
        Users, initially active items, dimension of the latent preference vectors.
    n_candidates
        Candidates per request, sampled uniformly without replacement from the active items.
    slate_size
        Items shown per request (1 = the simple, default top-1 mode).
    temperature, epsilon
        Logging policy: softmax of its (stale, noisy) scores at this temperature, mixed with
        uniform exploration with probability ``epsilon``.
    logging_noise
        Standard deviation of the error of the logging policy's copy of the initial preference
        vectors and popularity (relative to their own scale).
    base_logit, preference_scale, popularity_scale, context_scale
        The click logit is ``base + preference_scale * u.v + popularity + context effects``;
        ``context_scale`` multiplies the device x category, hour x category and price effects.
    new_item_boost
        Added to the popularity of items that arrive with a ``new_items`` drift.
    label_noise
        Probability that a label is flipped: ``P(click) = eta + (1 - 2 eta) * exam(pos) * sigmoid(logit)``.
    mean_gap_ms, start_ts, late_fraction, max_lateness_ms
        Requests arrive with exponential gaps; a ``late_fraction`` of them carries a timestamp up to
        ``max_lateness_ms`` earlier than its predecessors (out of order).
    drifts
        The schedule (see :class:`Drift`); preference drifts must not overlap a gradual one.
    run_id
        Prefix of every ``event_id`` and ``request_id`` (``"<run_id>-e<n>"``), so that two runs
        into one topic do not repeat each other's ids; empty: ``"e<n>"``. ``streamlearn simulate``
        draws a fresh one per run unless given ``--run-id``.
    log_candidates
        Write each event's ``candidates`` (the item ids its request's logging policy chose among),
        so that off-policy evaluation knows the real decision (``streamlearn evaluate --policy``).
    feedback
        One of :data:`FEEDBACK_MODES`: ``joined`` (default, labels on the impressions) or
        ``delayed`` (exposures with label 0, clicks as their own outcome records ``delay`` later,
        the whole log in event-time order; see :mod:`pipeline.simulation.feedback`).
    delay
        ``delayed`` only: one of :data:`DELAY_KINDS`, the distribution of a click's delay.
    delay_median_s
        Median delay in seconds, of the whole distribution (both kinds).
    delay_tail_fraction, delay_tail_median_s, delay_tail_sigma
        ``heavy_tailed`` only: the share of clicks whose delay comes from the log-normal tail, its
        median in seconds (default 3 h) and the standard deviation of its log. With the defaults
        5 % of the clicks come more than 3 h late and 1 % more than about 11 h late.
    unattributed_fraction
        ``delayed`` only: share of clicks whose outcome record is never written (a lost
        attribution); the truth columns still say ``clicked = 1``.
    """

    seed: int = 0
    n_users: int = 2000
    n_items: int = 400
    dim: int = 8
    n_candidates: int = 10
    slate_size: int = 1
    temperature: float = 0.7
    epsilon: float = 0.05
    logging_noise: float = 0.5
    base_logit: float = -2.0
    preference_scale: float = 1.2
    popularity_scale: float = 0.6
    context_scale: float = 1.0
    new_item_boost: float = 0.6
    label_noise: float = 0.01
    mean_gap_ms: float = 100.0
    start_ts: int = 1_700_000_000_000
    late_fraction: float = 0.0
    max_lateness_ms: int = 60_000
    drifts: tuple[Drift, ...] = field(default_factory=tuple)
    run_id: str = ""
    log_candidates: bool = True
    feedback: str = "joined"
    delay: str = "exponential"
    delay_median_s: float = 30.0
    delay_tail_fraction: float = 0.1
    delay_tail_median_s: float = 10_800.0
    delay_tail_sigma: float = 1.0
    unattributed_fraction: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "drifts", tuple(sorted(self.drifts, key=lambda d: d.at_event)))
        for name in ("n_users", "n_items", "dim", "n_candidates", "slate_size"):
            _check(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        _check(self.n_candidates <= self.n_items, f"n_candidates must be <= n_items, got {self.n_candidates}")
        _check(
            self.slate_size <= self.n_candidates, f"slate_size must be <= n_candidates, got {self.slate_size}"
        )
        _check(self.temperature > 0, f"temperature must be > 0, got {self.temperature}")
        _check(0.0 <= self.epsilon <= 1.0, f"epsilon must be in [0, 1], got {self.epsilon}")
        _check(0.0 <= self.label_noise < 0.5, f"label_noise must be in [0, 0.5), got {self.label_noise}")
        _check(self.logging_noise >= 0, f"logging_noise must be >= 0, got {self.logging_noise}")
        _check(self.mean_gap_ms > 0, f"mean_gap_ms must be > 0, got {self.mean_gap_ms}")
        _check(
            self.start_ts >= self.max_lateness_ms, f"start_ts must be >= max_lateness_ms, got {self.start_ts}"
        )
        _check(0.0 <= self.late_fraction <= 1.0, f"late_fraction must be in [0, 1], got {self.late_fraction}")
        _check(self.max_lateness_ms >= 1, f"max_lateness_ms must be >= 1, got {self.max_lateness_ms}")
        self._check_drifts()
        self._check_feedback()

    def _check_feedback(self) -> None:
        _check(
            self.feedback in FEEDBACK_MODES,
            f"feedback must be one of {', '.join(FEEDBACK_MODES)}, got {self.feedback!r}",
        )
        _check(
            self.delay in DELAY_KINDS, f"delay must be one of {', '.join(DELAY_KINDS)}, got {self.delay!r}"
        )
        _check(self.delay_median_s > 0, f"delay_median_s must be > 0, got {self.delay_median_s}")
        if self.delay == "heavy_tailed":
            # below one half the mixture's median can always be put at delay_median_s (delays.py)
            _check(
                0.0 <= self.delay_tail_fraction < 0.5,
                f"delay_tail_fraction must be in [0, 0.5), got {self.delay_tail_fraction}",
            )
            _check(
                self.delay_tail_median_s >= self.delay_median_s,
                f"delay_tail_median_s must be >= delay_median_s ({self.delay_median_s:g}), "
                f"got {self.delay_tail_median_s:g}",
            )
            _check(self.delay_tail_sigma > 0, f"delay_tail_sigma must be > 0, got {self.delay_tail_sigma}")
        _check(
            0.0 <= self.unattributed_fraction < 1.0,
            f"unattributed_fraction must be in [0, 1), got {self.unattributed_fraction}",
        )

    def _check_drifts(self) -> None:
        busy_until = 0
        for d in self.drifts:
            _check(isinstance(d, Drift), f"drifts must hold Drift objects, got {type(d).__name__}")
            if d.kind in PREFERENCE_KINDS:
                _check(
                    d.at_event >= busy_until,
                    f"drifts: {d.spec()} starts before the previous gradual drift ends at event {busy_until}",
                )
                busy_until = d.end_event

    @property
    def n_items_total(self) -> int:
        """Initial items plus every item that a ``new_items`` drift will add."""
        return self.n_items + sum(d.n_items for d in self.drifts)
