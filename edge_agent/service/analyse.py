"""One-shot analysis of an assembled series by the loaded models (``edge-agent infer``).

Route the series to the models whose ``applies_to`` matches, check each can
analyse it, score every slice, and let the series decider
(:mod:`edge_agent.decision.series`, the same one the daemon uses) decide and
build the result: one JSON-ready object, the ``infer`` contract (its fields:
docs/ALERTS.md, Payload reference, the ``result`` of a Result payload). Each
model runs inside an error boundary: a failing model becomes a reason in the
result, never an exception out of here. No PHI is put in the result.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from edge_agent.alerts.payloads import DISCLAIMER
from edge_agent.decision.series import ModelOutcome, ScoredSlice, SeriesContext, decide_model, series_result
from edge_agent.errors import EdgeAgentError
from edge_agent.inference.applicability import Refusal
from edge_agent.inference.models import Model, ModelSet

log = logging.getLogger("edge_agent.analyse")

__all__ = ["DISCLAIMER", "analyse_series", "no_model_reason"]


def no_model_reason(modality: str | None, body_part: str | None) -> str:
    return (f"no model applies to this series (modality {modality or 'unknown'}, "
            f"body part {body_part or 'unknown'})")


def _image_positions(series: Any, positions: np.ndarray | None) -> list | None:
    """ImagePositionPatient of each slice, from the first slice's and the normal (Series keeps only those)."""
    origin, orientation = getattr(series, "origin", None), getattr(series, "orientation", None)
    if origin is None or orientation is None or positions is None or not len(positions):
        return None
    o = np.asarray(orientation, dtype=np.float64)
    normal = np.cross(o[:3], o[3:])
    return [list(np.asarray(origin, dtype=np.float64) + normal * (p - positions[0])) for p in positions]


def _geometries(series: Any, positions: np.ndarray | None) -> list[dict | None]:
    ipp = _image_positions(series, positions)
    orientation = getattr(series, "orientation", None)
    n = len(series.hu)
    if ipp is None:
        return [None] * n
    return [{"ipp": [float(v) for v in ipp[i]],
             "orientation": None if orientation is None else [float(v) for v in orientation]} for i in range(n)]


def _positions(series: Any, n: int) -> np.ndarray | None:
    positions = getattr(series, "positions", None)
    return np.asarray(positions, dtype=np.float64) if positions is not None and len(positions) == n else None


def slice_features(model: Model, series: Any, positions: np.ndarray | None) -> list[dict | None]:
    """Each slice's evidence/domain numbers, or a plug-in's features (what the daemon computes per slice)."""
    geometries = _geometries(series, positions)
    return [model.slice_features(np.asarray(series.hu[i], dtype=np.float32), tuple(series.pixel_spacing),
                                 geometries[i]) for i in range(len(series.hu))]


def _scored(model: Model, series: Any, probs: np.ndarray, features: list[dict | None]) -> list[ScoredSlice]:
    uids = list(getattr(series, "sop_instance_uids", []) or [])
    n = probs.shape[0]
    if len(uids) != n:
        uids = [None] * n
    pos = _positions(series, n)
    return [ScoredSlice(uids[i], float(pos[i]) if pos is not None else None, tuple(float(v) for v in probs[i]),
                        features=features[i])
            for i in range(n)]


def series_context(series: Any) -> SeriesContext:
    return SeriesContext(slice_thickness_mm=getattr(series, "slice_thickness", None),
                         orientation=getattr(series, "orientation", None),
                         pixel_spacing=getattr(series, "pixel_spacing", None))


def _run_model(model: Model, series: Any, timings: dict[str, float], backend: str,
               slice_probabilities: bool) -> ModelOutcome:
    """Score and decide inside an error boundary: a failure becomes a ``failed`` outcome."""
    try:
        positions = _positions(series, len(series.hu))  # along the normal: a 2.5-D model's neighbours
        geometries = _geometries(series, positions)
        probs, features = model.analyse_volume(series.hu, tuple(series.pixel_spacing), geometries, timings,
                                               positions=positions)
        probs = np.asarray(probs, dtype=np.float64)
        if probs.ndim == 1:
            probs = probs[:, None]
        t0 = time.perf_counter()
        outcome = decide_model(model.manifest, _scored(model, series, probs, features), backend=backend,
                               slice_probabilities=slice_probabilities, context=series_context(series))
        timings["decision"] = timings.get("decision", 0.0) + (time.perf_counter() - t0) * 1000.0
        return outcome
    except EdgeAgentError as exc:
        log.warning("model %s failed on series %s: %s", model.name, series.series_instance_uid, exc)
        reason = f"model {model.name} failed: {str(exc).rstrip('.')}"
    except Exception as exc:  # noqa: BLE001 - error boundary: one model never breaks the series
        log.error("model %s crashed on series %s (%s)", model.name, series.series_instance_uid,
                  type(exc).__name__, exc_info=log.isEnabledFor(logging.DEBUG))
        reason = f"model {model.name} failed unexpectedly ({type(exc).__name__}: {exc})"
    return ModelOutcome(model.manifest, "failed", reason, backend=backend)


def analyse_series(series: Any, models: ModelSet, *, slice_probabilities: bool = False) -> dict:
    """Analyse one assembled series; returns the ``infer`` JSON object for it.

    ``status``: ``analysed`` (at least one model scored it), ``skipped`` (no
    model applies; ``reason`` says what the series is), ``rejected`` (every
    model that applies refused or failed; ``reason`` joins their reasons) or
    ``not_assessable``. ``models`` lists each applicable model with its own
    status and reason. ``slice_probabilities``: each finding also lists its
    per-slice probabilities in series order (``edge-agent validate``).
    """
    modality = getattr(series, "modality", None) or None
    body_part = getattr(series, "body_part", None) or None
    warnings = [str(w) for w in (getattr(series, "warnings", None) or [])]
    left_out = len(getattr(series, "rejected", None) or [])
    if left_out:
        warnings.append(f"{left_out} file{'s' if left_out != 1 else ''} of this series "
                        f"{'were' if left_out != 1 else 'was'} left out")
    timings: dict[str, float] = {}
    outcomes = []
    for model, _ in models.route(series):
        backend = getattr(model.runner, "backend", type(model.runner).__name__)
        reason = models.check_series(model, series)
        if reason is None:
            outcomes.append(_run_model(model, series, timings, backend, slice_probabilities))
        else:  # not made for this series (an applicability rule): skipped; cannot decide on it: rejected
            outcomes.append(ModelOutcome(model.manifest, "skipped" if isinstance(reason, Refusal) else "rejected",
                                         reason, backend=backend))
    result = series_result(
        series_instance_uid=series.series_instance_uid, study_instance_uid=series.study_instance_uid,
        slices=len(getattr(series, "sop_instance_uids", ()) or ()), outcomes=outcomes,
        no_model_reason=no_model_reason(modality, body_part), warnings=warnings)
    result["modality"], result["body_part"] = modality, body_part
    result["timings_ms"] = {k: float(round(timings.get(k, 0.0), 2)) for k in ("preprocess", "inference", "decision")}
    if any(o.status == "analysed" and o.manifest.synthetic_training for o in outcomes):
        result["disclaimer"] = DISCLAIMER
    return result
