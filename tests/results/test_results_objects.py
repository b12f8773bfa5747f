"""The SR and KOS as objects: valid to DCMTK's validators, right after a pydicom round trip, deterministic.

Built from the header of a real phantom file (the patient and study attributes
come from there); checked by tools that are not ours: ``dciodvfy`` (dicom3tools)
where installed, ``dsrdump`` (DCMTK), and pydicom reading the bytes back.
"""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from edge_agent.service.simulator import ROUTINE_HEAD as ROUTINE
from edge_agent.results.content import Algorithm, ModelResult, derived_uid, model_results
from edge_agent.results.delivery import encode
from edge_agent.results.kos import build_kos
from edge_agent.results.sr import COMPREHENSIVE_3D_SR, build_sr
from edge_agent.results.study import read_study_header
from edge_agent.service.simulator import render
from edge_agent.testing.dcmtk import DCIODVFY, validate_sr

ALGORITHM = Algorithm("ich", "2.0.0", "ab" * 32, "onnxrt", "fp32", True)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    folder = tmp_path_factory.mktemp("phantom")
    _, paths = render("ich", 61, folder, slices=12, **ROUTINE)
    datasets = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    return paths, datasets


def _result(datasets, positive=True, probability=0.93, volume=4.25):
    first = datasets[0]
    keys = [{"sop_instance_uid": d.SOPInstanceUID, "probability": 0.9} for d in datasets[5:7]]
    return ModelResult(first.SeriesInstanceUID, first.StudyInstanceUID, ALGORITHM,
                       [{"code": "ich", "label": "Intracranial haemorrhage", "probability": probability,
                         "positive": positive, "threshold": 0.5, "key_slices": keys,
                         "volume_ml": volume, "diameter_mm": None}], "HEAD")


def _write(ds, path: Path) -> Path:
    path.write_bytes(encode(ds))
    return path


def test_the_validator_rejects_what_is_wrong(phantom, tmp_path):
    """The check is a real one: dciodvfy flags an SR that lacks a Type 1 attribute."""
    if not DCIODVFY:
        pytest.skip("dciodvfy (dicom3tools) is not installed")
    paths, datasets = phantom
    sr = build_sr(_result(datasets), read_study_header(paths[0]), revision=1, site="s", device="d", decided_at=0)
    del sr.CompletionFlag
    out = subprocess.run([DCIODVFY, str(_write(sr, tmp_path / "broken.dcm"))], capture_output=True, text=True)
    assert any(line.startswith("Error") and "CompletionFlag" in line for line in (out.stdout + out.stderr).splitlines())


def test_sr_is_valid_and_says_what_the_model_said(phantom, tmp_path):
    paths, datasets = phantom
    header = read_study_header(paths[0])
    result = _result(datasets)
    sr = build_sr(result, header, revision=1, site="st-marys", device="ct1", decided_at=1_800_000_000.0)
    dump = validate_sr(_write(sr, tmp_path / "sr.dcm"))
    assert "Imaging Measurement Report" in dump and '"Probability")="0.93"' in dump
    assert '(52101004,SCT,"Present")' in dump and '(1386000,SCT,"Intracranial hemorrhage")' in dump
    assert '"Volume")="4.25" (ml,UCUM' in dump

    back = pydicom.dcmread(io.BytesIO(encode(sr)))
    first = datasets[0]
    assert back.SOPClassUID == COMPREHENSIVE_3D_SR and back.Modality == "SR"
    # In the original study, as the patient's: the attributes are copied, not invented.
    for keyword in ("StudyInstanceUID", "PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber",
                    "StudyDate", "StudyTime"):
        assert str(back.get(keyword)) == str(first.get(keyword)), keyword
    assert back.SeriesInstanceUID != first.SeriesInstanceUID
    evidence = back.CurrentRequestedProcedureEvidenceSequence[0]
    [series_ref] = evidence.ReferencedSeriesSequence
    assert series_ref.SeriesInstanceUID == first.SeriesInstanceUID
    assert {(r.ReferencedSOPClassUID, r.ReferencedSOPInstanceUID) for r in series_ref.ReferencedSOPSequence} == \
        {(d.SOPClassUID, d.SOPInstanceUID) for d in datasets[5:7]}
    assert back.ContentQualification == "RESEARCH" and "not for diagnosis" in back.SeriesDescription
    assert back.CompletionFlag == "COMPLETE" and back.PreliminaryFlag == "FINAL"


def test_kos_flags_the_key_slices_and_only_for_a_positive_result(phantom, tmp_path):
    paths, datasets = phantom
    header = read_study_header(paths[0])
    kos = build_kos(_result(datasets), header, revision=1, site="s", device="d", decided_at=0)
    dump = validate_sr(_write(kos, tmp_path / "kos.dcm"))
    assert '"Of Interest"' in dump and "Key Object Description" in dump
    back = pydicom.dcmread(io.BytesIO(encode(kos)))
    images = [i.ReferencedSOPSequence[0] for i in back.ContentSequence if i.ValueType == "IMAGE"]
    assert [(i.ReferencedSOPClassUID, i.ReferencedSOPInstanceUID) for i in images] == \
        [(d.SOPClassUID, d.SOPInstanceUID) for d in datasets[5:7]]
    assert back.StudyInstanceUID == datasets[0].StudyInstanceUID and back.PatientID == datasets[0].PatientID
    assert build_kos(_result(datasets, positive=False), header, revision=1, site="s", device="d", decided_at=0) is None


def test_uids_are_derived_and_a_rebuild_is_the_same_bytes(phantom):
    paths, datasets = phantom
    header = read_study_header(paths[0])
    result = _result(datasets)
    one = encode(build_sr(result, header, revision=1, site="s", device="d", decided_at=1_800_000_000.0))
    again = encode(build_sr(_result(datasets), read_study_header(paths[0]), revision=1, site="s", device="d",
                            decided_at=1_800_000_000.0))
    assert one == again
    assert pydicom.dcmread(io.BytesIO(one)).SOPInstanceUID == derived_uid(
        "sr", datasets[0].SeriesInstanceUID, "ich", "2.0.0", 1)
    two = pydicom.dcmread(io.BytesIO(encode(build_sr(result, header, revision=2, site="s", device="d",
                                                     decided_at=1_800_000_100.0))))
    assert two.SOPInstanceUID != pydicom.dcmread(io.BytesIO(one)).SOPInstanceUID
    assert two.SeriesInstanceUID == pydicom.dcmread(io.BytesIO(one)).SeriesInstanceUID  # one SR series per model
    [predecessor] = two.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence
    assert predecessor.ReferencedSOPInstanceUID == pydicom.dcmread(io.BytesIO(one)).SOPInstanceUID
    assert len(two.SOPInstanceUID) <= 64 and two.SOPInstanceUID.startswith("2.25.")


def test_digest_follows_the_content_not_the_time(phantom):
    _, datasets = phantom
    assert _result(datasets).digest() == _result(datasets).digest()
    assert _result(datasets).digest() != _result(datasets, probability=0.94).digest()
    assert _result(datasets).digest() != _result(datasets, positive=False).digest()


def test_model_results_skip_shadow_and_unanalysed_models():
    finding = {"code": "ich", "label": "ICH", "probability": 0.9, "positive": True, "model": "ich",
               "key_slices": [{"sop_instance_uid": "1.2.3", "probability": 0.9}]}
    base = {"series_instance_uid": "1.2", "study_instance_uid": "1.1", "findings": [finding]}
    live = {**base, "models": [{"name": "ich", "version": "1", "status": "analysed"}]}
    assert [m.algorithm.name for m in model_results(live, {})] == ["ich"]
    shadow = {**base, "models": [{"name": "ich", "version": "1", "status": "analysed", "mode": "shadow"}]}
    assert model_results(shadow, {}) == []
    skipped = {**base, "models": [{"name": "ich", "version": "1", "status": "not_assessable"}]}
    assert model_results(skipped, {}) == []


def test_multiframe_key_slices_reference_the_frame(phantom, tmp_path):
    paths, datasets = phantom
    header = read_study_header(paths[0])
    header.frames = 40  # as for an Enhanced CT file: the reader keys frames "<uid>.<frame>"
    result = _result(datasets)
    result.findings[0]["key_slices"] = [{"sop_instance_uid": "1.2.826.0.1.3680043.8.498.77.12", "probability": 0.9}]
    back = pydicom.dcmread(io.BytesIO(encode(build_sr(result, header, revision=1, site="s", device="d",
                                                      decided_at=0))))
    refs = [r for r in back.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
            .ReferencedSOPSequence]
    assert [r.ReferencedSOPInstanceUID for r in refs] == ["1.2.826.0.1.3680043.8.498.77"]
    frames = []
    back.walk(lambda ds, elem: frames.append(elem.value) if elem.keyword == "ReferencedFrameNumber" else None)
    assert frames and all(int(f) == 12 for f in frames)


def test_the_study_header_never_shows_patient_data(phantom):
    paths, datasets = phantom
    header = read_study_header(paths[0])
    text = repr(header) + str(header) + f"{header}"
    assert str(datasets[0].PatientName) not in text and str(datasets[0].PatientID) not in text
    assert header.sop_class_uid == datasets[0].SOPClassUID


def test_the_evidence_region_is_a_planar_roi_on_the_first_key_slice(phantom, tmp_path):
    """A positive finding whose first key slice carries region_px gets a TID 1410 group: a closed rectangle in
    that slice's pixel coordinates (column, row; pixel edges), valid for dciodvfy; a negative one gets none."""
    paths, datasets = phantom
    header = read_study_header(paths[0])
    result = _result(datasets)
    result.findings[0]["key_slices"][0]["region_px"] = [100.5, 200.5, 140.5, 260.5]
    sr = build_sr(result, header, revision=1, site="s", device="d", decided_at=1_800_000_000.0)
    dump = validate_sr(_write(sr, tmp_path / "roi.dcm"))
    assert "Planar ROI" in dump or "SCOORD" in dump
    back = pydicom.dcmread(io.BytesIO(encode(sr)))
    scoords = [item for item in _walk(back) if item.ValueType == "SCOORD"]
    [roi] = scoords
    assert roi.GraphicType == "POLYLINE"
    points = np.asarray(roi.GraphicData, float).reshape(-1, 2)
    assert points.tolist() == [[201.0, 101.0], [261.0, 101.0], [261.0, 141.0], [201.0, 141.0], [201.0, 101.0]]
    [image] = [i for i in roi.ContentSequence if i.ValueType == "IMAGE"]
    assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == datasets[5].SOPInstanceUID
    negative = _result(datasets, positive=False)
    negative.findings[0]["key_slices"][0]["region_px"] = [100.5, 200.5, 140.5, 260.5]
    sr = build_sr(negative, header, revision=1, site="s", device="d", decided_at=1_800_000_000.0)
    assert not [i for i in _walk(pydicom.dcmread(io.BytesIO(encode(sr)))) if i.ValueType == "SCOORD"]


def _walk(ds):
    for item in ds.get("ContentSequence", []) or []:
        yield item
        yield from _walk(item)
