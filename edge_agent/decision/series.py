"""The series decider: one policy for the daemon and for ``edge-agent infer``.

Thread-free and without I/O. It takes what is known of a series — each
model's slice scores ordered along the slice normal, the manifest, why a
model cannot decide (if it cannot), and the alert each finding last raised —
and returns *what to do*: :class:`AlertAction` (``preliminary``, ``final``,
``retracted``) and the per-model :class:`ModelOutcome` that becomes the
series' result. The pipeline thread (``service/pipeline.py``) carries the
actions out; ``infer`` (``service/analyse.py``) prints the outcome. Both
therefore decide, word their reasons and pick key slices alike.

Statuses of a model on a series (and so of the series, see
:func:`series_status`): ``analysed``; ``skipped`` — the model does not apply
(routing or an applicability rule on the header); ``rejected`` — it applies
but cannot decide on what arrived (too few slices, too little coverage);
``not_assessable`` — the series is outside the model's domain; ``failed`` —
the model raised an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from edge_agent.decision.rules import Decision, decide, preliminary_met, series_probability

STATUSES = ("analysed", "skipped", "rejected", "not_assessable", "failed")


@dataclass(frozen=True)
class ScoredSlice:
    """What the decider knows of one slice: never pixels."""

    sop_instance_uid: str | None
    position_mm: float | None
    probabilities: Sequence[float]
    complete_at: float = 0.0  # time.time() the scanner finished writing the file (daemon); 0 in infer


class PriorAlert(Protocol):
    """The last revision raised for an ``alert_id`` (``service.state.AlertState`` is one)."""

    state: str
    revision: int
    probability: float


@dataclass(frozen=True)
class AlertAction:
    """Raise (or update) one finding's alert; ``state`` is preliminary, final or retracted."""

    state: str
    alert_id: str
    finding_index: int
    probability: float
    key_slices: list[dict]
    decisive_at: float | None = None  # complete_at of the slice that made the decision, when known


@dataclass
class ModelOutcome:
    """One model on one series: its status, reason and findings (JSON-ready dicts)."""

    manifest: Any
    status: str
    reason: str | None = None
    findings: list[dict] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    backend: str | None = None
    mode: str = "live"  # live | shadow: a shadow model decides and reports, and raises no alert

    def entry(self) -> dict:
        """The ``models`` entry of a result: name, version, backend, status, reason."""
        e = {"name": self.manifest.name, "version": self.manifest.version}
        if self.backend is not None:
            e["backend"] = self.backend
        e["status"] = self.status
        if self.mode != "live":
            e["mode"] = self.mode
        if self.reason:
            e["reason"] = self.reason
        return e


AlertIdFor = Callable[[Any, str], str]  # (manifest, finding code) -> alert_id
PriorFor = Callable[[str], "PriorAlert | None"]


def _column(slices: Sequence[ScoredSlice], index: int) -> np.ndarray:
    return np.array([s.probabilities[index] for s in slices], dtype=np.float64)


def _decision(manifest: Any, slices: Sequence[ScoredSlice], index: int) -> Decision:
    positions = [s.position_mm for s in slices]
    uids = [s.sop_instance_uid for s in slices]
    return decide(_column(slices, index), manifest.decision,
                  positions_mm=None if None in positions else np.array(positions, dtype=np.float64),
                  sop_instance_uids=None if None in uids else uids)


def finding_entry(manifest: Any, index: int, decision: Decision, *, preliminary: bool,
                  slice_probabilities: np.ndarray | None = None) -> dict:
    """A finding as ``infer`` prints it and ``results`` carries it."""
    spec = manifest.findings[index]
    entry = {
        "code": spec.code,
        "label": spec.label,
        "probability": float(round(float(decision.probability), 4)),
        "positive": bool(decision.positive),
        "severity": spec.severity,
        "threshold": manifest.decision.threshold,
        "preliminary": bool(preliminary),
        "model": manifest.name,
        "model_version": manifest.version,
        "key_slices": decision.key_slices,
    }
    if slice_probabilities is not None:
        entry["slice_probabilities"] = [round(float(p), 6) for p in slice_probabilities]
    return entry


def decide_model(manifest: Any, slices: Sequence[ScoredSlice], *, status: str = "analysed",
                 reason: str | None = None, backend: str | None = None, mode: str = "live",
                 slice_probabilities: bool = False) -> ModelOutcome:
    """Decide every finding of one model on a series whose slices are ordered along the normal.

    ``status``/``reason``: a model that cannot decide (skipped, rejected,
    not_assessable, failed) is passed through with no findings. ``mode``
    ``shadow``: each finding is marked ``shadow: true`` with ``would_alert``
    (its decision), and no action will raise an alert for it.
    """
    if status != "analysed":
        return ModelOutcome(manifest, status, reason, backend=backend, mode=mode)
    outcome = ModelOutcome(manifest, "analysed", backend=backend, mode=mode)
    for index in range(len(manifest.findings)):
        decision = _decision(manifest, slices, index)
        column = _column(slices, index)
        outcome.decisions.append(decision)
        outcome.findings.append(finding_entry(manifest, index, decision,
                                              preliminary=preliminary_met(column, manifest.decision),
                                              slice_probabilities=column if slice_probabilities else None))
        if mode == "shadow":
            outcome.findings[-1].update(shadow=True, would_alert=bool(decision.positive))
    return outcome


def preliminary_actions(manifest: Any, slices: Sequence[ScoredSlice], new: Sequence[ScoredSlice],
                        alert_id_for: AlertIdFor, prior_for: PriorFor, mode: str = "live") -> list[AlertAction]:
    """Early warnings due now: the preliminary rule holds on the slices seen so far (ordered along the
    normal) and the finding has no live alert yet. The decisive slice is the best of ``new``. None in
    shadow mode."""
    actions: list[AlertAction] = []
    if mode == "shadow":
        return actions
    for index, spec in enumerate(manifest.findings):
        aid = alert_id_for(manifest, spec.code)
        prior = prior_for(aid)
        if prior is not None and prior.state != "retracted":
            continue  # already alerted; the final decision updates it
        column = _column(slices, index)
        if not new or not preliminary_met(column, manifest.decision):
            continue
        decisive = max(new, key=lambda s: s.probabilities[index])
        decision = _decision(manifest, slices, index)
        actions.append(AlertAction("preliminary", aid, index, series_probability(column, manifest.decision),
                                   decision.key_slices, decisive.complete_at))
    return actions


def final_actions(outcome: ModelOutcome, slices: Sequence[ScoredSlice], alert_id_for: AlertIdFor,
                  prior_for: PriorFor) -> list[AlertAction]:
    """What the final decision changes: a positive finding is raised as ``final`` (unless that very
    probability is already final), a negative one retracts a live alert."""
    if outcome.status != "analysed" or outcome.mode == "shadow":
        return []
    manifest = outcome.manifest
    by_uid = {s.sop_instance_uid: s for s in slices}
    actions = []
    for index, decision in enumerate(outcome.decisions):
        aid = alert_id_for(manifest, manifest.findings[index].code)
        prior = prior_for(aid)
        probability = float(decision.probability)
        if decision.positive:
            if prior is not None and prior.state == "final" and abs(prior.probability - probability) < 1e-3:
                continue
            keys = [by_uid[k["sop_instance_uid"]] for k in decision.key_slices if k["sop_instance_uid"] in by_uid]
            decisive = max((s.complete_at for s in keys), default=None)
            actions.append(AlertAction("final", aid, index, probability, decision.key_slices, decisive))
        elif prior is not None and prior.state != "retracted":
            actions.append(AlertAction("retracted", aid, index, probability, decision.key_slices))
    return actions


def series_status(outcomes: Sequence[ModelOutcome], no_model_reason: str) -> tuple[str, str | None]:
    """The series' status and reason from its models' outcomes.

    ``analysed`` when any model analysed it; otherwise the most telling
    status present (not_assessable, rejected, failed, skipped) with the
    reasons of the models in that status joined; ``skipped`` with
    ``no_model_reason`` when no model was routed to it at all.
    """
    if any(o.status == "analysed" for o in outcomes):
        return "analysed", None
    for status, members in (("not_assessable", ("not_assessable",)), ("rejected", ("rejected", "failed")),
                            ("skipped", ("skipped",))):
        present = [o for o in outcomes if o.status in members]
        if present:
            return status, "; ".join(o.reason for o in present if o.reason) or no_model_reason
    return "skipped", no_model_reason


def series_result(*, series_instance_uid: str, study_instance_uid: str, slices: int,
                  outcomes: Sequence[ModelOutcome], no_model_reason: str, warnings: Sequence[str] = ()) -> dict:
    """The result object (the ``infer`` contract, also the ``results`` payload's ``result``)."""
    status, reason = series_status(outcomes, no_model_reason)
    result: dict[str, Any] = {
        "series_instance_uid": series_instance_uid,
        "study_instance_uid": study_instance_uid,
        "slices": int(slices),
        "status": status,
        "findings": [f for o in outcomes for f in o.findings],
        "models": [o.entry() for o in outcomes],
        "warnings": [str(w) for w in warnings],
    }
    if reason:
        result["reason"] = reason
    return result
