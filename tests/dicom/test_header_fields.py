"""Header fields for the applicability rules: read on both reader paths, absent → None, carried to Series."""

import numpy as np
import pytest

from edge_agent.dicom import read_file, read_series, reader
from edge_agent.dicom.header import HEADER_FIELDS
from edge_agent.dicom.synth import SeriesHeaders, write_series

from .conftest import data_file

GE_HEAD = "77654033/CT2/17136"  # pydicom's real GE LightSpeed routine brain (dicomdirtests)


@pytest.fixture(params=[True, False], ids=["fastpath", "pydicom"])
def both_paths(request, monkeypatch):
    monkeypatch.setattr(reader, "FAST_HEADERS", request.param)
    return request.param


def fields_of(obj) -> dict:
    return {name: getattr(obj, name) for name in HEADER_FIELDS}


def test_real_ge_head_header(both_paths):
    s = read_file(data_file(GE_HEAD), decode=False)[0]
    assert fields_of(s) == {
        "manufacturer": "GE MEDICAL SYSTEMS", "manufacturer_model": "LightSpeed Plus",
        "convolution_kernel": ("STANDARD",), "contrast_agent": None, "contrast_route": None,
        "cardiac_sync": None, "trigger_time": None, "kvp": 140.0, "protocol_name": "1.1 Routine Brain",
        "reconstruction_diameter": 250.0, "patient_age": "042Y"}


def test_real_ge_contrast_header(both_paths):
    s = read_file(data_file("CT_small.dcm"), decode=False)[0]
    assert (s.contrast_agent, s.contrast_route, s.patient_age, s.kvp) == ("ISOVUE300/100", "IV", "000Y", 120.0)


def test_absent_fields_are_none_and_extra_fields_are_read(tmp_path, both_paths):
    vol = np.zeros((2, 8, 8), np.float32)
    plain = read_file(write_series(vol, tmp_path / "plain", headers=SeriesHeaders())[0], decode=False)[0]
    assert plain.convolution_kernel is None and plain.contrast_agent is None and plain.cardiac_sync is None
    assert plain.trigger_time is None and plain.protocol_name is None and plain.patient_age is None
    assert plain.reconstruction_diameter is None and plain.kvp == 120.0
    extra = {"ConvolutionKernel": ["Hr40f", "3"], "ContrastBolusAgent": "Omnipaque 350", "ContrastBolusRoute": "IV",
             "CardiacSynchronizationTechnique": "PROSPECTIVE", "TriggerTime": 350.0, "KVP": 100,
             "ProtocolName": "Ca Score", "ReconstructionDiameter": 200.0, "PatientAge": "067Y",
             "Manufacturer": "SIEMENS", "ManufacturerModelName": "SOMATOM Force"}
    full = read_file(write_series(vol, tmp_path / "full", headers=SeriesHeaders(extra=extra))[0], decode=False)[0]
    assert fields_of(full) == {
        "manufacturer": "SIEMENS", "manufacturer_model": "SOMATOM Force", "convolution_kernel": ("Hr40f", "3"),
        "contrast_agent": "Omnipaque 350", "contrast_route": "IV", "cardiac_sync": "PROSPECTIVE",
        "trigger_time": 350.0, "kvp": 100.0, "protocol_name": "Ca Score", "reconstruction_diameter": 200.0,
        "patient_age": "067Y"}


def test_empty_or_damaged_values_are_none(tmp_path, both_paths):
    vol = np.zeros((1, 8, 8), np.float32)
    extra = {"ConvolutionKernel": "", "ContrastBolusAgent": "  ", "ReconstructionDiameter": "9876.54"}
    path = write_series(vol, tmp_path / "s", headers=SeriesHeaders(extra=extra))[0]
    raw = path.read_bytes()
    assert raw.count(b"9876.54 ") == 1
    path.write_bytes(raw.replace(b"9876.54 ", b"n/a-bad "))  # a value pydicom would refuse to write
    s = read_file(path, decode=False)[0]
    assert s.convolution_kernel is None and s.contrast_agent is None and s.reconstruction_diameter is None


def test_series_carries_the_first_slices_fields_and_hides_the_age(tmp_path):
    extra = {"ConvolutionKernel": "BONE", "Manufacturer": "GE MEDICAL SYSTEMS", "PatientAge": "045Y"}
    write_series(np.zeros((4, 8, 8), np.float32), tmp_path / "s", headers=SeriesHeaders(extra=extra))
    [series] = read_series(tmp_path / "s")
    assert series.convolution_kernel == ("BONE",) and series.manufacturer == "GE MEDICAL SYSTEMS"
    assert series.patient_age == "045Y" and series.kvp == 120.0
    assert "045Y" not in repr(series)
    assert "045Y" not in repr(read_file(series.paths[0], decode=False)[0])


def test_enhanced_ct_contrast_from_its_functional_groups():
    """pydicom's real Enhanced CT: Iohexol in the Enhanced Contrast/Bolus module, administered per the usage group."""
    frames = read_file(data_file("eCT_Supplemental.dcm"), decode=False)
    assert {(f.contrast_agent, f.contrast_route) for f in frames} == {("Iohexol", "Intravenous route")}
    assert frames[0].manufacturer == "Acme Medical Devices" and frames[0].convolution_kernel is None
