"""Analyse each labelled series with the product's own code and keep what the report needs.

Every series goes through :func:`edge_agent.service.analyse.analyse_series`,
exactly what ``infer`` and the daemon run, so the figures describe the model
as deployed (backend, preprocessing, decision rule, applicability checks).
Series are loaded one at a time; only a small windowed thumbnail of each
key slice is kept. No patient attribute is read or kept.
"""

from __future__ import annotations

import inspect
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from edge_agent.dicom import scan
from edge_agent.inference.models import Model, ModelSet
from edge_agent.service.analyse import analyse_series
from edge_agent.validation.labels import DataIndex, Labels, SeriesEntry

log = logging.getLogger("edge_agent.validate")

STATUSES = ("analysed", "skipped", "rejected", "not_assessable")
_STATUS_OF_MODEL = {"analysed": "analysed", "rejected": "rejected", "failed": "rejected", "skipped": "skipped",
                    "not_assessable": "not_assessable"}
BRAIN_WINDOW = (40.0, 80.0)
LUNG_WINDOW = (-600.0, 1500.0)
THUMB = 192


@dataclass
class Case:
    """One labelled series as one model saw it (no PHI: an index and a UID hash)."""

    index: int
    uid_hash: str
    label: bool
    status: str
    reason: str | None = None
    probability: float | None = None
    positive: bool | None = None
    preliminary: bool | None = None
    key_slice: int | None = None
    slices: int = 0
    thumbnail: np.ndarray | None = field(default=None, repr=False)   # uint8 (h, w), windowed
    slice_scores: np.ndarray | None = field(default=None, repr=False)
    slice_labels: np.ndarray | None = field(default=None, repr=False)


@dataclass
class Target:
    """One model and one of its findings, with every case labelled for that finding."""

    model: Model
    code: str
    cases: list[Case] = field(default_factory=list)
    backend: str | None = None

    @property
    def column(self) -> int:
        return [f.code for f in self.model.manifest.findings].index(self.code)


def display_window(model: Model) -> tuple[float, float]:
    """Brain window for head models, lung window for chest models, else the model's first window."""
    rule = model.manifest.applies_to
    words = {w.upper() for w in (*rule.body_part, *rule.description_keywords)}
    if words & {"HEAD", "BRAIN", "SKULL", "CRAN"}:
        return BRAIN_WINDOW
    if words & {"CHEST", "THORAX", "LUNG", "THORAC"}:
        return LUNG_WINDOW
    return tuple(model.manifest.preprocessing.windows[0])  # type: ignore[return-value]


def thumbnail(hu: np.ndarray, window: tuple[float, float], size: int = THUMB) -> np.ndarray:
    """A windowed uint8 copy of one slice, shrunk by block means to at most ``size`` pixels a side."""
    hu = np.asarray(hu, np.float32)
    body = np.argwhere(hu > -500.0)
    if body.size:  # a square crop around the anatomy (scanners leave much air around a head)
        (r0, c0), (r1, c1) = body.min(axis=0), body.max(axis=0) + 1
        half = int(max(r1 - r0, c1 - c0) * 0.55) + 2
        rc, cc = (r0 + r1) // 2, (c0 + c1) // 2
        padded = np.pad(hu, half, constant_values=-1024.0)
        hu = padded[rc:rc + 2 * half, cc:cc + 2 * half]
    centre, width = window
    img = np.clip((hu - (centre - width / 2.0)) / width, 0.0, 1.0)
    step = max(1, int(np.ceil(max(img.shape) / size)))
    if step > 1:
        h, w = (img.shape[0] // step) * step, (img.shape[1] // step) * step
        img = img[:h, :w].reshape(h // step, step, w // step, step).mean(axis=(1, 3))
    return (img * 255.0 + 0.5).astype(np.uint8)


def _accepts_slice_probabilities() -> bool:
    try:
        params = inspect.signature(analyse_series).parameters
    except (TypeError, ValueError):
        return False
    return "slice_probabilities" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _analyse(series: Any, models: ModelSet, want_slices: bool) -> dict:
    if want_slices and _accepts_slice_probabilities():
        try:
            return analyse_series(series, models, slice_probabilities=True)
        except TypeError as exc:
            if "slice_probabilities" not in str(exc):
                raise
    return analyse_series(series, models)


def _load(entry: SeriesEntry) -> tuple[Any | None, str | None]:
    try:
        report = scan(entry.paths, workers=1)
    except Exception as exc:  # noqa: BLE001 - one unreadable series is a reason, not the end of the run
        return None, f"the series could not be read ({type(exc).__name__})"
    found = [s for s in report.series if s.series_instance_uid == entry.uid] or report.series
    if not found:
        reasons = sorted({r.reason for r in report.rejected})
        return None, "no readable image in the series" + (f" ({reasons[0]})" if reasons else "")
    return found[0], None


def _status_for(model: Model, result: dict) -> tuple[str, str | None]:
    for entry in result.get("models", []):
        if entry.get("name") == model.name:
            status = _STATUS_OF_MODEL.get(str(entry.get("status")), str(entry.get("status")))
            return status, entry.get("reason")
    if result.get("status") in ("skipped", "rejected", "not_assessable") and result.get("reason") \
            and not result.get("models"):
        return ("skipped" if result["status"] == "skipped" else result["status"]), result["reason"]
    return "skipped", (f"model {model.name} does not apply to this series (modality "
                       f"{result.get('modality') or 'unknown'}, body part {result.get('body_part') or 'unknown'})")


def _fill(case: Case, target: Target, result: dict, series: Any, slice_truth: dict[str, bool] | None) -> None:
    model = target.model
    found = [f for f in result.get("findings", [])
             if f.get("code") == target.code and f.get("model", model.name) == model.name]
    if not found:
        case.status, case.reason = "rejected", f"model {model.name} returned no {target.code} finding"
        return
    f = found[0]
    case.probability = float(f["probability"])
    case.positive = bool(f["positive"])
    case.preliminary = bool(f.get("preliminary", False))
    keys = f.get("key_slices") or []
    n = int(series.hu.shape[0])
    case.key_slice = int(keys[0]["index"]) if keys and 0 <= int(keys[0].get("index", -1)) < n else None
    if case.key_slice is not None:
        case.thumbnail = thumbnail(series.hu[case.key_slice], display_window(model))
    if slice_truth:
        scores = f.get("slice_probabilities")
        if scores is None or len(scores) != n:
            positions = getattr(series, "positions", None)  # a 2.5-D model picks its neighbours by them
            scores = model.score_slices(series.hu, tuple(series.pixel_spacing),
                                        positions=positions if positions is not None and len(positions) == n
                                        else None)[:, target.column]
        uids = list(series.sop_instance_uids)
        pick = [i for i, u in enumerate(uids) if u in slice_truth]
        case.slice_scores = np.asarray(scores, np.float64)[pick]
        case.slice_labels = np.asarray([slice_truth[uids[i]] for i in pick], bool)


def run_validation(index: DataIndex, labels: Labels, models: ModelSet,
                   progress: Callable[[int, int, SeriesEntry, str], None] | None = None) -> list[Target]:
    """Analyse every series labelled for a finding of a loaded model; one :class:`Target` per model finding."""
    targets = [Target(m, f.code) for m in models for f in m.manifest.findings]
    wanted = {(uid, code) for uid, code in labels.series}
    todo = [e for e in index.series if any((e.uid, t.code) in wanted for t in targets)]
    for n, entry in enumerate(todo, start=1):
        t0 = time.perf_counter()
        series, why = _load(entry)
        want_slices = any((entry.uid, t.code) in labels.slices for t in targets)
        result = None
        if series is not None:
            result = _analyse(series, models, want_slices)
        summary = []
        for target in targets:
            key = (entry.uid, target.code)
            if key not in labels.series:
                continue
            case = Case(entry.index, entry.hash, labels.series[key], "rejected", why,
                        slices=len(entry.sop_uids))
            if result is not None:
                case.status, case.reason = _status_for(target.model, result)
                if case.status == "analysed":
                    _fill(case, target, result, series, labels.slices.get(key))
                    entry_backend = next((m.get("backend") for m in result.get("models", [])
                                          if m.get("name") == target.model.name), None)
                    target.backend = target.backend or entry_backend
            target.cases.append(case)
            summary.append(f"{target.model.name} {case.probability:.3f}" if case.probability is not None
                           else f"{target.model.name} {case.status}")
        del series
        if progress:
            progress(n, len(todo), entry, f"{', '.join(summary)} ({(time.perf_counter() - t0):.1f} s)")
    return targets
