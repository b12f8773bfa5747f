"""The metrics against independent computations: brute-force pairs, scipy, and published examples."""

import itertools

import numpy as np
import pytest
from scipy.stats import binomtest, mannwhitneyu

from edge_agent.validation import metrics as M

# Hanley & McNeil (1982), Radiology 143:29, Table 1: five-point ratings of 58 normal and 51 abnormal CT images.
HM_NEG = np.repeat([1, 2, 3, 4, 5], [33, 6, 6, 11, 2])
HM_POS = np.repeat([1, 2, 3, 4, 5], [3, 2, 2, 11, 33])


def brute_auc(scores, labels):
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def brute_delong(scores, labels, z=1.959963984540054):
    s, y = np.asarray(scores, float), np.asarray(labels, bool)
    pos, neg = s[y], s[~y]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    a = psi.mean()
    var = psi.mean(axis=1).var(ddof=1) / pos.size + psi.mean(axis=0).var(ddof=1) / neg.size
    return a - z * var ** 0.5, a + z * var ** 0.5


def random_data(seed, n=60, ties=True):
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.4
    y[:2] = [True, False]
    s = rng.normal(y * 1.0, 1.0)
    return (np.round(s, 1) if ties else s), y


@pytest.mark.parametrize("seed", range(6))
def test_auc_equals_brute_force_pairs_and_mann_whitney(seed):
    s, y = random_data(seed)
    assert M.auc(s, y) == pytest.approx(brute_auc(s, y), abs=1e-12)
    u = mannwhitneyu(s[y], s[~y], alternative="two-sided").statistic
    assert M.auc(s, y) == pytest.approx(u / (y.sum() * (~y).sum()), abs=1e-12)


def test_auc_textbook_hanley_mcneil():
    s = np.concatenate([HM_POS, HM_NEG])
    y = np.r_[np.ones(HM_POS.size, bool), np.zeros(HM_NEG.size, bool)]
    assert M.auc(s, y) == pytest.approx(0.893, abs=5e-4)  # the paper's trapezoidal area
    lo, hi = M.delong_ci(s, y)
    assert (hi - lo) / (2 * 1.96) == pytest.approx(0.032, abs=0.003)  # their SE 0.032 (exponential approx.)


def test_auc_edge_cases():
    assert M.auc([0.1, 0.2], [1, 1]) is None
    assert M.auc([0.3, 0.3], [1, 0]) == 0.5
    assert M.auc([0.9, 0.1], [1, 0]) == 1.0
    assert M.auc([0.1, 0.9], [1, 0]) == 0.0
    with pytest.raises(ValueError):
        M.auc([0.1, np.nan], [1, 0])


@pytest.mark.parametrize("seed", range(4))
def test_delong_equals_brute_force_structural_components(seed):
    s, y = random_data(seed)
    assert M.delong_ci(s, y) == pytest.approx(tuple(np.clip(brute_delong(s, y), 0, 1)), abs=1e-12)


@pytest.mark.parametrize("k,n,lo,hi", [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605),
                                       (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718)])
def test_wilson_newcombe_1998_and_scipy(k, n, lo, hi):
    ci = M.wilson_ci(k, n)
    assert ci == pytest.approx((lo, hi), abs=1e-4)  # Newcombe (1998), Stat Med 17:857, Table II, method 3
    ref = binomtest(k, n).proportion_ci(method="wilson")
    assert ci == pytest.approx((ref.low, ref.high), abs=1e-12)
    assert M.wilson_ci(0, 0) is None


@pytest.mark.parametrize("seed", range(4))
def test_roc_curve_area_is_the_auc(seed):
    s, y = random_data(seed)
    fpr, tpr, thr = M.roc_curve(s, y)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 has only trapz
    assert trapezoid(tpr, fpr) == pytest.approx(brute_auc(s, y), abs=1e-12)
    for f, t, th in zip(fpr[1:], tpr[1:], thr[1:]):  # each point is "positive when score >= threshold"
        assert t == pytest.approx(np.mean(s[y] >= th)) and f == pytest.approx(np.mean(s[~y] >= th))


def test_bootstrap_ci_deterministic_and_close_to_delong_on_large_samples():
    s, y = random_data(1, n=600, ties=False)
    a = M.auc(s, y)
    ci1, ci2 = M.bootstrap_auc_ci(s, y), M.bootstrap_auc_ci(s, y)
    assert ci1 == ci2 and ci1[0] < a < ci1[1]
    assert ci1 == pytest.approx(M.delong_ci(s, y), abs=0.015)
    assert M.bootstrap_auc_ci(s, y, seed=1) != ci1
    assert M.bootstrap_auc_ci([0.2, 0.3], [1, 1]) is None


def test_cluster_bootstrap_does_not_count_copies_as_evidence():
    s, y = random_data(2, n=80, ties=False)
    groups = np.arange(s.size)
    copies = 10  # every series contributes 10 identical slices
    ss, yy, gg = np.repeat(s, copies), np.repeat(y, copies), np.repeat(groups, copies)
    naive, clustered = M.bootstrap_auc_ci(ss, yy), M.bootstrap_auc_ci(ss, yy, groups=gg)
    series = M.bootstrap_auc_ci(s, y)
    assert (clustered[1] - clustered[0]) == pytest.approx(series[1] - series[0], rel=0.25)
    assert (naive[1] - naive[0]) < 0.6 * (clustered[1] - clustered[0])


def test_clustered_rate_ci_matches_wilson_for_independent_trials_and_widens_for_copies():
    rng = np.random.default_rng(7)
    hits = rng.random(400) < 0.3
    lo, hi = M.clustered_rate_ci(hits, np.arange(400))
    wlo, whi = M.wilson_ci(int(hits.sum()), 400)
    assert lo < hits.mean() < hi and (hi - lo) == pytest.approx(whi - wlo, rel=0.2)
    assert M.clustered_rate_ci(hits, np.arange(400)) == (lo, hi)  # a fixed seed
    few = hits[:40]
    copies = np.repeat(few, 10), np.repeat(np.arange(40), 10)  # every series: 10 slices that agree
    clo, chi = M.clustered_rate_ci(*copies)
    one = M.wilson_ci(int(few.sum()), 40)
    naive = M.wilson_ci(int(copies[0].sum()), 400)
    assert (chi - clo) == pytest.approx(one[1] - one[0], rel=0.25)
    assert (chi - clo) > 2.0 * (naive[1] - naive[0])
    assert M.clustered_rate_ci([], []) is None


def test_operating_point_counts():
    op = M.operating_point([0.9, 0.6, 0.4, 0.7, 0.2, 0.1], [1, 1, 1, 0, 0, 0], 0.5)
    assert (op.tp, op.fn, op.tn, op.fp) == (2, 1, 2, 1)
    assert op.sensitivity == pytest.approx(2 / 3) and op.specificity == pytest.approx(2 / 3)
    assert op.false_alarms_per_100 == pytest.approx(100 / 3)
    called = M.operating_point([0.9, 0.1], [1, 0], 0.5, called=[False, True])
    assert (called.tp, called.fp) == (0, 1)


@pytest.mark.parametrize("seed,target", [(0, 0.0), (1, 2.0), (2, 10.0), (3, 25.0), (4, 100.0)])
def test_suggested_threshold_is_the_best_valid_one_by_brute_force(seed, target):
    s, y = random_data(seed, n=120)
    t = M.threshold_for_false_alarms(s, y, target)
    fa = lambda th: 100.0 * np.mean(s[~y] >= th)  # noqa: E731
    sens = lambda th: np.mean(s[y] >= th)  # noqa: E731
    assert fa(t) <= target + 1e-9
    # brute force: every candidate threshold (each score, and just above it) that meets the target
    cands = np.unique(np.concatenate([s, np.nextafter(s, np.inf)]))
    valid = [c for c in cands if fa(c) <= target + 1e-9]
    assert sens(t) == pytest.approx(max(sens(c) for c in valid))
    assert M.threshold_for_false_alarms([0.5], [1], 5) is None
