"""Diagnostic-accuracy metrics in plain numpy (no sklearn).

- :func:`auc` — ROC AUC as the Mann–Whitney probability P(score⁺ > score⁻),
  ties counted one half.
- :func:`bootstrap_auc_ci` — percentile CI from a stratified bootstrap
  (positives and negatives resampled separately, fixed seed), optionally
  clustered (slices resampled by series, since slices of one series are
  not independent).
- :func:`delong_ci` — DeLong's asymptotic CI (structural components).
- :func:`wilson_ci` — Wilson score interval for a proportion.
- :func:`clustered_rate_ci` — percentile bootstrap CI for a proportion whose
  trials come in correlated groups (slices of a series), resampling groups.
- :func:`roc_curve` — (FPR, TPR, thresholds) points for plotting.
- :func:`threshold_for_false_alarms` — the lowest threshold whose false-alarm
  rate stays at or under a target, per 100 negatives.
- :func:`slice_threshold_for_false_slices` — the same for slices: at most a
  target share of the slices of the negative series called.

Scores are "positive when ≥ threshold", as the decision rules are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054  # two-sided 95 % normal quantile
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 20240612


def _split(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    if s.shape != y.shape:
        raise ValueError(f"{s.size} scores but {y.size} labels")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    return s[y], s[~y]


def _placements(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's placement values: for each positive, the share of negatives it beats (ties ½), and
    for each negative, the share of positives that beat it."""
    neg_sorted = np.sort(neg)
    pos_sorted = np.sort(pos)
    below = np.searchsorted(neg_sorted, pos, side="left")
    tied = np.searchsorted(neg_sorted, pos, side="right") - below
    v10 = (below + 0.5 * tied) / neg.size
    above = pos.size - np.searchsorted(pos_sorted, neg, side="right")
    tied_p = np.searchsorted(pos_sorted, neg, side="right") - np.searchsorted(pos_sorted, neg, side="left")
    v01 = (above + 0.5 * tied_p) / pos.size
    return v10, v01


def auc(scores, labels) -> float | None:
    """ROC AUC (Mann–Whitney, ties ½); None without at least one positive and one negative."""
    pos, neg = _split(scores, labels)
    if pos.size == 0 or neg.size == 0:
        return None
    v10, _ = _placements(pos, neg)
    return float(v10.mean())


def delong_ci(scores, labels, level_z: float = Z95) -> tuple[float, float] | None:
    """DeLong (1988) CI for the AUC: auc ± z·sqrt(S10/m + S01/n), clipped to [0, 1].

    None when fewer than two positives or two negatives (no variance estimate).
    """
    pos, neg = _split(scores, labels)
    if pos.size < 2 or neg.size < 2:
        return None
    v10, v01 = _placements(pos, neg)
    a = float(v10.mean())
    var = v10.var(ddof=1) / pos.size + v01.var(ddof=1) / neg.size
    half = level_z * math.sqrt(max(var, 0.0))
    return max(0.0, a - half), min(1.0, a + half)


def _auc_sorted_neg(pos: np.ndarray, neg_sorted: np.ndarray) -> float:
    below = np.searchsorted(neg_sorted, pos, side="left")
    tied = np.searchsorted(neg_sorted, pos, side="right") - below
    return float((below + 0.5 * tied).sum() / (pos.size * neg_sorted.size))


def bootstrap_auc_ci(scores, labels, *, groups=None, resamples: int = BOOTSTRAP_RESAMPLES,
                     seed: int = BOOTSTRAP_SEED, level: float = 0.95) -> tuple[float, float] | None:
    """Percentile bootstrap CI for the AUC, stratified by label; deterministic for a seed.

    Without ``groups`` positives and negatives are resampled separately with
    replacement. With ``groups`` (e.g. one series id per slice) whole groups
    are resampled — stratified by whether the group holds any positive — so
    correlated slices are not counted as independent evidence. Resamples
    lacking either class are skipped. None when the AUC itself is undefined.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    if auc(s, y) is None:
        return None
    rng = np.random.default_rng(seed)
    values = []
    if groups is None:
        pos, neg = s[y], s[~y]
        for _ in range(resamples):
            p = pos[rng.integers(0, pos.size, pos.size)]
            n = np.sort(neg[rng.integers(0, neg.size, neg.size)])
            values.append(_auc_sorted_neg(p, n))
    else:
        g = np.asarray(groups).ravel()
        if g.shape != s.shape:
            raise ValueError(f"{g.size} groups but {s.size} scores")
        _, inverse = np.unique(g, return_inverse=True)
        members = [np.flatnonzero(inverse == k) for k in range(inverse.max() + 1)]
        has_pos = np.array([y[m].any() for m in members])
        strata = [np.flatnonzero(has_pos), np.flatnonzero(~has_pos)]
        for _ in range(resamples):
            chosen = [st[rng.integers(0, st.size, st.size)] for st in strata if st.size]
            idx = np.concatenate([members[k] for part in chosen for k in part])
            yy = y[idx]
            if yy.all() or not yy.any():
                continue
            values.append(_auc_sorted_neg(s[idx][yy], np.sort(s[idx][~yy])))
    if not values:
        return None
    tail = (1.0 - level) / 2.0 * 100.0
    lo, hi = np.percentile(np.asarray(values), [tail, 100.0 - tail])
    return float(lo), float(hi)


def wilson_ci(successes: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval for ``successes / n``; None when ``n`` is 0."""
    if n <= 0:
        return None
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def clustered_rate_ci(hits, groups, *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                      level: float = 0.95) -> tuple[float, float] | None:
    """Percentile bootstrap CI for ``mean(hits)`` when the trials come in groups (``groups``: one id per trial)
    that are not independent of each other — slices of one series: whole groups are resampled with
    replacement and the rate recomputed over the trials they hold. None without trials."""
    h = np.asarray(hits).ravel().astype(bool)
    g = np.asarray(groups).ravel()
    if g.shape != h.shape:
        raise ValueError(f"{g.size} groups but {h.size} trials")
    if h.size == 0:
        return None
    _, inverse = np.unique(g, return_inverse=True)
    count = np.bincount(inverse).astype(np.float64)
    hit = np.bincount(inverse, weights=h.astype(np.float64))
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, count.size, (resamples, count.size))
    rates = hit[pick].sum(axis=1) / count[pick].sum(axis=1)
    tail = (1.0 - level) / 2.0 * 100.0
    lo, hi = np.percentile(rates, [tail, 100.0 - tail])
    return float(lo), float(hi)


def roc_curve(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points for every distinct threshold, from (0, 0) to (1, 1): (fpr, tpr, thresholds).

    ``thresholds[i]`` is the score at which (fpr[i], tpr[i]) is reached by
    "positive when score ≥ threshold"; the first point has threshold +inf.
    """
    pos, neg = _split(scores, labels)
    if pos.size == 0 or neg.size == 0:
        raise ValueError("an ROC curve needs at least one positive and one negative")
    thresholds = np.unique(np.concatenate([pos, neg]))[::-1]
    tp = pos.size - np.searchsorted(np.sort(pos), thresholds, side="left")
    fp = neg.size - np.searchsorted(np.sort(neg), thresholds, side="left")
    fpr = np.concatenate([[0.0], fp / neg.size])
    tpr = np.concatenate([[0.0], tp / pos.size])
    return fpr, tpr, np.concatenate([[np.inf], thresholds])


@dataclass(frozen=True)
class OperatingPoint:
    """Counts and rates at one threshold ("positive when score ≥ threshold")."""

    threshold: float
    tp: int
    fn: int
    tn: int
    fp: int

    @property
    def sensitivity(self) -> float | None:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else None

    @property
    def specificity(self) -> float | None:
        return self.tn / (self.tn + self.fp) if self.tn + self.fp else None

    @property
    def false_alarms_per_100(self) -> float | None:
        return 100.0 * self.fp / (self.tn + self.fp) if self.tn + self.fp else None


def operating_point(scores, labels, threshold: float, called=None) -> OperatingPoint:
    """Counts at ``threshold``; ``called`` (bools) overrides ``score ≥ threshold`` with the model's own calls."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    c = (s >= threshold) if called is None else np.asarray(called).ravel().astype(bool)
    return OperatingPoint(float(threshold), int(np.sum(c & y)), int(np.sum(~c & y)), int(np.sum(~c & ~y)),
                          int(np.sum(c & ~y)))


def threshold_for_false_alarms(scores, labels, max_per_100: float) -> float | None:
    """The lowest threshold at which at most ``max_per_100`` false alarms occur per 100 negatives.

    The lowest such threshold gives the highest sensitivity. It lies halfway
    between the highest negative score that must stay below it and the next
    higher score, rounded to 3 decimals when that keeps it between them.
    None without negatives. 1.0 (well, just above the top negative) can be
    the answer when the target is stricter than one false alarm in the data.
    """
    pos, neg = _split(scores, labels)
    if neg.size == 0:
        return None
    allowed = int(math.floor(max_per_100 * neg.size / 100.0 + 1e-9))
    if allowed >= neg.size:
        return float(min(np.min(neg), np.min(pos) if pos.size else np.inf))
    desc = np.sort(neg)[::-1]
    floor_score = desc[allowed]  # this negative (and every lower one) must score below the threshold
    everything = np.concatenate([pos, neg])
    higher = everything[everything > floor_score]
    ceiling = float(np.min(higher)) if higher.size else min(1.0, floor_score + 1e-3)
    if ceiling <= floor_score:
        ceiling = float(np.nextafter(floor_score, np.inf))
    mid = (floor_score + ceiling) / 2.0
    for digits in (3, 4, 6):
        rounded = round(mid, digits)
        if floor_score < rounded <= ceiling:
            return float(rounded)
    return float(ceiling)


def slice_threshold_for_false_slices(series_scores, series_slice_labels, series_positive,
                                     max_per_100: float) -> float | None:
    """The lowest slice threshold at which at most ``max_per_100`` of 100 slices of the *negative* series
    score at or above it (:func:`threshold_for_false_alarms` on slices; positives: the labelled finding
    slices of the positive series). The slices of a positive series outside its finding are left out: their
    labels are the least certain. One entry per series in each argument. None without both kinds."""
    negative = [np.asarray(p, np.float64) for p, pos in zip(series_scores, series_positive) if not pos]
    finding = [np.asarray(p, np.float64)[np.asarray(y, bool)]
               for p, y, pos in zip(series_scores, series_slice_labels, series_positive) if pos]
    neg = np.concatenate(negative) if negative else np.zeros(0)
    pos = np.concatenate(finding) if finding else np.zeros(0)
    if not neg.size or not pos.size:
        return None
    return threshold_for_false_alarms(np.concatenate([pos, neg]),
                                      np.concatenate([np.ones(pos.size, bool), np.zeros(neg.size, bool)]),
                                      max_per_100)
