"""From the cases of each model finding to the figures of ``report.json`` (docs/VALIDATION.md)."""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from datetime import datetime, timezone

import numpy as np

from edge_agent import __version__
from edge_agent.validation import metrics
from edge_agent.validation.labels import DataIndex, Labels
from edge_agent.validation.run import STATUSES, Target

REPORT_SCHEMA = 1
_UID = re.compile(r"\b\d+(?:\.\d+){4,}\b")


def _clean(reason: str | None) -> str | None:
    """A reason with any DICOM UID in it replaced (reasons come from many layers; UIDs stay out of reports)."""
    return None if reason is None else _UID.sub("<uid>", reason)


def _r(value, digits: int = 4):
    if value is None:
        return None
    if isinstance(value, tuple):
        return [_r(v, digits) for v in value]
    return float(round(float(value), digits))


def _artefact(target: Target) -> tuple[str, str]:
    artefacts = target.model.manifest.artefacts
    key = "engine" if target.backend == "tensorrt" and "engine" in artefacts else "onnx"
    return key, artefacts[key].sha256


def operating(scores, labels, called, threshold: float) -> dict:
    """Sensitivity, specificity, false alarms per 100 negatives, their Wilson CIs and the counts."""
    op = metrics.operating_point(scores, labels, threshold, called=called)
    sens_ci = metrics.wilson_ci(op.tp, op.tp + op.fn)
    spec_ci = metrics.wilson_ci(op.tn, op.tn + op.fp)
    return {
        "threshold": _r(threshold, 6),
        "sensitivity": _r(op.sensitivity), "sensitivity_ci": _r(sens_ci),
        "specificity": _r(op.specificity), "specificity_ci": _r(spec_ci),
        "false_alarms_per_100": _r(op.false_alarms_per_100, 2),
        "false_alarms_per_100_ci": None if spec_ci is None else [_r(100 * (1 - spec_ci[1]), 2),
                                                                 _r(100 * (1 - spec_ci[0]), 2)],
        "counts": {"tp": op.tp, "fn": op.fn, "tn": op.tn, "fp": op.fp},
    }


def slice_operating(scores, labels, groups, threshold: float) -> dict:
    """Slices called at the model's slice threshold: sensitivity over the labelled-positive slices,
    specificity over the others, with CIs that resample whole series (``groups``)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    called = s >= threshold
    op = metrics.operating_point(s, y, threshold)
    out: dict = {"threshold": _r(threshold, 6), "sensitivity": _r(op.sensitivity),
                 "sensitivity_ci": _r(metrics.clustered_rate_ci(called[y], groups[y])) if y.any() else None,
                 "specificity": _r(op.specificity),
                 "specificity_ci": _r(metrics.clustered_rate_ci(~called[~y], groups[~y])) if (~y).any() else None,
                 "counts": {"tp": op.tp, "fn": op.fn, "tn": op.tn, "fp": op.fp}}
    return out


def _suggestion(scores, y, max_fa: float) -> dict:
    out: dict = {"max_false_alarms_per_100": max_fa, "applied": False}
    n_neg = int((~y).sum())
    t = metrics.threshold_for_false_alarms(scores, y, max_fa) if n_neg and y.any() else None
    if t is None or t > 1.0:
        out["threshold"] = None
        out["note"] = ("no threshold in [0, 1] meets this target on these series" if t is not None
                       else "needs analysed positive and negative series")
        return out
    at = operating(scores, y, None, t)
    out.update(threshold=at["threshold"], sensitivity=at["sensitivity"], sensitivity_ci=at["sensitivity_ci"],
               false_alarms_per_100=at["false_alarms_per_100"],
               false_alarms_per_100_ci=at["false_alarms_per_100_ci"])
    if n_neg < 100.0 / max(max_fa, 1e-9):
        out["note"] = (f"only {n_neg} negative series: one false alarm is {100.0 / n_neg:.1f} per 100, so "
                       "this target cannot be measured precisely; label more negative series")
    return out


def _slice_suggestion(series_scores, series_labels, max_per_100: float, series_threshold: float) -> dict:
    """The lowest slice threshold that calls at most ``max_per_100`` of 100 slices of the series without a
    positive slice (the slices of a positive series outside the finding are left out, as the training
    scripts choose it), never above the series threshold; its slice sensitivity. A suggestion, never applied.
    One array of slice scores and one of slice labels per series."""
    positive = [bool(np.asarray(lab, bool).any()) for lab in series_labels]
    s = np.concatenate([np.asarray(x, np.float64) for x in series_scores])
    y = np.concatenate([np.asarray(lab, bool) for lab in series_labels])
    g = np.concatenate([np.full(len(x), i) for i, x in enumerate(series_scores)])
    negative_series = np.concatenate([np.full(len(x), not pos) for x, pos in zip(series_scores, positive)])
    out: dict = {"max_false_slices_per_100": max_per_100, "applied": False}
    t = metrics.slice_threshold_for_false_slices(series_scores, series_labels, positive, max_per_100)
    if t is None:
        out.update(threshold=None, note="needs labelled positive slices and series with no positive slice")
        return out
    capped = t > series_threshold
    t = min(t, float(series_threshold))
    called = s >= t
    out.update(threshold=_r(t, 6), sensitivity=_r(float(called[y].mean())),
               sensitivity_ci=_r(metrics.clustered_rate_ci(called[y], g[y])),
               false_slices_per_100=_r(100.0 * float(called[negative_series].mean()), 2),
               false_slices_per_100_ci=[_r(100.0 * v, 2) for v in
                                        metrics.clustered_rate_ci(called[negative_series], g[negative_series])])
    out["note"] = ("capped at the series threshold (decision.slice_threshold may not exceed it); " if capped else
                   "") + ("chosen on these slices, so these figures flatter it: measure it on other series "
                          "before writing it into decision.slice_threshold")
    return out


def summarise(target: Target, *, max_false_alarms: float | None = None, what_if: float | None = None,
              max_false_slices: float | None = None) -> dict:
    """The report.json entry for one model finding."""
    m = target.model.manifest
    cases = target.cases
    analysed = [c for c in cases if c.status == "analysed" and c.probability is not None]
    y = np.array([c.label for c in analysed], bool)
    s = np.array([c.probability for c in analysed], np.float64)
    called = np.array([bool(c.positive) for c in analysed], bool)
    counts = {k: 0 for k in STATUSES}
    by_label = {k: {"positive": 0, "negative": 0} for k in STATUSES}
    reasons: dict[str, Counter] = {}
    for c in cases:
        counts[c.status] = counts.get(c.status, 0) + 1
        by_label.setdefault(c.status, {"positive": 0, "negative": 0})["positive" if c.label else "negative"] += 1
        if c.status != "analysed":
            reasons.setdefault(c.status, Counter())[_clean(c.reason) or "no reason given"] += 1
    key, sha = _artefact(target)
    entry: dict = {
        "name": m.name, "version": m.version, "finding": target.code,
        "label": next(f.label for f in m.findings if f.code == target.code),
        "backend": target.backend or getattr(target.model.runner, "backend", None),
        "artefact": key, "sha256": sha,
        "synthetic_training": m.synthetic_training,
        "decision": m.decision.to_dict(),
        "labelled_series": len(cases),
        "positives": int(sum(c.label for c in cases)), "negatives": int(sum(not c.label for c in cases)),
        "series": counts, "series_by_label": by_label,
        "reasons": {k: [{"reason": r, "series": n} for r, n in v.most_common()] for k, v in reasons.items()},
        "analysed_positives": int(y.sum()), "analysed_negatives": int((~y).sum()),
    }
    a = metrics.auc(s, y) if analysed else None
    entry["auc"] = _r(a)
    entry["auc_ci"] = _r(metrics.bootstrap_auc_ci(s, y)) if a is not None else None
    entry["auc_ci_method"] = (f"stratified bootstrap, {metrics.BOOTSTRAP_RESAMPLES} resamples, "
                              f"seed {metrics.BOOTSTRAP_SEED}")
    if a is not None and min(int(y.sum()), int((~y).sum())) < 10:
        entry["note"] = (f"only {int(y.sum())} positive and {int((~y).sum())} negative analysed series: every "
                         "interval is wide (or, with perfect separation, misleadingly narrow); label more series")
    entry["auc_ci_delong"] = _r(metrics.delong_ci(s, y)) if a is not None else None
    entry.update(operating(s, y, called, m.decision.threshold))
    negatives = [c for c in analysed if not c.label]
    entry["preliminary_false_alarms_per_100"] = (
        _r(100.0 * sum(bool(c.preliminary) for c in negatives) / len(negatives), 2) if negatives else None)
    with_slices = [c for c in analysed if c.slice_scores is not None and c.slice_scores.size]
    if with_slices:
        ss = np.concatenate([c.slice_scores for c in with_slices])
        sl = np.concatenate([c.slice_labels for c in with_slices])
        groups = np.concatenate([np.full(c.slice_scores.size, c.index) for c in with_slices])
        sa = metrics.auc(ss, sl)
        entry["slice_level"] = {
            "slices": int(ss.size), "positive_slices": int(sl.sum()), "series": len(with_slices),
            "auc": _r(sa),
            "auc_ci": _r(metrics.bootstrap_auc_ci(ss, sl, groups=groups)) if sa is not None else None,
            "auc_ci_method": "bootstrap resampling whole series (slices of a series are correlated)",
            **slice_operating(ss, sl, groups, m.decision.slice_cut),
        }
        if max_false_slices is not None:
            entry["slice_level"]["suggested_threshold"] = _slice_suggestion(
                [c.slice_scores for c in with_slices], [c.slice_labels for c in with_slices], max_false_slices,
                m.decision.threshold)
    else:
        entry["slice_level"] = None
    if max_false_alarms is not None:
        entry["suggested_threshold"] = _suggestion(s, y, max_false_alarms)
    if what_if is not None:
        entry["what_if"] = dict(operating(s, y, None, what_if), applied=False)
    entry["cases"] = [{"series": f"#{c.index}", "uid_sha256": c.uid_hash, "label": int(c.label),
                       "status": c.status, "probability": c.probability, "positive": c.positive,
                       "key_slice": c.key_slice, **({"reason": _clean(c.reason)} if c.reason else {})}
                      for c in sorted(cases, key=lambda c: c.index)]
    return entry


def build_report(index: DataIndex, labels: Labels, targets: list[Target], *, max_false_alarms: float | None,
                 what_if: float | None, max_false_slices: float | None = None) -> dict:
    """The whole report.json: the data set (counts and a fingerprint, no paths), then one entry per model finding."""
    labelled = {uid for uid, _ in labels.series}
    fingerprint = hashlib.sha256("\n".join(sorted(f"{u}|{f}|{int(v)}" for (u, f), v in labels.series.items()))
                                 .encode()).hexdigest()[:16]
    entries = [summarise(t, max_false_alarms=max_false_alarms, what_if=what_if, max_false_slices=max_false_slices)
               for t in targets if t.cases]
    return {
        "schema": REPORT_SCHEMA,
        "tool": "edge-agent validate", "tool_version": __version__,
        "date": datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        "data": {
            "series": len(index.series),
            "labelled_series": len(labelled & {e.uid for e in index.series}),
            "unlabelled_series": sum(1 for e in index.series if e.uid not in labelled),
            "labels_source": labels.source,
            "label_rows_without_series": labels.unmatched,
            "series_with_conflicting_folders": labels.conflicting,
            "files_left_out": int(sum(index.left_out.values())),
            "files_left_out_reasons": [{"reason": _clean(r), "files": n} for r, n in index.left_out.most_common(10)],
            "labels_sha256": fingerprint,
        },
        "models": entries,
        "not_validated": [f"{t.model.name}/{t.code}" for t in targets if not t.cases],
    }
