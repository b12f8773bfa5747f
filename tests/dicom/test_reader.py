"""read_file: transfer syntaxes, HU, Enhanced CT, exclusions and bad files."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pydicom
import pytest

from edge_agent.dicom import AIR_HU, BadFile, NotAnImage, read_file
from edge_agent.dicom.synth import SeriesHeaders, save, slice_datasets

from edge_agent.testing.volumes import head_volume

from .conftest import PHI, data_file, independent_hu


def expected_hu(volume: np.ndarray) -> np.ndarray:
    return np.maximum(volume, AIR_HU)


# --- real files -------------------------------------------------------------------------------

def test_ct_small_hu_matches_independent_computation():
    path = data_file("CT_small.dcm")
    (s,) = read_file(path)
    assert s.hu.dtype == np.float32 and s.hu.shape == (128, 128)
    np.testing.assert_allclose(s.hu, independent_hu(path), atol=1e-3)
    assert s.modality == "CT" and s.rows == 128
    np.testing.assert_allclose(s.position, [-158.135803, -179.035797, -75.699997])


def test_ge_512_padding_becomes_air_in_explicit_and_j2k_lossless():
    uncompressed, j2k = data_file("693_UNCR.dcm"), data_file("693_J2KR.dcm")
    (a,), (b,) = read_file(uncompressed), read_file(j2k)
    reference = independent_hu(uncompressed)
    np.testing.assert_allclose(a.hu, reference, atol=1e-3)
    np.testing.assert_array_equal(a.hu, b.hu)  # lossless: identical
    raw = pydicom.dcmread(uncompressed).pixel_array
    padded = raw == -2000
    assert padded.mean() > 0.2  # the real file pads ~21 % of its pixels
    assert np.all(a.hu[padded] == AIR_HU)
    assert a.hu.min() == AIR_HU


def test_j2k_lossy_real_file_matches_its_decompressed_twin():
    # 693_J2KI (lossy, DERIVED\PRIMARY) and 693_UNCI share their SOP Instance UID: UNCI is the decoded image.
    (lossy,) = read_file(data_file("693_J2KI.dcm"))
    reference = independent_hu(data_file("693_UNCI.dcm"))
    np.testing.assert_allclose(lossy.hu, reference, atol=1.0)
    assert lossy.sop_instance_uid == pydicom.dcmread(data_file("693_UNCI.dcm")).SOPInstanceUID


def test_enhanced_ct_uses_functional_groups():
    path = data_file("eCT_Supplemental.dcm")
    ds = pydicom.dcmread(path)
    shared = ds.SharedFunctionalGroupsSequence[0]
    slope = float(shared.PixelValueTransformationSequence[0].RescaleSlope)
    intercept = float(shared.PixelValueTransformationSequence[0].RescaleIntercept)
    raw = np.frombuffer(ds.PixelData, dtype="<u2").reshape(2, 512, 512).astype(np.float64)
    slices = read_file(path)
    assert [s.frame for s in slices] == [0, 1]
    assert [s.sop_instance_uid for s in slices] == [f"{ds.SOPInstanceUID}.1", f"{ds.SOPInstanceUID}.2"]
    for k, s in enumerate(slices):
        np.testing.assert_allclose(s.hu, np.maximum(raw[k] * slope + intercept, -1024), atol=1e-3)
        expected_pos = [float(v) for v in ds.PerFrameFunctionalGroupsSequence[k].PlanePositionSequence[0]
                        .ImagePositionPatient]
        np.testing.assert_allclose(s.position, expected_pos)
        assert s.pixel_spacing == (0.388672, 0.388672) and s.slice_thickness == 10.0
    np.testing.assert_allclose(slices[0].orientation, [-1, 0, 0, 0, 1, 0])
    assert "RescaleSlope" not in ds  # so a top-level-only reader would get this wrong


# --- generated series in every transfer syntax ---------------------------------------------------

LOSSLESS = ["implicit", "explicit", "deflated", "rle", "jpeg-lossless", "jpegls", "j2k-lossless"]


@pytest.mark.parametrize("syntax", LOSSLESS)
@pytest.mark.parametrize("signed", [True, False])
def test_lossless_syntaxes_give_exact_hu(make_series, syntax, signed):
    volume = head_volume(slices=3, size=40)
    headers = SeriesHeaders(signed=signed, rescale_intercept=-1024.0)
    paths, volume, _ = make_series(volume, transfer_syntax=syntax, headers=headers)
    wanted = pydicom.dcmread(paths[0], stop_before_pixels=True).file_meta.TransferSyntaxUID
    for k, p in enumerate(paths):
        (s,) = read_file(p)
        assert s.transfer_syntax == wanted
        np.testing.assert_array_equal(s.hu, expected_hu(volume[k]))


def test_lossy_syntaxes_within_stated_tolerance(make_series):
    """JPEG-LS near-lossless (NEAR=2) guarantees |error| <= 2; JPEG 2000 at 20:1 on a noisy
    phantom: mean |error| < 30 HU and 99th percentile < 150 HU."""
    paths, volume, _ = make_series(head_volume(slices=1, size=40), transfer_syntax="jpegls-near")
    (s,) = read_file(paths[0])
    assert np.abs(s.hu - expected_hu(volume[0])).max() <= 2.0
    paths, volume, _ = make_series(head_volume(slices=1, size=128), transfer_syntax="j2k")
    (s,) = read_file(paths[0])
    error = np.abs(s.hu - expected_hu(volume[0]))
    assert s.transfer_syntax == "1.2.840.10008.1.2.4.91"
    assert error.mean() < 30 and np.percentile(error, 99) < 150


def test_slope_intercept_defaults_and_scaling(tmp_path):
    volume = head_volume(slices=2, size=32)
    headers = SeriesHeaders(signed=True, rescale_slope=0.5, rescale_intercept=-1000.0)
    datasets = list(slice_datasets(volume, (2, 1, 1), headers))
    save(datasets[0], tmp_path / "scaled.dcm")
    del datasets[1].RescaleSlope, datasets[1].RescaleIntercept  # stored values are HU now: (v+1000)*2
    save(datasets[1], tmp_path / "defaults.dcm")
    (scaled,) = read_file(tmp_path / "scaled.dcm")
    (defaults,) = read_file(tmp_path / "defaults.dcm")
    np.testing.assert_allclose(scaled.hu, expected_hu(volume[0]), atol=0.5)
    stored = np.round((volume[1] + 1000.0) / 0.5)
    np.testing.assert_array_equal(defaults.hu, np.maximum(stored, AIR_HU))


def test_padding_above_air_and_range_limit(tmp_path):
    volume = head_volume(slices=1, size=32)
    outside = np.zeros(volume.shape, bool)
    outside[:, :4, :] = True
    # Unsigned storage, intercept 0: padding 65535 would be 65535 HU without the padding rule.
    headers = SeriesHeaders(signed=False, rescale_intercept=0.0, padding_value=65535)
    (ds,) = slice_datasets(np.maximum(volume, 0), (2, 1, 1), headers, outside_mask=outside)
    save(ds, tmp_path / "pad.dcm")
    (s,) = read_file(tmp_path / "pad.dcm")
    assert np.all(s.hu[:4] == AIR_HU) and s.hu.max() < 5000
    ds.PixelPaddingValue = 65000
    ds.PixelPaddingRangeLimit = 65535
    save(ds, tmp_path / "range.dcm")
    (s,) = read_file(tmp_path / "range.dcm")
    assert np.all(s.hu[:4] == AIR_HU)


def test_unused_high_bits_are_ignored(tmp_path):
    volume = head_volume(slices=1, size=32)
    (ds,) = slice_datasets(volume, (2, 1, 1), SeriesHeaders(signed=True, rescale_intercept=0.0))
    stored = np.frombuffer(ds.PixelData, "<i2").copy()
    ds.BitsStored, ds.HighBit = 12, 11
    junk = (stored.view("<u2") & 0x0FFF) | 0xA000  # overlay bits set above High Bit
    ds.PixelData = junk.astype("<u2").tobytes()
    save(ds, tmp_path / "bits.dcm")
    (s,) = read_file(tmp_path / "bits.dcm")
    np.testing.assert_array_equal(s.hu, np.maximum(volume[0], AIR_HU))


def test_decode_false_checks_without_pixels(make_series):
    paths, _, _ = make_series(head_volume(slices=1, size=32))
    (header,) = read_file(paths[0], decode=False)
    (full,) = read_file(paths[0])
    assert header.hu is None and full.hu is not None
    assert header.content_hash == full.content_hash


def test_no_patient_identity_in_slices(make_series):
    paths, _, _ = make_series(head_volume(slices=1, size=32))
    (s,) = read_file(paths[0])
    text = repr({k: v for k, v in vars(s).items() if k not in ("hu", "stored")})
    assert not any(phi in text for phi in PHI)


# --- left out on purpose ------------------------------------------------------------------------

@pytest.mark.parametrize("name,words", [
    ("MR_small.dcm", "only CT"),
    ("JPEG-LL.dcm", "secondary capture"),
    ("liver.dcm", "non-image"),
    ("dicomdirtests/DICOMDIR", "media index"),
    ("dicomdirtests/98892001/CT2N/6293", "localizer"),
])
def test_real_files_we_leave_out(name, words):
    with pytest.raises(NotAnImage) as info:
        read_file(data_file(name))
    assert words in info.value.reason and "\n" not in str(info.value)


def test_derived_secondary_dirfile_and_sr_left_out(tmp_path, make_series):
    paths, _, _ = make_series(head_volume(slices=1, size=16))
    ds = pydicom.dcmread(paths[0])
    ds.ImageType = ["DERIVED", "SECONDARY", "MPR"]
    save(ds, tmp_path / "mpr.dcm")
    with pytest.raises(NotAnImage, match="DERIVED"):
        read_file(tmp_path / "mpr.dcm")
    shutil.copy(paths[0], tmp_path / "DIRFILE")
    with pytest.raises(NotAnImage, match="media index"):
        read_file(tmp_path / "DIRFILE")
    ds = pydicom.dcmread(paths[0])
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.22"  # Enhanced SR
    del ds.PixelData
    save(ds, tmp_path / "sr.dcm")
    with pytest.raises(NotAnImage, match="non-image"):
        read_file(tmp_path / "sr.dcm")


# --- bad files ----------------------------------------------------------------------------------

def one_sentence(err: BadFile) -> None:
    assert isinstance(err, BadFile) and err.reason and "\n" not in str(err) and "Traceback" not in str(err)


def test_not_dicom(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(BadFile, match="not a DICOM") as info:
        read_file(tmp_path / "notes.txt")
    one_sentence(info.value)


@pytest.mark.parametrize("syntax", ["explicit", "j2k-lossless", "rle"])
def test_truncated_files(make_series, syntax):
    paths, _, _ = make_series(head_volume(slices=1, size=64), transfer_syntax=syntax)
    size = os.path.getsize(paths[0])
    with open(paths[0], "r+b") as fh:
        fh.truncate(size - 1500)
    with pytest.raises(BadFile) as info:
        read_file(paths[0])
    one_sentence(info.value)
    assert any(w in info.value.reason for w in ("truncated", "no pixel data", "could not be decoded"))


def test_truncated_uncompressed_caught_without_decoding(make_series):
    paths, _, _ = make_series(head_volume(slices=1, size=64))
    with open(paths[0], "r+b") as fh:
        fh.truncate(os.path.getsize(paths[0]) - 100)
    with pytest.raises(BadFile, match="truncated"):
        read_file(paths[0], decode=False)


def test_no_pixel_data_and_undecodable_syntax(tmp_path, make_series):
    paths, _, _ = make_series(head_volume(slices=1, size=16), transfer_syntax="rle")
    ds = pydicom.dcmread(paths[0])
    series_uid = ds.SeriesInstanceUID
    del ds.PixelData
    save(ds, tmp_path / "nopixels.dcm")
    with pytest.raises(BadFile, match="no pixel data") as info:
        read_file(tmp_path / "nopixels.dcm")
    assert info.value.series_instance_uid == series_uid
    ds = pydicom.dcmread(paths[0])
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no decoder for it
    ds.save_as(tmp_path / "mpeg.dcm")
    with pytest.raises(BadFile) as info:
        read_file(tmp_path / "mpeg.dcm")
    one_sentence(info.value)
    assert "decoder" in info.value.reason or "could not be decoded" in info.value.reason


def test_real_jpeg_lossless_process14_bitstream(tmp_path):
    """pydicom-data has no CT in JPEG Lossless: carry GE's real process-14 SV1 bitstream (JPEG-LL.dcm,
    16-bit signed NM) into a CT header and compare with pydicom's decode of the original file."""
    original = data_file("JPEG-LL.dcm")
    ds = pydicom.dcmread(original)
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.Modality, ds.ImageType = "CT", ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, 0], [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing, ds.RescaleSlope, ds.RescaleIntercept = [0.5, 0.5], 2, -100
    ds.save_as(tmp_path / "ct_jpeg_ll.dcm")
    (s,) = read_file(tmp_path / "ct_jpeg_ll.dcm")
    reference = pydicom.dcmread(original).pixel_array.astype(np.float64) * 2 - 100
    np.testing.assert_array_equal(s.hu, np.maximum(reference, AIR_HU))
    assert s.hu.shape == (1024, 256) and s.hu.max() > 400 and s.hu.min() == -100


@pytest.mark.parametrize("name", ["CT_small.dcm", "693_J2KR.dcm"], ids=["native", "j2k"])
def test_stored_only_keeps_stored_values_rescale_and_hash(name):
    path = data_file(name)
    (full,) = read_file(path)
    (kept,) = read_file(path, stored_only=True)
    assert kept.hu is None and kept.stored.dtype == np.int16
    np.testing.assert_array_equal(kept.stored, pydicom.dcmread(path).pixel_array)
    assert kept.content_hash and kept.content_hash == full.content_hash   # dedup of resends still works
    slope, intercept, padding = kept.rescale
    assert slope == 1.0 and intercept == -1024.0 and padding == (-2000, -2000)
    np.testing.assert_array_equal(kept.hu_pixels(), full.hu)
    kept.drop_pixels()
    assert kept.hu is None and kept.stored is None and kept.hu_pixels() is None
