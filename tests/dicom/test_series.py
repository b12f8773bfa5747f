"""read_series / scan / assemble: grouping, order, spacing, tilt, bad files, duplicates."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from edge_agent.dicom import AIR_HU, assemble, read_file, read_series, scan
from edge_agent.dicom.synth import SeriesHeaders, save, slice_datasets

from edge_agent.testing.volumes import head_volume

from .conftest import PHI, data_file, independent_hu


def test_real_ge_series_sorted_by_position_not_instance_number():
    folder = Path(data_file("dicomdirtests/98892001/CT5N/2062")).parent
    (series,) = read_series(folder)
    datasets = [pydicom.dcmread(p) for p in sorted(folder.iterdir())]
    by_z = sorted(datasets, key=lambda ds: float(ds.ImagePositionPatient[2]))  # axial: normal is +z
    assert series.sop_instance_uids == [ds.SOPInstanceUID for ds in by_z]
    assert [int(ds.InstanceNumber) for ds in by_z] != sorted(int(ds.InstanceNumber) for ds in by_z)
    np.testing.assert_allclose(series.positions, [float(ds.ImagePositionPatient[2]) for ds in by_z])
    assert series.spacing == pytest.approx((2.5, 0.488281, 0.488281))
    for k, ds in enumerate(by_z):
        np.testing.assert_allclose(series.hu[k], independent_hu(ds.filename), atol=1e-3)
    assert series.hu.dtype == np.float32 and series.warnings == []


def test_enhanced_ct_frames_ordered_along_flipped_normal():
    (series,) = read_series(data_file("eCT_Supplemental.dcm"))
    # Orientation (-1,0,0 / 0,1,0): normal is -z, so frame 2 (z=-149) comes before frame 1 (z=-159).
    assert series.frames == [1, 0]
    np.testing.assert_allclose(series.positions, [149.0, 159.0])
    assert series.spacing[0] == pytest.approx(10.0)


def test_mixed_folder_groups_series_and_reports_every_other_file(tmp_path, make_series):
    a_paths, a_volume, a_headers = make_series(head_volume(slices=5, size=32), folder=tmp_path / "a")
    b_paths, _, _ = make_series(head_volume(slices=4, size=32, seed=2), folder=tmp_path / "b",
                                transfer_syntax="rle")
    shutil.copy(data_file("MR_small.dcm"), tmp_path / "mr.dcm")
    shutil.copy(data_file("dicomdirtests/98892001/CT2N/6293"), tmp_path / "scout")
    shutil.copy(data_file("dicomdirtests/DICOMDIR"), tmp_path / "DICOMDIR")
    (tmp_path / "readme.txt").write_text("exported by PACS")
    report = scan([tmp_path, tmp_path / "missing"])
    assert sorted(s.hu.shape[0] for s in report.series) == [4, 5]
    series_a = next(s for s in report.series if s.series_instance_uid == a_headers.series_instance_uid)
    np.testing.assert_array_equal(series_a.hu, np.maximum(a_volume, AIR_HU))
    reasons = {Path(r.path).name: (r.kind, r.reason) for r in report.rejected}
    assert reasons["mr.dcm"][0] == "excluded" and "only CT" in reasons["mr.dcm"][1]
    assert "localizer" in reasons["scout"][1]
    assert reasons["DICOMDIR"][0] == "excluded"
    assert reasons["readme.txt"][0] == "bad"
    assert reasons["missing"][0] == "bad"
    assert len(report.rejected) == 5


def test_one_bad_file_never_spoils_the_series(tmp_path, make_series):
    paths, volume, _ = make_series(head_volume(slices=8, size=48), transfer_syntax="explicit")
    with open(paths[3], "r+b") as fh:  # truncated mid-transfer
        fh.truncate(os.path.getsize(paths[3]) // 2)
    (series,) = read_series(paths[0].parent)
    assert series.hu.shape == (7, 48, 48)
    np.testing.assert_array_equal(series.hu, np.maximum(np.delete(volume, 3, axis=0), AIR_HU))
    (rejected,) = series.rejected
    assert rejected.path == str(paths[3]) and rejected.kind == "bad" and "truncated" in rejected.reason
    assert any("gap" in w and "1 slice" in w for w in series.warnings)


def test_mismatched_rows_columns_left_out_as_inconsistent(tmp_path, make_series):
    headers = SeriesHeaders()
    paths, volume, _ = make_series(head_volume(slices=4, size=32), headers=headers, folder=tmp_path / "s")
    odd = list(slice_datasets(head_volume(slices=5, size=24), (2.0, 0.8, 0.8), headers))[4]
    save(odd, tmp_path / "s" / "odd.dcm")
    (series,) = read_series(tmp_path / "s")
    assert series.hu.shape == (4, 32, 32)
    (rejected,) = series.rejected
    assert rejected.kind == "inconsistent" and "24x24" in rejected.reason


def test_duplicates_resends_and_files_without_extension(tmp_path, make_series):
    paths, volume, headers = make_series(head_volume(slices=4, size=32), folder=tmp_path / "s", extension="")
    assert all(p.suffix == "" for p in paths)
    shutil.copy(paths[1], tmp_path / "s" / "copy_of_2")  # identical resend under another name
    changed = pydicom.dcmread(paths[2])
    stored = np.frombuffer(changed.PixelData, "<u2").copy()
    stored[:] = 1024 + 77  # 77 HU everywhere
    changed.PixelData = stored.tobytes()
    time.sleep(0.01)
    save(changed, tmp_path / "s" / "zz_resend_of_3")
    future = time.time() + 5
    os.utime(tmp_path / "s" / "zz_resend_of_3", (future, future))
    report = scan(tmp_path / "s")
    (series,) = report.series
    assert series.hu.shape == (4, 32, 32)
    assert len(set(series.sop_instance_uids)) == 4
    assert np.all(series.hu[2] == 77.0)  # the newer image replaced the older one
    kinds = sorted(r.kind for r in series.rejected)
    assert kinds == ["duplicate", "duplicate"]
    assert any("resent with different pixels" in w for w in series.warnings)
    assert any("duplicate" in w for w in series.warnings)


def test_gap_and_uneven_spacing_reported(tmp_path):
    volume = head_volume(slices=8, size=16)
    datasets = list(slice_datasets(volume, (2.0, 1.0, 1.0), SeriesHeaders()))
    datasets[6].ImagePositionPatient = [-128.0, -128.0, 12.6]  # 12.0 expected
    for k, ds in enumerate(datasets):
        if k != 3:
            save(ds, tmp_path / f"{k}.dcm")
    (series,) = read_series(tmp_path)
    assert series.spacing[0] == pytest.approx(2.0)
    assert any(w.startswith("gap of 4.00 mm") for w in series.warnings)
    assert any(w.startswith("uneven slice spacing") for w in series.warnings)
    np.testing.assert_allclose(series.positions, [0, 2, 4, 8, 10, 12.6, 14])


def tilted_series(tmp_path: Path, tilt_deg: float) -> tuple[list[Path], np.ndarray, int]:
    """A stack acquired with gantry tilt: each slice's origin moves along the column direction.

    A rod fixed in patient space appears one row higher in every slice
    (dz * tan(tilt) / dy = 1 pixel); the shear-corrected volume has it on one row.
    """
    dz, dy = 2.0, 1.0
    volume = np.full((6, 32, 32), -1000.0, np.float32)
    rod_row = 20
    for k in range(6):
        volume[k, rod_row - k, 16] = 1000.0
    headers = SeriesHeaders(gantry_tilt=tilt_deg)
    paths = []
    for k, ds in enumerate(slice_datasets(volume, (dz, dy, 1.0), headers, origin=(0.0, 0.0, 0.0))):
        ds.ImagePositionPatient = [0.0, k * dz * np.tan(np.radians(tilt_deg)), k * dz]
        paths.append(save(ds, tmp_path / f"{k}.dcm"))
    return paths, volume, rod_row


def test_gantry_tilt_detected_and_resampled(tmp_path):
    tilt = float(np.degrees(np.arctan(0.5)))  # 26.57 degrees: one pixel per slice
    tilted_series(tmp_path, tilt)
    (series,) = read_series(tmp_path)
    assert series.gantry_tilt == pytest.approx(tilt, abs=0.05)
    assert series.tilt_corrected
    assert series.spacing[0] == pytest.approx(2.0)
    assert np.all(series.hu[:, 20, 16] == 1000.0)  # the rod is straight after correction
    assert series.hu[5, 15, 16] == -1000.0  # where the rod was before the shift
    assert np.all(series.hu[5, :5] == AIR_HU)  # rows shifted in from outside the field
    assert any("corrected" in w for w in series.warnings)


def test_gantry_tilt_reported_when_not_resampled(tmp_path):
    tilted_series(tmp_path, 15.0)
    report = scan(tmp_path, resample_tilt=False)
    (series,) = report.series
    assert not series.tilt_corrected and series.gantry_tilt == pytest.approx(15.0, abs=0.05)
    assert any("not corrected" in w for w in series.warnings)


def test_parallel_read_equals_serial(make_series):
    paths, volume, _ = make_series(head_volume(slices=20, size=32), transfer_syntax="jpegls")
    serial = read_series(paths[0].parent, workers=1)[0]
    parallel = read_series(paths[0].parent, workers=2)[0]
    np.testing.assert_array_equal(serial.hu, parallel.hu)
    np.testing.assert_array_equal(parallel.hu, np.maximum(volume, AIR_HU))
    assert serial.sop_instance_uids == parallel.sop_instance_uids


def test_assemble_public_api_keeps_inputs(make_series):
    paths, volume, _ = make_series(head_volume(slices=3, size=16))
    slices = [s for p in reversed(paths) for s in read_file(p)]
    series = assemble(slices)
    np.testing.assert_array_equal(series.hu, np.maximum(volume, AIR_HU))
    assert all(s.hu is not None for s in slices)
    with pytest.raises(ValueError):
        assemble([])


def test_series_carries_no_patient_identity(make_series):
    paths, _, _ = make_series(head_volume(slices=2, size=16))
    (series,) = read_series(paths[0].parent)
    text = repr({k: v for k, v in vars(series).items() if k != "hu"})
    assert not any(phi in text for phi in PHI)
    assert series.accession_number == "ACC0001" and series.body_part == "HEAD"
