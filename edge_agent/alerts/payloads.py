"""Alert, result, status and receipt payloads, and their shipped JSON Schemas.

Every payload carries a versioned ``schema`` string (``edge-agent/alert/1`` ...)
and is validated against ``edge_agent/schemas/<kind>.json`` before it leaves the
agent. Payloads are built from an allow-list of fields, so patient name, ID,
birth date and sex (DICOM PS3.15 Annex E, "basic profile") never get in;
:func:`strip_phi` is a second line of defence. Study/Series Instance UIDs and
the accession number are still identifying: protect the broker with TLS and
per-client ACLs (docs/ALERTS.md).
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import uuid
from importlib import resources
from typing import Any

import jsonschema

from edge_agent.errors import EdgeAgentError

SCHEMA_IDS = {
    "alert": "edge-agent/alert/1",
    "result": "edge-agent/result/2",
    "status": "edge-agent/status/1",
    "receipt": "edge-agent/receipt/1",
    "preview": "edge-agent/preview/1",
}
ALERT_STATES = ("preliminary", "final", "retracted")
DISCLAIMER = ("Model trained on synthetic phantoms only; this is not a medical device and its output "
              "must not be used for diagnosis.")
#: uuid5 namespace for alert ids: uuid5(NAMESPACE_URL, "urn:edge-agent:alert").
ALERT_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:edge-agent:alert")
PHI_KEYS = frozenset({"PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                      "patient_name", "patient_id", "patient_birth_date", "patient_sex"})
_STUDY_FIELDS = ("study_instance_uid", "series_instance_uid", "accession_number", "modality", "body_part",
                 "series_description")
_FINDING_FIELDS = ("code", "label", "probability", "positive", "severity")
#: What a model's provenance adds to its name and version (edge_agent.results.algorithm.model_provenance).
MODEL_PROVENANCE_FIELDS = ("sha256", "backend", "precision", "engine_fingerprint")


class PayloadError(EdgeAgentError):
    """A payload does not match its shipped JSON Schema."""


def utc_now() -> str:
    """Now as UTC ISO-8601 with milliseconds and a 'Z', the format of every payload timestamp."""
    return utc_iso(_dt.datetime.now(_dt.timezone.utc).timestamp())


def utc_iso(t: float) -> str:
    """``time.time()`` as UTC ISO-8601 with milliseconds and a 'Z'."""
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def alert_id(series_instance_uid: str, model_name: str, model_version: str, finding_code: str) -> str:
    """Deterministic alert id: the same series + model + version + finding always gives the same uuid5."""
    key = "\x1f".join((series_instance_uid, model_name, model_version, finding_code))
    return str(uuid.uuid5(ALERT_NAMESPACE, key))


@functools.lru_cache(maxsize=None)
def load_schema(kind: str) -> dict:
    """The shipped JSON Schema for ``kind`` (alert, result, status, receipt, preview)."""
    if kind not in SCHEMA_IDS:
        raise PayloadError(f"There is no payload schema named {kind!r}; use one of {', '.join(SCHEMA_IDS)}.")
    text = resources.files("edge_agent").joinpath("schemas", f"{kind}.json").read_text(encoding="utf-8")
    return json.loads(text)


def _closed(schema: Any) -> Any:
    """A copy of ``schema`` with every ``additionalProperties: true`` made false (the producer's check)."""
    if isinstance(schema, dict):
        return {k: (False if k == "additionalProperties" and v is True else _closed(v)) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_closed(v) for v in schema]
    return schema


@functools.lru_cache(maxsize=None)
def _validator(kind: str, strict: bool) -> jsonschema.protocols.Validator:
    schema = _closed(load_schema(kind)) if strict else load_schema(kind)
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def validate_payload(kind: str, payload: dict, *, strict: bool = True) -> dict:
    """Validate ``payload`` against the ``kind`` schema; return it, or raise PayloadError naming the field.

    ``strict`` (what the agent sends): no field the schema does not name, so a misspelt one fails here. A
    consumer passes ``strict=False``: the shipped schemas are open to additions, so a payload of a later agent
    with new optional fields still validates (docs/ALERTS.md, "Versions")."""
    error = jsonschema.exceptions.best_match(_validator(kind, strict).iter_errors(payload))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise PayloadError(f"The {kind} payload is invalid at {where}: {error.message}; fix the caller.")
    return payload


def strip_phi(obj: Any) -> Any:
    """A copy of ``obj`` without PatientName/PatientID/PatientBirthDate/PatientSex keys at any depth."""
    if isinstance(obj, dict):
        return {k: strip_phi(v) for k, v in obj.items() if k not in PHI_KEYS}
    if isinstance(obj, (list, tuple)):
        return [strip_phi(v) for v in obj]
    return obj


def _study(series: dict) -> dict:
    study = {}
    for name in _STUDY_FIELDS:
        value = series.get(name)
        if value is not None:
            study[name] = str(value)
    study.setdefault("accession_number", "")
    return study


def agent_provenance(provenance: dict | None) -> dict:
    """``{agent_version, config_hash}``: the one given (the agent's, computed at start), else this agent's version
    with no config hash (a payload built outside the agent)."""
    from edge_agent import __version__

    given = provenance or {}
    return {"agent_version": str(given.get("agent_version") or __version__),
            "config_hash": given.get("config_hash") or None}


def key_slice_entry(key: dict) -> dict:
    """An alert's ``finding.key_slices`` item from a decision's key slice: its UID, position, probability,
    ``positive`` (at or above the model's slice threshold) where the decision said, and, on a slice the
    evidence lies on, ``region_px`` (where, in the slice's pixels)."""
    entry = {"sop_instance_uid": key["sop_instance_uid"],
             "position_mm": None if key.get("position_mm") is None else round(float(key["position_mm"]), 2),
             "probability": round(float(key["probability"]), 4)}
    if key.get("positive") is not None:
        entry["positive"] = bool(key["positive"])
    if key.get("region_px") is not None:
        entry["region_px"] = [round(float(v), 1) for v in key["region_px"]]
    return entry


def build_alert(*, site: str, device: str, series: dict, model: dict, finding: dict, state: str,
                revision: int, timestamps: dict[str, str], provenance: dict | None = None) -> dict:
    """The alert payload (schema ``edge-agent/alert/1``), built from an allow-list of fields and validated.

    ``series``: study_instance_uid, series_instance_uid, accession_number, modality, body_part,
    series_description (other keys are ignored). ``model``: name, version, synthetic_training and its
    provenance sha256, backend, precision, engine_fingerprint (the agent always gives them:
    ``edge_agent.results.algorithm.model_provenance``; each one given is kept, None when unknown).
    ``finding``: code, label, probability, positive, severity, key_slices. ``state``: preliminary,
    final or retracted; ``revision`` grows with each update of the same alert. ``provenance``:
    ``{agent_version, config_hash}`` (the top-level ``provenance``; default: this version, no hash).
    """
    if state not in ALERT_STATES:
        raise PayloadError(f"Alert state {state!r} is unknown; use one of {', '.join(ALERT_STATES)}.")
    synthetic = bool(model.get("synthetic_training", False))
    clean_finding = {k: finding[k] for k in _FINDING_FIELDS if finding.get(k) is not None}
    if "probability" in clean_finding:
        clean_finding["probability"] = float(clean_finding["probability"])
    if finding.get("key_slices") is not None:
        clean_finding["key_slices"] = [dict(key_slice_entry(s), sop_instance_uid=str(s["sop_instance_uid"]))
                                       for s in finding["key_slices"]]
    payload = {
        "schema": SCHEMA_IDS["alert"],
        "alert_id": alert_id(str(series.get("series_instance_uid", "")), str(model.get("name", "")),
                             str(model.get("version", "")), str(finding.get("code", ""))),
        "revision": int(revision),
        "state": state,
        "site": site,
        "device": device,
        "study": _study(series),
        "model": {"name": str(model.get("name", "")), "version": str(model.get("version", "")),
                  "synthetic_training": synthetic,
                  **{k: (None if model[k] in (None, "") else str(model[k]))
                     for k in MODEL_PROVENANCE_FIELDS if k in model}},
        "finding": clean_finding,
        "timestamps": dict(timestamps),
        "provenance": agent_provenance(provenance),
    }
    if synthetic:
        payload["disclaimer"] = DISCLAIMER
    return validate_payload("alert", payload)


def build_result(*, site: str, device: str, series: dict, result: dict, timestamps: dict,
                 provenance: dict | None = None) -> dict:
    """The per-series result payload (schema ``edge-agent/result/2``): the ``edge-agent infer`` object, PHI-stripped.

    ``result.provenance`` is ``{agent_version, config_hash}`` (``provenance``, or the one the result carries);
    it sits inside ``result`` — where ``edge-agent infer`` prints it — so that a version-1 consumer, whose schema
    allows no new top-level field, still validates the payload.
    """
    clean = strip_phi(dict(result))
    clean["provenance"] = agent_provenance(provenance or clean.get("provenance"))
    study = _study({**{"study_instance_uid": result.get("study_instance_uid"),
                       "series_instance_uid": result.get("series_instance_uid")},
                    **{k: v for k, v in series.items() if v is not None}})
    payload = {
        "schema": SCHEMA_IDS["result"],
        "result_id": str(uuid.uuid4()),
        "site": site,
        "device": device,
        "study": study,
        "result": clean,
        "timestamps": dict(timestamps),
    }
    if series.get("synthetic_training") or result.get("synthetic_training"):
        payload["disclaimer"] = DISCLAIMER
    return validate_payload("result", payload)


def build_status(*, site: str, device: str, state: str, reason: str, **extra: Any) -> dict:
    """A status payload (retained on ``.../status``): birth, heartbeat, shutdown or last will."""
    from edge_agent import __version__

    payload = {"schema": SCHEMA_IDS["status"], "state": state, "reason": reason, "site": site, "device": device,
               "ts": utc_now(), "agent_version": __version__}
    payload.update({k: v for k, v in extra.items() if v is not None})
    return validate_payload("status", payload)


def build_receipt(*, alert_id: str, revision: int, consumer: str) -> dict:
    """The receipt a consumer sends back on ``.../receipts``; it confirms every revision <= ``revision``."""
    payload = {"schema": SCHEMA_IDS["receipt"], "alert_id": alert_id, "revision": int(revision),
               "consumer": consumer, "received_at": utc_now()}
    return validate_payload("receipt", payload)


def encode(payload: dict) -> bytes:
    """Compact UTF-8 JSON, the wire format of every payload (ContentType application/json)."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
