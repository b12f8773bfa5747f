"""One-shot analysis of an assembled series by the loaded models.

:func:`analyse_series` is what ``edge-agent infer`` prints and what the
daemon does when a series is complete: route the series to the models whose
``applies_to`` matches, check each can analyse it, score every slice, decide,
and return one JSON-ready object (the ``infer`` contract in product.md).
Each model runs inside an error boundary: a failing model becomes a reason
in the result, never an exception out of here. No PHI is put in the result.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from edge_agent.decision import decide, preliminary_met
from edge_agent.errors import EdgeAgentError
from edge_agent.inference.models import Model, ModelSet

log = logging.getLogger("edge_agent.analyse")

DISCLAIMER = ("Demo model trained on synthetic phantoms only; not a medical device; "
              "never use it for diagnosis.")


def _round(value: float, digits: int = 4) -> float:
    return float(round(float(value), digits))


def _findings(model: Model, probs: np.ndarray, series: Any) -> list[dict]:
    m = model.manifest
    uids = list(getattr(series, "sop_instance_uids", []) or [])
    positions = getattr(series, "positions", None)
    out = []
    for column, spec in enumerate(m.findings):
        p = probs[:, column]
        decision = decide(p, m.decision, positions_mm=positions if positions is not None and len(positions) == len(p)
                          else None, sop_instance_uids=uids if len(uids) == len(p) else None)
        out.append({
            "code": spec.code,
            "label": spec.label,
            "probability": _round(decision.probability),
            "positive": decision.positive,
            "severity": spec.severity,
            "threshold": m.decision.threshold,
            "preliminary": preliminary_met(p, m.decision),
            "model": m.name,
            "model_version": m.version,
            "key_slices": decision.key_slices,
        })
    return out


def _run_model(model: Model, series: Any, timings: dict[str, float]) -> tuple[list[dict], str | None]:
    """Score and decide; returns (findings, None) or ([], reason) when the model failed."""
    try:
        probs = model.score_slices(series.hu, tuple(series.pixel_spacing), timings)
        t0 = time.perf_counter()
        findings = _findings(model, probs, series)
        timings["decision"] = timings.get("decision", 0.0) + (time.perf_counter() - t0) * 1000.0
        return findings, None
    except EdgeAgentError as exc:
        log.warning("model %s failed on series %s: %s", model.name, series.series_instance_uid, exc)
        return [], f"model {model.name} failed: {str(exc).rstrip('.')}"
    except Exception as exc:  # noqa: BLE001 - error boundary: one model never breaks the series
        log.error("model %s crashed on series %s (%s)", model.name, series.series_instance_uid,
                  type(exc).__name__, exc_info=log.isEnabledFor(logging.DEBUG))
        return [], f"model {model.name} failed unexpectedly ({type(exc).__name__}: {exc})"


def analyse_series(series: Any, models: ModelSet) -> dict:
    """Analyse one assembled series; returns the ``infer`` JSON object for it.

    ``status``: ``analysed`` (at least one model scored it), ``skipped`` (no
    model applies; ``reason`` says what the series is) or ``rejected`` (every
    model that applies refused or failed; ``reason`` joins their reasons).
    ``models`` lists each applicable model with its own status and reason.
    """
    n = len(getattr(series, "sop_instance_uids", ()) or ())
    result: dict[str, Any] = {
        "series_instance_uid": series.series_instance_uid,
        "study_instance_uid": series.study_instance_uid,
        "slices": n,
        "modality": getattr(series, "modality", None) or None,
        "body_part": getattr(series, "body_part", None) or None,
        "status": "skipped",
        "findings": [],
        "models": [],
        "timings_ms": {"preprocess": 0.0, "inference": 0.0, "decision": 0.0},
        "warnings": [str(w) for w in (getattr(series, "warnings", None) or [])],
    }
    left_out = len(getattr(series, "rejected", None) or [])
    if left_out:
        result["warnings"].append(f"{left_out} file{'s' if left_out != 1 else ''} of this series "
                                  f"{'were' if left_out != 1 else 'was'} left out")
    matched = models.route(series)
    if not matched:
        result["reason"] = (f"no model applies to this series (modality {result['modality'] or 'unknown'}, "
                            f"body part {result['body_part'] or 'unknown'})")
        return result
    timings: dict[str, float] = {}
    reasons = []
    synthetic = False
    for model, _ in matched:
        entry = {"name": model.name, "version": model.manifest.version,
                 "backend": getattr(model.runner, "backend", type(model.runner).__name__)}
        reason = models.check_series(model, series)
        findings: list[dict] = []
        if reason is None:
            findings, reason = _run_model(model, series, timings)
            entry["status"] = "failed" if reason else "analysed"
        else:
            entry["status"] = "rejected"
        if reason:
            entry["reason"] = reason
            reasons.append(reason)
        else:
            synthetic = synthetic or model.manifest.synthetic_training
        result["findings"].extend(findings)
        result["models"].append(entry)
    result["timings_ms"] = {k: _round(timings.get(k, 0.0), 2) for k in ("preprocess", "inference", "decision")}
    if any(e["status"] == "analysed" for e in result["models"]):
        result["status"] = "analysed"
    else:
        result["status"] = "rejected"
        result["reason"] = "; ".join(reasons)
    if synthetic:
        result["disclaimer"] = DISCLAIMER
    return result
