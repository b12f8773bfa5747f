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

from edge_agent.decision.rules import Decision, decide, key_slice, preliminary_met, series_probability

STATUSES = ("analysed", "skipped", "rejected", "not_assessable", "failed")


@dataclass(frozen=True)
class ScoredSlice:
    """What the decider knows of one slice: never pixels."""

    sop_instance_uid: str | None
    position_mm: float | None
    probabilities: Sequence[float]
    complete_at: float = 0.0  # time.time() the scanner finished writing the file (daemon); 0 in infer
    features: dict | None = None  # the slice's evidence/domain numbers (edge_agent.evidence), if the model has any


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
        """The ``models`` entry of a result: name, version, backend, its provenance (sha256, precision,
        engine_fingerprint: edge_agent.results.algorithm, cached per model), status, reason."""
        e = {"name": self.manifest.name, "version": self.manifest.version}
        if self.backend is not None:
            e["backend"] = self.backend
            from edge_agent.results.algorithm import algorithm_for, has_provenance, model_provenance  # noqa: PLC0415

            if has_provenance(self.manifest):
                p = model_provenance(algorithm_for(self.manifest, self.backend))
                e.update({k: p[k] for k in ("sha256", "precision", "engine_fingerprint")})
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


@dataclass(frozen=True)
class SeriesContext:
    """What the evidence and domain checks need of a series besides its slices (header values)."""

    slice_thickness_mm: float | None = None
    orientation: Sequence[float] | None = None
    pixel_spacing: Sequence[float] | None = None


def _features(slices: Sequence[ScoredSlice]) -> list[dict] | None:
    features = [s.features for s in slices]
    return None if not features or any(f is None for f in features) else features


def domain_problem(manifest: Any, slices: Sequence[ScoredSlice]) -> str | None:
    """Why the series is outside the model's declared domain (None: inside, or no domain declared)."""
    plugin = getattr(manifest, "plugin", None)
    if plugin is not None:  # a plug-in checks its own domain from its slice features
        from edge_agent import plugins  # noqa: PLC0415

        step = plugins.get(plugin.name)
        check = getattr(step, "domain_problem", None)
        return None if check is None else check([s.features or {} for s in slices], plugin.params)
    spec = getattr(manifest, "domain", None)
    if spec is None:
        return None
    from edge_agent.evidence import series_domain  # noqa: PLC0415 - only models that declare a domain need it

    features = _features(slices)
    if features is None:
        return f"model {manifest.name} declares a domain check but its slice features are missing"
    verdict = series_domain(spec, features)
    return None if verdict.in_domain else verdict.reason


def evidence_for(manifest: Any, slices: Sequence[ScoredSlice], context: SeriesContext) -> Any:
    """The manifest's evidence check on the slices (an ``edge_agent.evidence.Evidence``), or None."""
    spec = getattr(manifest, "evidence", None)
    if spec is None:
        return None
    from edge_agent.evidence import series_evidence  # noqa: PLC0415

    features = _features(slices) or [{} for _ in slices]
    ipp = [f.get("ipp") for f in features]
    # where the model finds anything (any of its findings at or above the decision threshold)
    support = [max(s.probabilities) if len(s.probabilities) else 0.0 for s in slices]
    return series_evidence(spec, features, [s.position_mm for s in slices], context.slice_thickness_mm,
                           image_positions=None if None in ipp else ipp, orientation=context.orientation,
                           pixel_spacing=context.pixel_spacing, support=support,
                           support_threshold=manifest.decision.threshold)


def evidence_lead(evidence: Any, probabilities: Sequence[float]) -> int | None:
    """The slice that leads the key slices of a finding resting on evidence: of the evidence's slices (one
    cluster of blood-dense regions beside the model's slices), the one the model scores highest — ties: the
    larger evidence area first, as ``evidence.slices`` is ordered. None without evidence."""
    if evidence is None or not evidence.present:
        return None
    ranked = [(i, int(k)) for i, k in enumerate(evidence.slices or []) if 0 <= int(k) < len(probabilities)]
    if not ranked:
        return None
    return max(ranked, key=lambda ik: (float(probabilities[ik[1]]), -ik[0]))[1]


def _with_evidence(decision: Decision, evidence: Any, slices: Sequence[ScoredSlice], keep: int,
                   index: int, slice_cut: float) -> Decision:
    """A model-positive finding stands only on evidence; the evidence slice the model scores highest
    (:func:`evidence_lead`) leads the key slices, and a key slice the evidence lies on says where
    (``region_px``: ``[row0, col0, row1, col1]`` in its pixels)."""
    if evidence is None:
        return decision
    keys = list(decision.key_slices)
    best = evidence_lead(evidence, [s.probabilities[index] for s in slices])
    if best is not None:
        if all(k["index"] != best for k in keys[:1]):
            lead = key_slice(best, float(slices[best].probabilities[index]), slices[best].position_mm,
                             slices[best].sop_instance_uid, slice_cut)
            keys = [lead] + [k for k in keys if k["index"] != best]
            keys = keys[:max(keep, 1)]
        regions = getattr(evidence, "regions", None) or {}
        keys = [dict(k, region_px=list(regions[k["index"]])) if k["index"] in regions else k for k in keys]
    return Decision(decision.probability, bool(decision.positive and evidence.present), keys)


def finding_entry(manifest: Any, index: int, decision: Decision, *, preliminary: bool,
                  slice_probabilities: np.ndarray | None = None, evidence: Any = None,
                  column: np.ndarray | None = None) -> dict:
    """A finding as ``infer`` prints it and ``results`` carries it.

    ``slice_threshold``: the per-slice operating point (``decision.slice_threshold``, else the series
    threshold); each key slice says whether it is ``positive`` there, and ``slices_positive`` counts the
    series' slices at or above it (given the finding's slice scores, ``column``).
    """
    spec = manifest.findings[index]
    cut = manifest.decision.slice_cut
    entry = {
        "code": spec.code,
        "label": spec.label,
        "probability": float(round(float(decision.probability), 4)),
        "positive": bool(decision.positive),
        "severity": spec.severity,
        "threshold": manifest.decision.threshold,
        "slice_threshold": cut,
        "preliminary": bool(preliminary),
        "model": manifest.name,
        "model_version": manifest.version,
        "key_slices": decision.key_slices,
    }
    if column is not None:
        entry["slices_positive"] = int(np.count_nonzero(np.asarray(column, dtype=np.float64) >= cut))
    if evidence is not None:
        entry["evidence"] = evidence.to_dict()
    if slice_probabilities is not None:
        entry["slice_probabilities"] = [round(float(p), 6) for p in slice_probabilities]
    return entry


def decide_model(manifest: Any, slices: Sequence[ScoredSlice], *, status: str = "analysed",
                 reason: str | None = None, backend: str | None = None, mode: str = "live",
                 slice_probabilities: bool = False, context: SeriesContext = SeriesContext()) -> ModelOutcome:
    """Decide every finding of one model on a series whose slices are ordered along the normal.

    ``status``/``reason``: a model that cannot decide (skipped, rejected,
    not_assessable, failed) is passed through with no findings. ``mode``
    ``shadow``: each finding is marked ``shadow: true`` with ``would_alert``
    (its decision), and no action will raise an alert for it.

    A model that declares a ``domain`` check makes a series outside it
    ``not_assessable`` (no findings, no alert). One that declares an
    ``evidence`` check is positive only where the evidence is present
    (docs/EVIDENCE.md); the finding reports that evidence.
    """
    if status == "analysed":
        problem = domain_problem(manifest, slices)
        if problem:
            status, reason = "not_assessable", problem
    if status != "analysed":
        return ModelOutcome(manifest, status, reason, backend=backend, mode=mode)
    if getattr(manifest, "plugin", None) is not None:
        return _plugin_outcome(manifest, slices, backend=backend, mode=mode, context=context,
                               slice_probabilities=slice_probabilities)
    outcome = ModelOutcome(manifest, "analysed", backend=backend, mode=mode)
    evidence = evidence_for(manifest, slices, context)
    for index in range(len(manifest.findings)):
        decision = _with_evidence(_decision(manifest, slices, index), evidence, slices,
                                  manifest.decision.key_slices, index,
                                  manifest.decision.slice_cut)
        column = _column(slices, index)
        outcome.decisions.append(decision)
        outcome.findings.append(finding_entry(manifest, index, decision,
                                              preliminary=preliminary_met(column, manifest.decision),
                                              slice_probabilities=column if slice_probabilities else None,
                                              evidence=evidence, column=column))
        if mode == "shadow":
            outcome.findings[-1].update(shadow=True, would_alert=bool(decision.positive))
    return outcome


def grade_alerts(grades: Sequence[str], grade: str, alert_at: str | None) -> bool:
    """Policy for a graded finding: it alerts when its grade is at least ``alert_at`` (None: any grade)."""
    if alert_at is None:
        return True
    return list(grades).index(grade) >= list(grades).index(alert_at)


def _plugin_outcome(manifest: Any, slices: Sequence[ScoredSlice], *, backend: str | None, mode: str,
                    context: SeriesContext, slice_probabilities: bool) -> ModelOutcome:
    """A plug-in's measurement → findings: positive as it measured, an alert only from ``alert_at`` on.

    The plug-in measures and grades; this decides (the one place for policy). The finding carries the
    measurement's fields (for ``agatston``: the score, category, per-artery scores, lesions), its grade as
    ``category`` where the plug-in names it so, ``alert`` and ``alert_at``.
    """
    from edge_agent import plugins  # noqa: PLC0415

    spec = manifest.plugin
    step = plugins.get(spec.name)
    measurements = step.measure([s.features or {} for s in slices], [s.position_mm for s in slices],
                                context.slice_thickness_mm, spec.params)
    outcome = ModelOutcome(manifest, "analysed", backend=backend, mode=mode)
    for index, m in enumerate(measurements):
        column = _column(slices, index)
        keys = [{"index": int(k), "sop_instance_uid": slices[k].sop_instance_uid,
                 "position_mm": None if slices[k].position_mm is None else round(float(slices[k].position_mm), 3),
                 "probability": round(float(slices[k].probabilities[index]), 6)}
                for k in m.key_slices[:manifest.decision.key_slices]]
        alert = bool(m.positive and grade_alerts(step.grades, m.grade, spec.alert_at))
        decision = Decision(float(m.probability), bool(m.positive), keys, alert=alert)
        outcome.decisions.append(decision)
        entry = finding_entry(manifest, index, decision, preliminary=False,
                              slice_probabilities=column if slice_probabilities else None)
        for key in ("threshold", "slice_threshold"):
            entry.pop(key, None)  # a measurement, not a probability threshold
        entry.update(m.fields)
        entry.update(method=spec.name, alert=alert, alert_at=spec.alert_at)
        if mode == "shadow":
            entry.update(shadow=True, would_alert=alert)
        outcome.findings.append(entry)
    return outcome


def preliminary_actions(manifest: Any, slices: Sequence[ScoredSlice], new: Sequence[ScoredSlice],
                        alert_id_for: AlertIdFor, prior_for: PriorFor, mode: str = "live",
                        context: SeriesContext = SeriesContext()) -> list[AlertAction]:
    """Early warnings due now: the preliminary rule holds on the slices seen so far (ordered along the
    normal), they are inside the model's domain and show its evidence (where declared), and the finding
    has no live alert yet. The decisive slice is the best of ``new``. None in shadow mode."""
    actions: list[AlertAction] = []
    if mode == "shadow" or not new:
        return actions
    due = [i for i, spec in enumerate(manifest.findings)
           if preliminary_met(_column(slices, i), manifest.decision)
           and not _live(prior_for(alert_id_for(manifest, spec.code)))]
    if not due or domain_problem(manifest, slices):
        return actions
    evidence = evidence_for(manifest, slices, context)
    if evidence is not None and not evidence.present:
        return actions
    for index in due:
        decisive = max(new, key=lambda s: s.probabilities[index])
        decision = _with_evidence(_decision(manifest, slices, index), evidence, slices,
                                  manifest.decision.key_slices, index,
                                  manifest.decision.slice_cut)
        actions.append(AlertAction("preliminary", alert_id_for(manifest, manifest.findings[index].code), index,
                                   series_probability(_column(slices, index), manifest.decision),
                                   decision.key_slices, decisive.complete_at))
    return actions


def _live(prior: "PriorAlert | None") -> bool:
    """An alert that is raised and not retracted (the final decision updates it)."""
    return prior is not None and prior.state != "retracted"


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
        if decision.raises_alert:
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
