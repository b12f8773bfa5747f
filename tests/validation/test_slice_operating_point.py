"""The slice operating point (metrics.slice_threshold_for_false_slices: what scripts/choose_slice_threshold.py
and the training scripts choose, and ``validate --max-false-slices`` suggests), checked by brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edge_agent.validation.metrics import slice_threshold_for_false_slices


def _series(seed: int, n: int = 24):
    rng = np.random.default_rng(seed)
    probs, labels, positive = [], [], []
    for i in range(n):
        slices = int(rng.integers(8, 30))
        y = np.zeros(slices, bool)
        if i % 2 == 0:
            start = int(rng.integers(0, slices - 3))
            y[start:start + int(rng.integers(1, 4))] = True
        p = np.clip(rng.beta(1.5, 6.0, slices) + 0.5 * y * rng.random(slices), 0, 1)
        probs.append(p)
        labels.append(y)
        positive.append(i % 2 == 0)
    return probs, labels, np.array(positive)


@pytest.mark.parametrize("seed, per_100", [(0, 2.0), (1, 5.0), (2, 0.0), (3, 10.0)])
def test_the_lowest_threshold_that_calls_at_most_the_allowed_normal_slices(seed, per_100):
    probs, labels, positive = _series(seed)
    t = slice_threshold_for_false_slices(probs, labels, positive, per_100)
    normal = np.concatenate([p for p, pos in zip(probs, positive) if not pos])
    allowed = math.floor(per_100 * normal.size / 100 + 1e-9)
    assert np.sum(normal >= t) <= allowed
    # every lower threshold calls more normal slices than allowed: the next-lower candidate is a normal score
    below = np.sort(normal[normal < t])
    if below.size:
        assert np.sum(normal >= below[-1]) > allowed


def test_the_finding_series_other_slices_do_not_count_and_both_kinds_are_needed():
    probs, labels, positive = _series(4)
    free = slice_threshold_for_false_slices(probs, labels, positive, 2.0)
    # raising the non-finding slices of the finding series changes nothing: they are not negatives
    louder = [np.where(y, p, np.maximum(p, 0.99)) if pos else p for p, y, pos in zip(probs, labels, positive)]
    assert slice_threshold_for_false_slices(louder, labels, positive, 2.0) == free
    assert slice_threshold_for_false_slices(probs, labels, np.ones_like(positive), 2.0) is None
    assert slice_threshold_for_false_slices(probs, labels, np.zeros_like(positive), 2.0) is None


@pytest.mark.parametrize("seed, per_100", [(5, 2.0), (6, 10.0)])
def test_validate_suggests_a_slice_threshold_from_the_series_without_a_positive_slice(seed, per_100):
    from edge_agent.validation.summary import _slice_suggestion

    probs, labels, _ = _series(seed)
    s, y = np.concatenate(probs), np.concatenate(labels)
    out = _slice_suggestion(probs, labels, per_100, series_threshold=1.0)
    normal = np.concatenate([p for p, lab in zip(probs, labels) if not lab.any()])   # by hand
    t = out["threshold"]
    assert out["applied"] is False and "flatter" in out["note"]
    assert np.sum(normal >= t) <= math.floor(per_100 * normal.size / 100 + 1e-9)
    assert out["false_slices_per_100"] == pytest.approx(100 * np.mean(normal >= t), abs=0.01)
    assert out["sensitivity"] == pytest.approx(np.mean(s[y] >= t), abs=1e-4)
    assert out["sensitivity_ci"][0] <= out["sensitivity"] <= out["sensitivity_ci"][1]
    capped = _slice_suggestion(probs, labels, 0.0, series_threshold=0.3)
    assert capped["threshold"] <= 0.3 and "capped" in capped["note"]
    none = _slice_suggestion(probs, [np.zeros_like(lab) for lab in labels], per_100, series_threshold=1.0)
    assert none["threshold"] is None and "needs" in none["note"]
