"""What a series' final decision makes besides its alerts (pipeline thread).

Whether a model can decide on the slices it scored (:func:`coverage_problem`: the rule and words of
``edge-agent infer``), the series' result as published on MQTT (:func:`final_result`, built by
``decision.series.series_result`` as ``infer`` builds it), its DICOM results (SR, KOS and, with
``pacs.secondary_capture``, a key image made from the preview thumbnails) handed to the outputs
(:func:`store_results`), and the outcome rows ``edge-agent report`` reads (:func:`record`). The DICOM
results and the record never cost the result: it is out before them, and their failures are log lines.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from edge_agent.alerts.payloads import DISCLAIMER
from edge_agent.decision.series import ModelOutcome, series_result
from edge_agent.errors import EdgeAgentError
from edge_agent.inference.models import ScoredSlices
from edge_agent.logs import PIPELINE_LOG
from edge_agent.service.analyse import no_model_reason
from edge_agent.service.previews import Thumbnails
from edge_agent.service.series import OpenSeries
from edge_agent.service.state import Outcome, SeriesStore, SliceScore

log = logging.getLogger(PIPELINE_LOG)


def coverage_problem(models, model, series: OpenSeries, scores: list[SliceScore]) -> str | None:
    """Why the model cannot decide on the slices scored: the same rule and words as ``edge-agent infer``."""
    info = series.info
    view = ScoredSlices(sop_instance_uids=[s.sop_instance_uid for s in scores],
                        positions=np.array([s.position_mm for s in scores], dtype=np.float64),
                        slice_thickness=info.get("slice_thickness"), gantry_tilt=info.get("gantry_tilt", 0.0))
    return models.check_series(model, view)


def final_result(series: OpenSeries, outcomes: list[ModelOutcome], failure: str | None = None) -> dict:
    """The series' result (``failure``: why the decision itself failed: the result is ``rejected``)."""
    info = series.info
    result = series_result(
        series_instance_uid=series.series_instance_uid, study_instance_uid=info["study_instance_uid"],
        slices=series.slices, outcomes=outcomes, warnings=series.warnings,
        no_model_reason=failure or no_model_reason(info.get("modality"), info.get("body_part")))
    if failure:
        result["status"], result["reason"] = "rejected", result.get("reason") or failure
    if any(o.status == "analysed" and o.manifest.synthetic_training for o in outcomes):
        result["disclaimer"] = DISCLAIMER
    return result


def store_results(outputs: Any, thumbnails: Thumbnails | None, series: OpenSeries, result: dict,
                  failure: str | None) -> None:
    """Hand a final result to the DICOM results (SR, KOS → PACS), where the outputs take them, with the key images
    made from the thumbnails (none without previews). Every status goes: an analysed model gets its SR, and a
    model that flagged key images before and can no longer decide the series (a reopen made it not assessable,
    rejected or skipped) gets the revision that withdraws them (edge_agent.results.delivery)."""
    store = getattr(outputs, "store_results", None)
    if store is None or series.study is None or failure:
        return
    try:
        store(result, series.study, dict(series.info), [m for m, reason in series.routes if reason is None],
              key_images={} if thumbnails is None else thumbnails.key_images(series, result))
    except Exception as exc:  # noqa: BLE001 - the result is out already; say why the DICOM one is not
        log.error("series %s: its DICOM results were not queued (%s)", series.series_instance_uid,
                  exc if isinstance(exc, EdgeAgentError) else type(exc).__name__)


def record(store: SeriesStore, series: OpenSeries, outcomes: list[ModelOutcome]) -> None:
    """What ``edge-agent report`` reads: each model's final word, and what it would have alerted."""
    now = time.time()
    latency = max(0.0, now - series.first_received)
    rows = []
    for o in outcomes:
        common = dict(series_instance_uid=series.series_instance_uid, model=o.manifest.name, decided_at=now,
                      status=o.status, reason=o.reason, mode=o.mode, scanner=series.info.get("scanner", ""),
                      latency_s=latency)
        rows += [Outcome(finding=f["code"], probability=f["probability"], positive=f["positive"], **common)
                 for f in o.findings] or [Outcome(finding="", probability=None, positive=None, **common)]
    if not rows:
        rows = [Outcome(series.series_instance_uid, "", "", now, "skipped", None, "live", None, None,
                        series.info.get("scanner", ""), latency)]
    try:
        store.save_outcomes(rows)
    except Exception:  # noqa: BLE001 - the report's record never costs a result
        log.exception("series %s: recording its outcome for edge-agent report failed", series.series_instance_uid)
