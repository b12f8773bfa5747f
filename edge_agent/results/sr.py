"""The Comprehensive 3D SR (TID 1500 Measurement Report) of one model's result on one series.

Built with highdicom (``highdicom.sr.Comprehensive3DSR`` + ``MeasurementReport``),
in the *original* study: patient and study attributes come from the study's
own header (:class:`~edge_agent.results.study.StudyHeader`). Per finding one
Measurement and Qualitative Evaluation Group (TID 1501) holds:

* the finding type (SNOMED CT where a concept exists, else the agent's own code),
* a qualitative evaluation: the finding Present or Absent — the model's decision,
* the probability (DCM 122157 "Probability", unit 1) and, where the evidence
  measured them, the volume (mL) and the diameter (mm),
* the algorithm identification (TID 4019): model name, version, and as
  parameters the sha256 of the artefact that ran, the backend, the precision,
  the TensorRT engine's fingerprint id (when it ran on one), the decision
  threshold, the agent's version and its config hash,
* the key slices as source images (with the frame for a multi-frame image),
* the disclaimer as a comment when the model was trained on synthetic data;

and, for a positive finding whose evidence lies on its first key slice, a Planar ROI group (TID 1410)
with that region as a rectangle on the slice (the same finding type and algorithm), for viewers to draw.

A revision after the first names its predecessor (Predecessor Documents
Sequence, PS3.3 C.17.2.3), so a PACS shows the newer document as the
replacement. A negative revision after one that flagged key images says so in
words: each (Absent) finding carries a comment that the earlier positive
result is withdrawn, naming the earlier SR and KOS (whose withdrawal the IOCM
rejection note carries, edge_agent.results.kos). The document is marked COMPLETE and FINAL (the series' decision
is final), UNVERIFIED (no person has signed it).
"""

from __future__ import annotations

import datetime as dt
import io

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian

from edge_agent import __version__
from edge_agent.alerts.payloads import DISCLAIMER
from edge_agent.results.content import ModelResult, derived_uid
from edge_agent.results.study import StudyHeader

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
SR_SERIES_NUMBER = 9901
MANUFACTURER = "edge-agent"
#: The agent's own coding scheme for findings without a standard concept (PS3.3 C.12.1.1.2, private "99").
LOCAL_SCHEME = "99EDGEAGENT"
FINDING_CODES = {  # finding code -> (code value, scheme, meaning)
    "ich": ("1386000", "SCT", "Intracranial hemorrhage"),
    "lung_nodule": ("786838002", "SCT", "Pulmonary nodule"),
}
PROCEDURES = {  # BodyPartExamined -> LOINC procedure (CID 100 lists none for CT triage)
    "HEAD": ("24725-4", "LN", "CT Head"), "BRAIN": ("24725-4", "LN", "CT Head"),
    "SKULL": ("24725-4", "LN", "CT Head"), "CHEST": ("29252-4", "LN", "CT Chest"),
    "LUNG": ("29252-4", "LN", "CT Chest"),
}
UNSPECIFIED_PROCEDURE = ("25045-6", "LN", "CT Unspecified body region")
_PROBABILITY = hd.sr.CodedConcept("122157", "DCM", "Probability")
_UNITY = hd.sr.CodedConcept("1", "UCUM", "no units")
_ML = hd.sr.CodedConcept("ml", "UCUM", "milliliter")
_MM = hd.sr.CodedConcept("mm", "UCUM", "millimeter")


def finding_concept(code: str, label: str) -> hd.sr.CodedConcept:
    value, scheme, meaning = FINDING_CODES.get(code, (code, LOCAL_SCHEME, label))
    return hd.sr.CodedConcept(value, scheme, meaning[:64])


def device_observer(site: str, device: str, model_name: str) -> hd.sr.ObserverContext:
    """The observer of every result: this agent (a device), named by site and device."""
    return hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=derived_uid("device", site, device), name=f"edge-agent {site}/{device}"[:64],
            manufacturer_name=MANUFACTURER, model_name=model_name[:64]))


def key_reference(key_uid: str, header: StudyHeader) -> tuple[str, int | None]:
    """(SOP Instance UID, frame number or None) of a key slice: frames of a multi-frame image are keyed
    ``<uid>.<frame>`` by the reader (edge_agent.dicom.model.Slice)."""
    if header.frames > 1 and "." in key_uid:
        uid, frame = key_uid.rsplit(".", 1)
        if frame.isdigit():
            return uid, int(frame)
    return key_uid, None


def evidence_datasets(result: ModelResult, header: StudyHeader) -> list[Dataset]:
    """Header-only datasets of the key images, one per SOP instance (what highdicom references and copies)."""
    seen: dict[str, Dataset] = {}
    for finding in result.findings:
        for key in finding["key_slices"]:
            uid, _ = key_reference(key["sop_instance_uid"], header)
            if uid not in seen:
                seen[uid] = header.evidence(result.series_instance_uid, uid)
    return list(seen.values())


def _algorithm(result: ModelResult, threshold: float | None,
               provenance: dict | None = None) -> hd.sr.AlgorithmIdentification:
    a = result.algorithm
    parameters = [f"sha256={a.sha256 or 'unknown'}", f"backend={a.backend or 'unknown'}",
                  f"precision={a.precision or 'unknown'}"]
    if a.engine_fingerprint:
        parameters.append(f"engine_fingerprint={a.engine_fingerprint}")
    if threshold is not None:
        parameters.append(f"threshold={threshold:g}")
    provenance = provenance or {}
    parameters.append(f"agent_version={provenance.get('agent_version') or __version__}")
    if provenance.get("config_hash"):
        parameters.append(f"config_hash={provenance['config_hash']}")
    return hd.sr.AlgorithmIdentification(name=a.name, version=a.version, parameters=parameters,
                                         manufacturer=MANUFACTURER)


def _group(result: ModelResult, finding: dict, header: StudyHeader, provenance: dict | None = None,
           withdrawn: str | None = None) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    concept = finding_concept(finding["code"], finding["label"])
    assessed = finding.get("assessed", True)   # False: the series was re-decided and is no longer assessable
    measurements = [] if finding.get("probability") is None else [
        hd.sr.Measurement(name=_PROBABILITY, value=finding["probability"], unit=_UNITY)]
    if finding.get("volume_ml") is not None:
        measurements.append(hd.sr.Measurement(name=codes.SCT.Volume, value=finding["volume_ml"], unit=_ML))
    if finding.get("diameter_mm") is not None:
        measurements.append(hd.sr.Measurement(name=codes.SCT.Diameter, value=finding["diameter_mm"], unit=_MM))
    sources = []
    for key in finding["key_slices"]:
        uid, frame = key_reference(key["sop_instance_uid"], header)
        sources.append(hd.sr.SourceImageForMeasurementGroup(
            referenced_sop_class_uid=header.sop_class_uid, referenced_sop_instance_uid=uid,
            referenced_frame_numbers=None if frame is None else [frame]))
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=result.uid(f"tracking:{finding['code']}"), identifier=f"{result.algorithm.name} {finding['code']}"),
        finding_type=concept,
        algorithm_id=_algorithm(result, finding.get("threshold"), provenance),
        measurements=measurements or None,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(
            name=concept, value=(codes.SCT.Present if finding["positive"] else codes.SCT.Absent) if assessed
            else codes.SCT.Indeterminate)],
        source_images=sources or None)
    if result.algorithm.synthetic_training:
        group[0].ContentSequence.append(hd.sr.TextContentItem(
            name=codes.DCM.Comment, value=DISCLAIMER,
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    if withdrawn and not finding["positive"]:
        group[0].ContentSequence.append(hd.sr.TextContentItem(
            name=codes.DCM.Comment, value=withdrawn, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    return group


def withdrawal_text(result: ModelResult, revision: int, withdrawn_kos: str) -> str:
    """The comment of a negative (or no longer assessable) revision after a positive one: what is withdrawn,
    by UID (no patient data)."""
    a = result.algorithm
    status = next((f.get("status") for f in result.findings if f.get("assessed", True) is False), None)
    now = (f"with no result: the series is now {status.replace('_', ' ')} for this model" if status
           else "with a negative result")
    return (f"Earlier finding withdrawn: revision {revision - 1} of this report (SOP Instance UID "
            f"{result.uid('sr', revision - 1)}) gave a positive result of {a.name} {a.version}; the series was "
            f"re-decided and this revision replaces it {now}. The key images flagged then (Key "
            f"Object Selection {withdrawn_kos}) are no longer of interest.")


def reported_findings(sr_bytes: bytes) -> tuple[list[tuple[str, str]], list[str]]:
    """What an SR of ours reported: the (code, label) of its findings ('Finding' items, in order, each once)
    and the SOP Instance UIDs of the images it referenced (its evidence: the key slices)."""
    by_concept = {(v, scheme): code for code, (v, scheme, _m) in FINDING_CODES.items()}
    out: list[tuple[str, str]] = []

    def walk(items):
        for item in items or []:
            name = (item.get("ConceptNameCodeSequence") or [None])[0]
            if item.get("ValueType") == "CODE" and name is not None and name.CodeValue == "121071":
                c = item.ConceptCodeSequence[0]
                pair = (by_concept.get((c.CodeValue, c.CodingSchemeDesignator), str(c.CodeValue)), str(c.CodeMeaning))
                if pair not in out:
                    out.append(pair)
            walk(item.get("ContentSequence"))

    ds = pydicom.dcmread(io.BytesIO(sr_bytes))
    walk(ds.get("ContentSequence"))
    images = [str(r.ReferencedSOPInstanceUID) for study in ds.get("CurrentRequestedProcedureEvidenceSequence", [])
              for series in study.get("ReferencedSeriesSequence", []) for r in series.get("ReferencedSOPSequence", [])]
    return out, images


def build_sr(result: ModelResult, header: StudyHeader, *, revision: int, site: str, device: str,
             decided_at: float, provenance: dict | None = None,
             withdrawn_kos: str | None = None) -> hd.sr.Comprehensive3DSR:
    """The SR of ``result`` (revision ``revision``), in the original study of ``header``.

    ``provenance``: ``{agent_version, config_hash}`` of the agent, named in each algorithm identification.
    ``withdrawn_kos``: the KOS of revision ``revision - 1`` this revision withdraws; when ``result`` is
    negative, each finding then says in a comment that the earlier positive result is withdrawn."""
    procedure = PROCEDURES.get(result.body_part.strip().upper(), UNSPECIFIED_PROCEDURE)
    withdrawn = (withdrawal_text(result, revision, withdrawn_kos)
                 if withdrawn_kos and revision > 1 and not result.positive else None)
    groups = []
    for f in result.findings:
        groups.append(_group(result, f, header, provenance, withdrawn))
        region = _region_group(result, f, header, provenance)
        if region is not None:
            groups.append(region)
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(
            observer_device_context=device_observer(site, device, result.algorithm.name)),
        procedure_reported=hd.sr.CodedConcept(*procedure),
        imaging_measurements=groups,
        title=codes.cid7021.ImagingMeasurementReport)
    series_uid = result.uid("sr-series")
    previous = []
    if revision > 1:
        before = Dataset()
        before.SOPClassUID, before.SOPInstanceUID = COMPREHENSIVE_3D_SR, result.uid("sr", revision - 1)
        before.StudyInstanceUID, before.SeriesInstanceUID = header.study_instance_uid, series_uid
        previous.append(before)
    when = dt.datetime.fromtimestamp(decided_at)
    synthetic = result.algorithm.synthetic_training
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence_datasets(result, header), content=report, series_instance_uid=series_uid,
        series_number=SR_SERIES_NUMBER, sop_instance_uid=result.uid("sr", revision), instance_number=revision,
        manufacturer=MANUFACTURER, manufacturer_model_name=f"edge-agent {result.algorithm.name}"[:64],
        software_versions=__version__, is_complete=True, is_final=True, is_verified=False,
        previous_versions=previous or None, transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=(f"AI {result.algorithm.name} {result.algorithm.version}"
                            + (" - not for diagnosis" if synthetic else ""))[:64],
        content_qualification="RESEARCH" if synthetic else "PRODUCT",
        content_date=when.date(), content_time=when.time())
    pin_times(sr, when)
    return sr


def _region_group(result: ModelResult, finding: dict, header: StudyHeader,
                  provenance: dict | None = None) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations | None:
    """Where a positive finding's evidence lies on its first key slice, as a TID 1410 planar ROI (a rectangle,
    POLYLINE in the slice's pixel coordinates: column, row), so that a viewer can draw it; None without one."""
    keys = finding.get("key_slices") or []
    if not finding.get("positive") or not keys or not keys[0].get("region_px"):
        return None
    r0, c0, r1, c1 = (float(v) for v in keys[0]["region_px"])
    uid, frame = key_reference(keys[0]["sop_instance_uid"], header)
    concept = finding_concept(finding["code"], finding["label"])
    # SCOORD pixel coordinates put the top left corner of the top left pixel at (0, 0) (PS3.3 C.18.6.1.1):
    # region_px counts pixel centres from 0, so edges at -0.5 move to 0
    corners = np.array([[c0 + 0.5, r0 + 0.5], [c1 + 0.5, r0 + 0.5], [c1 + 0.5, r1 + 0.5], [c0 + 0.5, r1 + 0.5],
                        [c0 + 0.5, r0 + 0.5]], dtype=np.float32)
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=np.clip(corners, 0.0, None),
        source_image=hd.sr.SourceImageForRegion(
            referenced_sop_class_uid=header.sop_class_uid, referenced_sop_instance_uid=uid,
            referenced_frame_numbers=None if frame is None else [frame]))
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=result.uid(f"tracking:{finding['code']}:region"),
            identifier=f"{result.algorithm.name} {finding['code']} evidence region"),
        referenced_region=region, finding_type=concept,
        algorithm_id=_algorithm(result, finding.get("threshold"), provenance),
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=concept, value=codes.SCT.Present)])


def pin_times(ds: Dataset, when: dt.datetime) -> None:
    """Every date and time highdicom takes from the clock set to the decision's: a rebuild is the same bytes."""
    ds.InstanceCreationDate, ds.InstanceCreationTime = ds.ContentDate, ds.ContentTime
    for item in ds.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = when.strftime("%Y%m%d%H%M%S.%f")
