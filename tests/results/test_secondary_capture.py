"""The secondary-capture key image: valid to dciodvfy, in the original study, annotated, no patient data drawn.

Built from a real phantom file's header and the key slice's real HU (windowed and downscaled here with numpy,
independently of the code under test); the picture is checked where the slice sits (grey levels preserved,
enlarged), where the region frame is (red), that the text bands hold text, and that the words drawn name no patient
attribute.
"""

from __future__ import annotations

import io
import subprocess

import numpy as np
import pydicom
import pytest

from edge_agent.results.capture import (
    MIN_SIDE, SECONDARY_CAPTURE, build_capture, caption, patient_orientation,
)
from edge_agent.results.content import Algorithm, ModelResult
from edge_agent.results.delivery import encode
from edge_agent.results.study import read_study_header
from edge_agent.service.simulator import ROUTINE_HEAD, render as render_phantom
from edge_agent.testing.dcmtk import DCIODVFY

ALGORITHM = Algorithm("ich", "2.0.0", "ab" * 32, "onnxrt", "fp32", True)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    folder = tmp_path_factory.mktemp("phantom")
    _, paths = render_phantom("ich", 61, folder, slices=12, **ROUTINE_HEAD)
    return paths, [pydicom.dcmread(p) for p in paths]


def _result(datasets, positive=True):
    first = datasets[0]
    keys = [{"sop_instance_uid": datasets[6].SOPInstanceUID, "probability": 0.9}]
    return ModelResult(first.SeriesInstanceUID, first.StudyInstanceUID, ALGORITHM,
                       [{"code": "ich", "label": "Intracranial haemorrhage", "probability": 0.93,
                         "positive": positive, "threshold": 0.5, "key_slices": keys,
                         "volume_ml": 4.25, "diameter_mm": None}], "HEAD")


def _thumbnail(ds) -> np.ndarray:
    """Brain window 40/80 of the slice's HU, 2x2 block means (512 -> 256): computed here, not by the agent."""
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    grey = np.clip(hu / 80.0, 0.0, 1.0) * 255.0
    r, c = grey.shape
    return np.rint(grey.reshape(r // 2, 2, c // 2, 2).mean(axis=(1, 3))).astype(np.uint8)


def test_orientation_letters_follow_the_direction_cosines():
    assert patient_orientation((1, 0, 0, 0, 1, 0)) == ("L", "P")
    assert patient_orientation((0, 1, 0, 0, 0, -1)) == ("P", "F")      # sagittal
    assert patient_orientation((-1, 0, 0, 0, 0, -1)) == ("R", "F")     # coronal, flipped
    assert patient_orientation(()) == ("L", "P")


def test_capture_is_valid_in_the_original_study_and_says_burned_in(phantom, tmp_path):
    paths, datasets = phantom
    header = read_study_header(paths[0])
    thumb = _thumbnail(datasets[6])
    sc = build_capture(_result(datasets), header, key_sop_instance_uid=datasets[6].SOPInstanceUID, image=thumb,
                       orientation=datasets[6].ImageOrientationPatient, boxes=[(100, 60, 140, 110)], revision=2,
                       site="s", device="d", decided_at=1_800_000_000.0)
    data = encode(sc)
    path = tmp_path / "sc.dcm"
    path.write_bytes(data)
    if DCIODVFY:
        out = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True)
        errors = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]
        assert errors == [], errors
    back = pydicom.dcmread(io.BytesIO(data))
    first = datasets[0]
    assert back.SOPClassUID == SECONDARY_CAPTURE and back.BurnedInAnnotation == "YES"
    assert back.RecognizableVisualFeatures == "NO" and back.PhotometricInterpretation == "RGB"
    for keyword in ("StudyInstanceUID", "PatientID", "PatientName", "PatientBirthDate", "AccessionNumber"):
        assert str(back.get(keyword)) == str(first.get(keyword)), keyword
    assert back.SeriesInstanceUID not in {first.SeriesInstanceUID}
    assert back.SourceImageSequence[0].ReferencedSOPInstanceUID == datasets[6].SOPInstanceUID
    assert back.SourceImageSequence[0].ReferencedSOPClassUID == datasets[6].SOPClassUID
    assert list(back.PatientOrientation) == ["L", "P"]
    # deterministic: the same result, revision and decision time give the same bytes and UID
    again = build_capture(_result(datasets), header, key_sop_instance_uid=datasets[6].SOPInstanceUID, image=thumb,
                          orientation=datasets[6].ImageOrientationPatient, boxes=[(100, 60, 140, 110)],
                          revision=2, site="s", device="d", decided_at=1_800_000_000.0)
    assert encode(again) == data
    other = build_capture(_result(datasets), header, key_sop_instance_uid=datasets[6].SOPInstanceUID, image=thumb,
                          revision=3, site="s", device="d", decided_at=1_800_000_000.0)
    assert other.SOPInstanceUID != sc.SOPInstanceUID and other.SeriesInstanceUID == sc.SeriesInstanceUID
    # the picture as stored: the slice enlarged (grey kept), the red frame, text in the bands
    rgb = back.pixel_array
    assert rgb.shape[1] >= MIN_SIDE and rgb.shape[2] == 3
    scale = rgb.shape[1] / thumb.shape[1]
    band = (rgb.shape[0] - round(thumb.shape[0] * scale)) // 2
    body = rgb[band:band + round(thumb.shape[0] * scale)]
    middle = body[round(30 * scale):round(90 * scale), round(150 * scale):round(220 * scale)]
    expected = thumb[30:90, 150:220].astype(float)
    grey = middle[..., 0].astype(float)
    assert abs(grey.mean() - expected.mean()) < 3.0 and (middle[..., 0] == middle[..., 2]).all()
    red = (body[..., 0] > 200) & (body[..., 1] < 80) & (body[..., 2] < 80)
    rows, cols = np.nonzero(red)
    assert rows.min() < 100 * scale < rows.max() and cols.min() < 60 * scale < cols.max()
    assert rows.max() <= 150 * scale and cols.max() <= 120 * scale      # the frame sits around the box
    assert (rgb[:band].max(axis=2) > 150).any() and (rgb[-band:].max(axis=2) > 150).any()


def test_caption_names_finding_model_and_disclaimer_never_the_patient(phantom):
    paths, datasets = phantom
    top, bottom = caption(_result(datasets))
    words = " ".join(top + bottom)
    assert "Intracranial haemorrhage: POSITIVE  p=0.93" in words and "ich 2.0.0" in words
    assert "not a diagnosis" in words and "synthetic" in words
    first = datasets[0]
    for value in (str(first.PatientName), str(first.PatientID), str(first.PatientBirthDate)):
        if value:
            assert value not in words
