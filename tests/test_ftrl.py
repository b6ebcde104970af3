"""FTRL-Proximal: the vectorised learner equals a per-coordinate reference implementation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.events import EventRules, decode_json
from pipeline.features import FeatureSpec, Featurizer
from pipeline.learners.ftrl import FTRL


def _batch(n=64, seed=0):
    rng = np.random.default_rng(seed)
    rows = [
        (
            b'{"event_id":"e%d","ts":%d,"user_id":"u%d","item_id":"i%d","label":%d,"features":{"d":"x%d","p":%f}}'
            % (i, i, rng.integers(5), rng.integers(7), rng.integers(2), rng.integers(3), rng.random())
        )
        for i in range(n)
    ]
    events, dead = decode_json(rows, EventRules())
    assert not dead
    return Featurizer(FeatureSpec(standardize=False)).transform(events)


def _reference_step(z, n, rows, labels, alpha, beta, l1, l2, bits):
    """McMahan et al. (2013), Algorithm 1, with the batch's gradients summed per coordinate."""

    def w(i):
        if abs(z[i]) <= l1:
            return 0.0
        return -(z[i] - math.copysign(l1, z[i])) / ((beta + math.sqrt(n[i])) / alpha + l2)

    preds = []
    for feats in rows:
        m = sum(w(i) * x for i, x in feats)
        preds.append(1 / (1 + math.exp(-max(min(m, 35), -35))))
    grads: dict[int, float] = {}
    for feats, p, y in zip(rows, preds, labels):
        for i, x in feats:
            grads[i] = grads.get(i, 0.0) + (p - y) * x
    for i, g in grads.items():
        sigma = (math.sqrt(n[i] + g * g) - math.sqrt(n[i])) / alpha
        z[i] += g - sigma * w(i)
        n[i] += g * g
    return preds


@pytest.mark.parametrize("batch_size", [1, 16, 64])
def test_ftrl_matches_reference_implementation(batch_size):
    fb = _batch()
    bits = 10
    model = FTRL(alpha=0.3, beta=1.0, l1=0.1, l2=0.5, bits=bits)
    z, n = {i: 0.0 for i in range(1 << bits)}, {i: 0.0 for i in range(1 << bits)}
    slots = fb.slots(bits)
    rows = [
        list(
            zip(
                slots[fb.indptr[r] : fb.indptr[r + 1]].tolist(),
                fb.values[fb.indptr[r] : fb.indptr[r + 1]].tolist(),
            )
        )
        for r in range(len(fb))
    ]
    labels = fb.labels.tolist()
    events = fb.events
    featurizer = Featurizer(FeatureSpec(standardize=False))
    for start in range(0, len(fb), batch_size):
        sub = featurizer.transform(events.take(np.arange(start, min(start + batch_size, len(fb)))))
        ours = model.predict(sub)
        ref = _reference_step(
            z,
            n,
            rows[start : start + batch_size],
            labels[start : start + batch_size],
            0.3,
            1.0,
            0.1,
            0.5,
            bits,
        )
        np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-12)
        model.learn(sub, ours)
    st = model.state()
    np.testing.assert_allclose(st.arrays["z"], [z[i] for i in range(1 << bits)], rtol=1e-9, atol=1e-12)


def test_ftrl_learns_separable_signal():
    fb = _batch(400, seed=3)
    model = FTRL(alpha=0.5, l1=0.0, bits=12)
    before = np.abs(model.predict(fb) - fb.labels).mean()
    for _ in range(30):
        model.learn(fb, model.predict(fb))
    assert np.abs(model.predict(fb) - fb.labels).mean() < before


def test_ftrl_l1_keeps_unused_weights_zero():
    fb = _batch()
    model = FTRL(l1=1e9, bits=10)
    model.learn(fb, model.predict(fb))
    np.testing.assert_array_equal(model.predict(fb), 0.5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"alpha": 0}, "alpha must be > 0"),
        ({"l1": -1}, "l1 must be >= 0"),
        ({"bits": 40}, "bits must be an integer"),
    ],
)
def test_ftrl_bad_parameters_name_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FTRL(**kwargs)


def test_ftrl_load_state_rejects_wrong_size():
    with pytest.raises(ValueError, match="bits=10"):
        FTRL(bits=10).load_state(FTRL(bits=12).state())
