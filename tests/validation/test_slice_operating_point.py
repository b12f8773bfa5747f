"""The training scripts' slice operating point (scripts/_training.choose_slice_threshold), checked by brute force."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from _training import choose_slice_threshold  # noqa: E402


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
    t = choose_slice_threshold(probs, labels, positive, series_threshold=1.0, max_false_slices_per_100=per_100)
    normal = np.concatenate([p for p, pos in zip(probs, positive) if not pos])
    allowed = math.floor(per_100 * normal.size / 100 + 1e-9)
    assert np.sum(normal >= t) <= allowed
    # every lower threshold calls more normal slices than allowed: the next-lower candidate is a normal score
    below = np.sort(normal[normal < t])
    if below.size:
        assert np.sum(normal >= below[-1]) > allowed


def test_never_above_the_series_threshold_and_the_finding_series_other_slices_do_not_count():
    probs, labels, positive = _series(4)
    free = choose_slice_threshold(probs, labels, positive, series_threshold=1.0)
    assert choose_slice_threshold(probs, labels, positive, series_threshold=free / 2) == free / 2
    # raising the non-finding slices of the finding series changes nothing: they are not negatives
    louder = [np.where(y, p, np.maximum(p, 0.99)) if pos else p for p, y, pos in zip(probs, labels, positive)]
    assert choose_slice_threshold(louder, labels, positive, series_threshold=1.0) == free
