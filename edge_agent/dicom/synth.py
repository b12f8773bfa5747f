"""Write CT volumes as DICOM series the way scanners do.

Used by the phantom generator, ``edge-agent simulate`` and the tests. The
files are classic CT Image Storage instances (PS3.3 A.3) with the headers a
real scanner writes: UIDs, Image Position/Orientation (Patient), Pixel
Spacing, Slice Thickness, Rescale Slope/Intercept, Body Part Examined,
descriptions and station. Pixels are stored as signed or unsigned 16-bit
integers; ``transfer_syntax`` selects any syntax pydicom can encode
(``Dataset.compress``).
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    generate_uid,
)

from edge_agent.dicom import uids

# Short names for the transfer syntaxes we write (PS3.5 Annex A, PS3.6 Table A-1).
TRANSFER_SYNTAXES = {
    "implicit": ImplicitVRLittleEndian,
    "explicit": ExplicitVRLittleEndian,
    "deflated": UID(uids.DEFLATED_EXPLICIT_VR_LE),
    "rle": UID(uids.RLE_LOSSLESS),
    "jpegls": UID(uids.JPEG_LS_LOSSLESS),
    "jpegls-near": UID(uids.JPEG_LS_NEAR_LOSSLESS),
    "j2k-lossless": UID(uids.JPEG_2000_LOSSLESS),
    "j2k": UID(uids.JPEG_2000),
}


@dataclass
class SeriesHeaders:
    """What a scanner writes around the pixels. Defaults look like a head CT."""

    patient_name: str = "PHANTOM^HEAD"
    patient_id: str = "PH0001"
    patient_birth_date: str = "19700101"
    patient_sex: str = "O"
    accession_number: str = "ACC0001"
    study_description: str = "CT HEAD WO CONTRAST"
    series_description: str = "HEAD 5mm STND"
    body_part: str = "HEAD"
    station_name: str = "PHANTOM-CT1"
    manufacturer: str = "edge-agent phantom"
    kvp: float = 120.0
    study_instance_uid: str = field(default_factory=generate_uid)
    series_instance_uid: str = field(default_factory=generate_uid)
    series_number: int = 2
    frame_of_reference_uid: str = field(default_factory=generate_uid)
    rescale_intercept: float = -1024.0
    rescale_slope: float = 1.0
    signed: bool = False
    padding_value: int | None = None
    window: tuple[float, float] = (40.0, 80.0)
    gantry_tilt: float = 0.0
    # Further attributes for every slice, by keyword: {"ConvolutionKernel": ["Hr40f", "3"], "PatientAge": "045Y"}
    extra: dict = field(default_factory=dict)


def slice_datasets(
    volume_hu: np.ndarray,
    spacing: tuple[float, float, float],
    headers: SeriesHeaders | None = None,
    *,
    origin: tuple[float, float, float] = (-128.0, -128.0, 0.0),
    orientation: tuple[float, ...] = (1, 0, 0, 0, 1, 0),
    outside_mask: np.ndarray | None = None,
    sop_instance_uids: list[str] | None = None,
) -> Iterator[Dataset]:
    """Yield one CT Image Storage dataset per slice of ``volume_hu`` (z, y, x).

    ``spacing`` is (z, y, x) in mm; slice ``k`` sits at ``origin + k*dz`` along
    the normal of ``orientation``. ``outside_mask`` (same shape) marks pixels
    outside the reconstruction field; they are stored as the padding value.
    """
    h = headers or SeriesHeaders()
    volume_hu = np.asarray(volume_hu, dtype=np.float32)
    n, rows, cols = volume_hu.shape
    dz, dy, dx = spacing
    row_cos = np.asarray(orientation[:3], float)
    col_cos = np.asarray(orientation[3:], float)
    normal = np.cross(row_cos, col_cos)
    now = _dt.datetime.now(_dt.timezone.utc)
    stored = np.round((volume_hu - h.rescale_intercept) / h.rescale_slope)
    if h.signed:
        stored = np.clip(stored, -32768, 32767).astype(np.int16)
    else:
        stored = np.clip(stored, 0, 65535).astype(np.uint16)
    if outside_mask is not None and h.padding_value is not None:
        stored[outside_mask] = h.padding_value
    for k in range(n):
        ds = Dataset()
        meta = FileMetaDataset()
        sop_uid = sop_instance_uids[k] if sop_instance_uids else generate_uid()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
        ds.Modality = "CT"
        ds.Manufacturer = h.manufacturer
        ds.StationName = h.station_name
        ds.StudyDescription = h.study_description
        ds.SeriesDescription = h.series_description
        ds.BodyPartExamined = h.body_part
        ds.PatientName = h.patient_name
        ds.PatientID = h.patient_id
        ds.PatientBirthDate = h.patient_birth_date
        ds.PatientSex = h.patient_sex
        ds.AccessionNumber = h.accession_number
        ds.StudyInstanceUID = h.study_instance_uid
        ds.SeriesInstanceUID = h.series_instance_uid
        ds.FrameOfReferenceUID = h.frame_of_reference_uid
        ds.StudyID = "1"
        ds.SeriesNumber = h.series_number
        ds.InstanceNumber = k + 1
        ds.KVP = h.kvp
        ds.SliceThickness = float(dz)
        ds.GantryDetectorTilt = float(h.gantry_tilt)
        position = np.asarray(origin, float) + k * dz * normal
        ds.ImagePositionPatient = [round(float(v), 4) for v in position]
        ds.ImageOrientationPatient = [float(v) for v in orientation]
        ds.SliceLocation = round(float(np.dot(position, normal)), 4)
        ds.PixelSpacing = [float(dy), float(dx)]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = rows, cols
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1 if h.signed else 0
        ds.RescaleIntercept = h.rescale_intercept
        ds.RescaleSlope = h.rescale_slope
        ds.RescaleType = "HU"
        ds.WindowCenter, ds.WindowWidth = h.window
        if h.padding_value is not None:
            ds.PixelPaddingValue = int(h.padding_value)
        for keyword, value in h.extra.items():
            setattr(ds, keyword, value)
        ds.PixelData = stored[k].tobytes()
        yield ds


def encode(ds: Dataset, transfer_syntax: str) -> Dataset:
    """Re-encode ``ds`` in place into a short-named transfer syntax."""
    uid = TRANSFER_SYNTAXES[transfer_syntax]
    if transfer_syntax in ("implicit", "explicit", "deflated"):
        ds.file_meta.TransferSyntaxUID = uid
    elif transfer_syntax == "jpegls-near":
        ds.compress(uid, jls_error=2)
    elif transfer_syntax == "j2k":
        ds.compress(uid, j2k_cr=[20])
    else:
        ds.compress(uid)
    return ds


def save(ds: Dataset, path: str | Path) -> Path:
    """Write a dataset as a DICOM Part 10 file (preamble + meta)."""
    path = Path(path)
    ds.save_as(path, enforce_file_format=True)  # encoding follows file_meta's syntax
    return path


def write_series(
    volume_hu: np.ndarray,
    out_dir: str | Path,
    spacing: tuple[float, float, float] = (5.0, 0.5, 0.5),
    headers: SeriesHeaders | None = None,
    *,
    transfer_syntax: str = "explicit",
    extension: str = ".dcm",
    **kwargs,
) -> list[Path]:
    """Write a whole volume as one series; returns the file paths in slice order."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, ds in enumerate(slice_datasets(volume_hu, spacing, headers, **kwargs)):
        encode(ds, transfer_syntax)
        paths.append(save(ds, out / f"IM{k + 1:05d}{extension}"))
    return paths
