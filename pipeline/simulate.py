"""Synthetic interaction stream with known drift, position bias and exact logging propensities.

The public face of :mod:`pipeline.simulation` (one module per concern there):

* :class:`SimConfig` / :class:`Drift` (``simulation/config.py``): the world's size and noise, the
  logging policy, and the drift schedule (``abrupt``, ``gradual``, ``new_items``, ``popularity``,
  each at a known valid-event index; ``Simulator.drift_points`` lists them).
* :class:`World` (``simulation/world.py``): users and items with latent vectors (``dim`` 8), item
  popularity, price and category, user home device, time zone and price sensitivity; the true
  click probability at any event index: a logistic of ``u . v`` + popularity + device x category +
  hour x category + price effects, times the examination probability ``1 / log2(2 + position)``,
  with label noise.
* :class:`LoggingPolicy` (``simulation/logging_policy.py``): softmax at a temperature over the
  scores of a stale, noisy copy of the initial world, mixed with epsilon-uniform exploration; its
  docstring says exactly how each propensity is computed.
* :class:`Environment` (``simulation/environment.py``): the closed-loop API for bandits:
  ``contexts(n)`` draws requests (and advances the clock in events), ``reward_probabilities(ctx,
  items)`` gives the true click probabilities, ``step(ctx, items)`` samples rewards, ``best(ctx)``
  the best candidate (for regret), ``records(ctx, items, ...)`` the events for the featuriser.
* :class:`Simulator` (``simulation/stream.py``): the logged stream, as Arrow record batches
  (``features`` is a struct column) or JSON lines, optionally with injected invalid records.
* :class:`DelayedFeedback` (``simulation/feedback.py``, delays in ``simulation/delays.py``): with
  ``SimConfig(feedback="delayed")``, exposures (label 0) and each click as its own outcome record
  (``event_type`` ``"click"``, ``event_id`` ``"o<n>"`` for exposure ``"e<n>"``, the same
  ``request_id`` and ``item_id``, no features), later by an ``exponential`` or ``heavy_tailed``
  delay of median ``delay_median_s``, the whole log in event-time order.

Every event follows docs/design.md §3: ``event_id`` ``"e<n>"`` (``n`` = the valid event index), ``ts``
(ms, increasing with exponential gaps; ``late_fraction`` of them out of order), ``user_id``
``"u<n>"``, ``item_id`` ``"i<n>"``, ``label`` 0/1, ``event_type`` ``"impression"``,
``position``, ``propensity``, ``request_id`` ``"r<n>"``, ``candidates`` (the request's candidate
ids; ``log_candidates=False`` leaves them out) and ``features`` ``{device, hour, price, category}``.
The same seed gives the same stream, bit for bit.

Examples
--------
>>> sim = Simulator(seed=1, n_users=200, n_items=60, drifts=(Drift(2000, "popularity"),))
>>> rows = next(sim.batches(3000)).to_pylist()
>>> sorted(rows[0])
['candidates', 'event_id', 'event_type', 'features', 'item_id', 'label', 'position', 'propensity', 'request_id', 'ts', 'user_id']
>>> sorted(rows[0]["features"])
['category', 'device', 'hour', 'price']
>>> sim.drift_points
(2000,)
"""

from __future__ import annotations

from pipeline.simulation import (
    CATEGORIES,
    DELAY_KINDS,
    DELAY_TRUTH_FIELDS,
    DEVICES,
    DRIFT_KINDS,
    FEEDBACK_MODES,
    SIM_SCHEMA,
    TRUTH_FIELDS,
    Contexts,
    DelayedFeedback,
    Drift,
    Environment,
    JsonChunk,
    LoggingPolicy,
    SimConfig,
    Simulator,
    World,
    default_drifts,
    examination,
    parse_drift,
    sim_schema,
    to_json_lines,
)

__all__ = [
    "CATEGORIES",
    "DELAY_KINDS",
    "DELAY_TRUTH_FIELDS",
    "DEVICES",
    "DRIFT_KINDS",
    "FEEDBACK_MODES",
    "SIM_SCHEMA",
    "TRUTH_FIELDS",
    "Contexts",
    "DelayedFeedback",
    "Drift",
    "Environment",
    "JsonChunk",
    "LoggingPolicy",
    "SimConfig",
    "Simulator",
    "World",
    "default_drifts",
    "examination",
    "parse_drift",
    "sim_schema",
    "to_json_lines",
]
