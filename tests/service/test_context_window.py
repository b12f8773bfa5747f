"""The daemon's 2.5-D window (edge_agent.service.context) on its own: when a slice is scored, with whom, and
what it holds. Each slice's planes carry its index, so the input shows which neighbours were chosen;
the expected ones are ``i ± k`` (k = offset / spacing), the end slice near the ends, the slice itself at them."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.preprocess import ContextSpec
from edge_agent.service.context import ContextWindow


def expected(n, k):
    return {i: (i if i == 0 else max(i - k, 0), i if i == n - 1 else min(i + k, n - 1)) for i in range(n)}


def stream(order, spacing, offset, thickness, batch=4):
    """Feed slices in ``order`` in batches; score what is ready after each; the rest at settle."""
    w = ContextWindow(ContextSpec(offset, ((0.0, 1.0),)), thickness)
    used, early, sizes = {}, set(), []

    def score(uids, settle=False):
        if not uids:
            return
        x = w.inputs(uids)
        for uid, row in zip(uids, x):
            used[int(uid)] = (int(row[1, 0, 0]), int(row[2, 0, 0]))
            if not settle:
                early.add(int(uid))
        w.scored(uids)

    for b in range(0, len(order), batch):
        for i in order[b:b + batch]:
            w.add(f"{i:03d}", i * spacing, np.full((1, 1, 1), float(i)), np.zeros((1, 1, 1)), meta=i)
        score(w.ready())
        w.drop()
        sizes.append(len(w))
    score(w.pending(), settle=True)
    return used, early, sizes, w


@pytest.mark.parametrize("spacing, k", [(5.0, 1), (2.5, 2), (1.25, 4)])
@pytest.mark.parametrize("seed", range(6))
def test_out_of_order_arrival_chooses_the_neighbours_of_the_whole_series(spacing, k, seed):
    n = 30
    order = list(np.random.default_rng(seed).permutation(n))
    used, early, _, _ = stream(order, spacing, 5.0, thickness=spacing)
    assert used == expected(n, k)
    assert len(early) > n // 2, "most are scored before settle"


@pytest.mark.parametrize("spacing, k", [(5.0, 1), (2.5, 2), (1.25, 4)])
def test_in_order_each_slice_is_scored_once_offset_mm_past_it_has_landed_and_the_window_stays_small(spacing, k):
    n = 60
    used, early, sizes, w = stream(list(range(n)), spacing, 5.0, thickness=spacing, batch=1)
    assert used == expected(n, k)
    assert early == set(range(k, n - k)), "only the ends wait for settle"
    # held: the k pending at each end and the scored slices within 2 x offset of them
    assert max(sizes) <= 2 * (k + 2 * k) and w.peak <= 2 * (k + 2 * k) + 1
    assert len(w.held) <= 2 * (k + 2 * k)


def test_a_hole_waits_for_the_slice_that_fills_it():
    w = ContextWindow(ContextSpec(5.0, ((0.0, 1.0),)), 5.0)
    for i in (0, 1, 3, 4):                                    # slice 2 (10 mm) not here yet
        w.add(str(i), i * 5.0, np.full((1, 1, 1), float(i)), np.zeros((1, 1, 1)))
    assert w.ready() == []                                    # 1 and 3 would otherwise see past the hole
    w.add("2", 10.0, np.full((1, 1, 1), 2.0), np.zeros((1, 1, 1)))
    assert w.ready() == ["1", "2", "3"]


def test_a_slice_scored_before_is_held_as_a_neighbour_only():
    w = ContextWindow(ContextSpec(5.0, ((0.0, 1.0),)), 5.0)
    w.add("0", 0.0, np.full((1, 1, 1), 0.0))                  # scored before a restart: planes only
    w.add("1", 5.0, np.full((1, 1, 1), 1.0), np.zeros((1, 1, 1)))
    w.add("2", 10.0, np.full((1, 1, 1), 2.0))
    assert w.pending() == ["1"] and w.ready() == ["1"]
    x = w.inputs(["1"])
    assert x.shape == (1, 3, 1, 1) and x[0, 1, 0, 0] == 0.0 and x[0, 2, 0, 0] == 2.0
    w.scored(["1"])
    assert w.drop() == 3 and len(w) == 0                     # nothing pending: nothing needed
