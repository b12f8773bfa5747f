"""The native little-endian header fast path gives the same slices as pydicom's full reader."""

from __future__ import annotations

import os

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from edge_agent.dicom import parallel, read_file, reader, scan
from edge_agent.dicom.fastpath import read_header
from edge_agent.dicom.synth import SeriesHeaders, save, slice_datasets

from edge_agent.testing.volumes import head_volume

from .conftest import data_file

FIELDS = ["frame", "sop_instance_uid", "series_instance_uid", "study_instance_uid", "accession_number",
          "modality", "series_description", "study_description", "body_part", "image_type",
          "pixel_spacing", "slice_thickness", "gantry_tilt", "rows", "columns", "content_hash",
          "transfer_syntax", "instance_number"]


def both_paths(path, monkeypatch):
    assert read_header(str(path)) is not None, "expected the fast path to handle this file"
    fast = read_file(path)
    with monkeypatch.context() as m:
        m.setattr(reader, "FAST_HEADERS", False)
        slow = read_file(path)
    return fast, slow


def assert_same(fast, slow):
    assert len(fast) == len(slow)
    for a, b in zip(fast, slow):
        for name in FIELDS:
            assert getattr(a, name) == getattr(b, name), name
        np.testing.assert_array_equal(a.position, b.position)
        np.testing.assert_array_equal(a.orientation, b.orientation)
        np.testing.assert_array_equal(a.hu, b.hu)


@pytest.mark.parametrize("name", ["CT_small.dcm", "693_UNCR.dcm", "dicomdirtests/98892001/CT5N/2062",
                                  "dicomdirtests/77654033/CT2/17106", "693_J2KR.dcm", "693_J2KI.dcm"])
def test_real_files_identical_on_both_paths(name, monkeypatch):
    assert_same(*both_paths(data_file(name), monkeypatch))


@pytest.mark.parametrize("syntax", ["implicit", "explicit"])
@pytest.mark.parametrize("signed,padding", [(True, -2000), (False, None)])
def test_generated_files_identical_on_both_paths(tmp_path, monkeypatch, syntax, signed, padding):
    volume = head_volume(slices=1, size=32)
    headers = SeriesHeaders(signed=signed, padding_value=padding, series_description="KOPF ÄÖÜ 5mm")
    outside = np.zeros(volume.shape, bool)
    outside[:, :3] = True
    (ds,) = slice_datasets(volume, (2, 1, 1), headers, outside_mask=outside if padding else None)
    # Sequences the fast path must skip: undefined length with nested undefined-length items, and defined length.
    inner = Dataset()
    inner.CodeValue = "T-A0100"
    item = Dataset()
    item.AnatomicRegionSequence = Sequence([inner])
    ds.ReferencedImageSequence = Sequence([item])
    ds.ProcedureCodeSequence = Sequence([inner])
    ds.file_meta.TransferSyntaxUID = {"implicit": "1.2.840.10008.1.2", "explicit": "1.2.840.10008.1.2.1"}[syntax]
    save(ds, tmp_path / "one.dcm")
    fast, slow = both_paths(tmp_path / "one.dcm", monkeypatch)
    assert_same(fast, slow)
    assert fast[0].series_description == "KOPF ÄÖÜ 5mm"


@pytest.mark.parametrize("syntax", ["rle", "jpeg-lossless", "jpegls", "j2k-lossless", "j2k"])
def test_compressed_files_identical_on_both_paths(make_series, monkeypatch, syntax):
    paths, _, _ = make_series(head_volume(slices=1, size=32), transfer_syntax=syntax,
                              headers=SeriesHeaders(signed=True, padding_value=-2000))
    assert_same(*both_paths(paths[0], monkeypatch))


def test_deflated_goes_to_pydicom(make_series):
    paths, volume, _ = make_series(head_volume(slices=1, size=32), transfer_syntax="deflated")
    assert read_header(str(paths[0])) is None
    np.testing.assert_array_equal(read_file(paths[0])[0].hu, np.maximum(volume[0], -1024))


def test_undefined_length_sequences_are_skipped(tmp_path, monkeypatch):
    (ds,) = slice_datasets(head_volume(slices=1, size=16), (2, 1, 1), SeriesHeaders())
    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.2.3"
    nested = Dataset()
    nested.CodeValue = "T-A0100"
    nested.is_undefined_length_sequence_item = True
    item.is_undefined_length_sequence_item = True
    item.AnatomicRegionSequence = Sequence([nested])
    item["AnatomicRegionSequence"].is_undefined_length = True
    ds.ReferencedImageSequence = Sequence([item, item])
    ds["ReferencedImageSequence"].is_undefined_length = True
    ds.save_as(tmp_path / "seq.dcm", enforce_file_format=True)
    raw = (tmp_path / "seq.dcm").read_bytes()
    # pydicom writes sequences with undefined length by default: the marker must be in the file.
    assert b"\xfe\xff\xdd\xe0" in raw
    assert_same(*both_paths(tmp_path / "seq.dcm", monkeypatch))


def test_fast_path_declines_what_it_does_not_know(tmp_path):
    assert read_header(data_file("eCT_Supplemental.dcm")) is None  # functional groups
    assert read_header(data_file("emri_small_big_endian.dcm")) is None  # big endian
    (ds,) = slice_datasets(head_volume(slices=1, size=16), (2, 1, 1), SeriesHeaders())
    ds.SpecificCharacterSet = "ISO_IR 144"  # Cyrillic: pydicom decodes it, the fast path does not
    save(ds, tmp_path / "cyrillic.dcm")
    assert read_header(str(tmp_path / "cyrillic.dcm")) is None
    assert read_file(tmp_path / "cyrillic.dcm")[0].rows == 16  # pydicom reads it instead


def test_process_executor_matches_thread_executor(make_series):
    paths, volume, _ = make_series(head_volume(slices=16, size=32), transfer_syntax="jpegls")
    threads = scan(paths[0].parent, workers=2, executor="thread").series[0]
    processes = scan(paths[0].parent, workers=2, executor="process").series[0]
    np.testing.assert_array_equal(threads.hu, processes.hu)
    np.testing.assert_array_equal(processes.hu, np.maximum(volume, -1024))
    assert pydicom.dcmread(paths[0]).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.80"


def test_file_that_fails_only_when_decoded_in_a_worker(make_series):
    """A JPEG-LS codestream damaged mid-file passes the header pass and fails in the worker:
    the series is finished without it and the file is reported."""
    paths, volume, _ = make_series(head_volume(slices=5, size=32), transfer_syntax="jpegls")
    ds = pydicom.dcmread(paths[2])
    data = bytearray(ds.PixelData)
    data[40:-40] = b"\xff" * (len(data) - 80)
    ds.PixelData = bytes(data)
    ds.save_as(paths[2])
    series, rejected = parallel.scan_in_processes([str(p) for p in paths], 2, True)
    (only,) = series
    assert only.hu.shape == (4, 32, 32)
    np.testing.assert_array_equal(only.hu, np.maximum(np.delete(volume, 2, axis=0), -1024))
    assert [r.path for r in rejected] == [str(paths[2])] and rejected[0].kind == "bad"
    assert rejected[0] in only.rejected


def test_volumes_left_by_a_killed_scan_are_removed_by_the_next(tmp_path, caplog):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    orphan = tmp_path / f"{parallel.VOLUME_PREFIX}{dead_pid}-abc123"
    orphan.write_bytes(b"\0" * 1024)
    mine = tmp_path / f"{parallel.VOLUME_PREFIX}{os.getpid()}-def456"      # a scan of a live process
    mine.write_bytes(b"\0")
    other = tmp_path / "edge-agent-volume-notapid"
    other.write_bytes(b"\0")
    assert parallel.remove_orphan_volumes(str(tmp_path)) == [orphan.name]
    assert not orphan.exists() and mine.exists() and other.exists()
    assert "killed mid-scan" in caplog.text
    path, volume = parallel.shared_volume((2, 4, 4))
    try:
        assert os.path.basename(path).startswith(f"{parallel.VOLUME_PREFIX}{os.getpid()}-")
        assert volume.shape == (2, 4, 4)
    finally:
        os.unlink(path)
