"""What one model said about one series, in the form the DICOM results are built from.

Pure data, no I/O: :func:`model_results` picks, from a series' result (the
``edge-agent infer`` object), each model that analysed it live (a shadow model
stays silent: nothing of it reaches the PACS), with its findings and the
algorithm's identification. :meth:`ModelResult.digest` is what decides whether
a new decision is a new *revision*: the same findings, probabilities, key
slices, evidence and algorithm give the same digest, so a re-decided series
whose answer did not change sends nothing new.

UIDs are derived, never random (PS3.5 B.2, ``2.25.<uuid as an integer>``):
the same series, model, version and revision always give the same SOP
Instance UID, across restarts and devices, like ``alert_id``.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import asdict, dataclass, field

#: uuid5 namespace of result UIDs: uuid5(NAMESPACE_URL, "urn:edge-agent:results").
RESULTS_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:edge-agent:results")


def derived_uid(*parts: object) -> str:
    """A DICOM UID from a name: ``2.25.`` and the decimal of uuid5(namespace, parts joined by U+001F)."""
    return "2.25." + str(uuid.uuid5(RESULTS_NAMESPACE, "\x1f".join(str(p) for p in parts)).int)


@dataclass(frozen=True)
class Algorithm:
    """Algorithm identification (TID 4019) of a model as it ran: which bytes, on which backend, how precise."""

    name: str
    version: str
    sha256: str = ""
    backend: str = ""
    precision: str = ""
    synthetic_training: bool = False
    engine_fingerprint: str | None = None  # short id of the TensorRT engine's fingerprint file; None: ONNX, plug-in


@dataclass
class ModelResult:
    """One model's final word on one series."""

    series_instance_uid: str
    study_instance_uid: str
    algorithm: Algorithm
    findings: list[dict] = field(default_factory=list)  # code, label, probability, positive, threshold, key_slices,
    body_part: str = ""                                 # volume_ml, diameter_mm

    @property
    def positive(self) -> bool:
        return any(f["positive"] for f in self.findings)

    def digest(self) -> str:
        """sha256 of the content (not of when it was decided): equal digests, equal results."""
        algorithm = asdict(self.algorithm)
        if algorithm["engine_fingerprint"] is None:  # as before the field existed: an ONNX result keeps its digest
            del algorithm["engine_fingerprint"]
        body = {"series": self.series_instance_uid, "algorithm": algorithm, "findings": self.findings}
        return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    def uid(self, kind: str, revision: int | None = None) -> str:
        """The derived UID of ``kind`` (sr, kos, rejection; sr-series, kos-series, rejection-series) for this
        model and series."""
        parts = [kind, self.series_instance_uid, self.algorithm.name, self.algorithm.version]
        return derived_uid(*parts, *(() if revision is None else (int(revision),)))


def _number(value) -> float | None:
    return None if value is None else round(float(value), 4)


def _finding(f: dict) -> dict:
    evidence = f.get("evidence") or {}
    return {
        "code": str(f["code"]), "label": str(f.get("label") or f["code"]),
        "probability": round(float(f["probability"]), 4), "positive": bool(f["positive"]),
        "threshold": _number(f.get("threshold")),
        "key_slices": [dict({"sop_instance_uid": str(k["sop_instance_uid"]),
                             "probability": _number(k.get("probability"))},
                            **({"region_px": [round(float(v), 1) for v in k["region_px"]]}
                               if bool(f["positive"]) and k.get("region_px") else {}))
                       for k in f.get("key_slices") or [] if k.get("sop_instance_uid")],
        "volume_ml": _number(evidence.get("volume_ml")) if evidence.get("present") else None,
        "diameter_mm": _number(evidence.get("diameter_mm")) if evidence.get("present") else None,
    }


def algorithm_of_entry(entry: dict, algorithms: dict[str, Algorithm]) -> Algorithm:
    """The Algorithm of a result's ``models`` entry: the running model's, else what the entry says of it."""
    return algorithms.get(entry["name"]) or Algorithm(
        entry["name"], entry.get("version", ""), entry.get("sha256") or "", entry.get("backend") or "",
        entry.get("precision") or "", engine_fingerprint=entry.get("engine_fingerprint"))


def model_results(result: dict, algorithms: dict[str, Algorithm], body_part: str = "") -> list[ModelResult]:
    """Each model that analysed the series live, with its findings (a series' result → DICOM content)."""
    out = []
    for entry in result.get("models", []):
        if entry.get("status") != "analysed" or entry.get("mode", "live") != "live":
            continue
        name = entry["name"]
        findings = [f for f in result.get("findings", []) if f.get("model") == name and not f.get("shadow")]
        if not findings:
            continue
        algorithm = algorithm_of_entry(entry, algorithms)
        out.append(ModelResult(result["series_instance_uid"], result["study_instance_uid"], algorithm,
                               [_finding(f) for f in findings], body_part))
    return out
