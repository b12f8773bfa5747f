"""Each series' story on the ``edge_agent.series`` logger (shown at the default verbosity).

One line when a series opens (:func:`tell_opened`: scanner, description, modality, which models apply
or why none) and one when it is decided (:func:`tell_decided`: each model's status, probability, alert or
not, what ran, time since its last slice). No patient attribute is in either; free header text goes
through :func:`edge_agent.logs.header_text`. A line never costs a series: the decided line's own
failure is a debug line.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

from edge_agent.alerts.payloads import alert_id
from edge_agent.decision.series import ModelOutcome
from edge_agent.inference.applicability import Refusal
from edge_agent.logs import PIPELINE_LOG, SERIES_LOG, header_text
from edge_agent.results.algorithm import algorithm_for, model_provenance, provenance_words
from edge_agent.service.analyse import no_model_reason
from edge_agent.service.series import OpenSeries
from edge_agent.service.state import AlertState

log = logging.getLogger(PIPELINE_LOG)
story = logging.getLogger(SERIES_LOG)


def routes_words(routes: list, info: dict) -> str:
    """Which models apply to a series, or why none does (the applicability refusal), in words."""
    if not routes:
        return no_model_reason(info.get("modality"), info.get("body_part"))
    words = []
    for model, reason in routes:
        m = model.manifest
        if reason is None:
            words.append(f"{m.name} {m.version} applies")
        else:
            words.append(f"{m.name} {m.version} {'refused' if isinstance(reason, Refusal) else 'cannot decide'}: "
                         f"{reason}")
    return "models: " + "; ".join(words)


def opened_words(info: dict, routes: list) -> str:
    """The series-opened line after its UID: scanner, description, modality, models. Never a patient attribute."""
    thickness = info.get("slice_thickness")
    what = " ".join(v for v in (info.get("modality") or "modality unknown", info.get("body_part") or "") if v)
    return (f"scanner {header_text(info.get('scanner')) or 'unknown'}, "
            f"\"{header_text(info.get('series_description'))}\", {what}"
            + (f", {thickness:g} mm slices" if isinstance(thickness, (int, float)) else "")
            + f"; {routes_words(routes, info)}")


def tell_opened(uid: str, how: str, info: dict, routes: list) -> None:
    """The series-opened line (``how``: opened, reopened by late or resent slices, resumed)."""
    story.info("series %s %s: %s", uid, how, opened_words(info, routes),
               extra={"event": "series_opened", "data": {
                   "series_instance_uid": uid, "how": how, "modality": info.get("modality"),
                   "models": [m.manifest.name for m, reason in routes if reason is None]}})


def tell_decided(series: OpenSeries, outcomes: list[ModelOutcome], result: dict, emitted: set,
                 alert: Callable[[str], AlertState | None], outputs: Any) -> None:
    """The series-decided line (``alert``: an alert's latest state; ``emitted``: alert_ids this decision sent;
    ``outputs``: the pipeline's, for the provenance); it never costs a result (the result is out already)."""
    try:
        since = max(0.0, time.monotonic() - series.last_arrival)
        head = f"{result['status']}, {series.slices} slices, {since:.1f} s after its last slice"
        if not outcomes and result.get("reason"):
            head = (f"{result['status']} ({result['reason']}), {series.slices} slices, {since:.1f} s after its "
                    "last slice")
        words = [outcome_words(series, o, emitted, alert) for o in outcomes]
        story.info("series %s decided: %s%s", series.series_instance_uid, head,
                   "".join(f"; {w}" for w in words),
                   extra={"event": "series_decided", "data": {
                       "series_instance_uid": series.series_instance_uid, "status": result["status"],
                       "slices": series.slices, "since_last_slice_s": round(since, 3),
                       "findings": [{k: f.get(k) for k in ("model", "code", "probability", "positive", "shadow")
                                     if k in f} for f in result.get("findings", [])],
                       "models": [model_provenance(algorithm_for(o.manifest, o.backend)) for o in outcomes
                                  if o.status == "analysed"],
                       "provenance": getattr(outputs, "provenance", None)}})
    except Exception as exc:  # noqa: BLE001 - a log line must not fail a series
        log.debug("series %s: the decided line failed (%s)", series.series_instance_uid, exc)


def outcome_words(series: OpenSeries, outcome: ModelOutcome, emitted: set,
                  alert: Callable[[str], AlertState | None]) -> str:
    """One model's part of the decided line: status, and per finding p, positive or not, alert or not; an
    analysed model also names what ran (sha256 of the artefact, backend, precision, engine fingerprint)."""
    m = outcome.manifest
    head = f"{m.name} {m.version}" + (" [shadow]" if outcome.mode == "shadow" else "") + (
        " [synthetic-trained]" if getattr(m, "synthetic_training", False) else "")
    if outcome.status != "analysed":
        return f"{head}: {outcome.status}" + (f" ({outcome.reason})" if outcome.reason else "")
    head += f" ({provenance_words(algorithm_for(m, outcome.backend))})"
    parts = []
    for f in outcome.findings:
        words = f"{f['code']} p={f['probability']:.3f} {'positive' if f['positive'] else 'negative'}"
        if outcome.mode == "shadow":
            words += ", shadow: would alert, no alert raised" if f.get("would_alert") else ", shadow: no alert"
        else:
            aid = alert_id(series.series_instance_uid, m.name, m.version, f["code"])
            state = alert(aid)
            if state is not None and aid in emitted:
                words += f", alert {state.state} sent (revision {state.revision})"
            elif state is not None and state.state != "retracted":
                words += f", alert {state.state} stands (revision {state.revision})"
            else:
                words += ", no alert"
        parts.append(words)
    return f"{head}: " + "; ".join(parts)
