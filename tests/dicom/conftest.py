"""Shared helpers for the DICOM tests: real test files, generated series, independent HU."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from edge_agent.dicom.synth import SeriesHeaders, write_series
from edge_agent.testing.volumes import head_volume

PHI = ("PHANTOM^HEAD", "PH0001", "19700101")


def data_file(name: str) -> str:
    """A file from pydicom's test files or the pydicom-data package (never downloads)."""
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is not installed (pydicom-data missing?)")
    return str(path)


def independent_hu(path: str) -> np.ndarray:
    """HU computed here from pydicom's decoder and the raw tags, not by the code under test.

    PS3.3 C.11.1.1.2: slope default 1, intercept default 0; padding (PS3.3
    C.7.5.1.1.2) and anything below -1024 → -1024.
    """
    ds = pydicom.dcmread(path)
    stored = ds.pixel_array.astype(np.float64)
    slope = float(ds.RescaleSlope) if "RescaleSlope" in ds else 1.0
    intercept = float(ds.RescaleIntercept) if "RescaleIntercept" in ds else 0.0
    hu = stored * slope + intercept
    if "PixelPaddingValue" in ds:
        pad = int(ds.PixelPaddingValue)
        if ds.PixelRepresentation == 1 and pad > 32767:
            pad -= 65536
        hu[ds.pixel_array == pad] = -1024.0
    return np.maximum(hu, -1024.0)


def dcmtk_jpeg_lossless(paths: list[Path]) -> None:
    """Transcode files in place to JPEG Lossless process 14 SV1 with DCMTK (pydicom has no encoder)."""
    if not shutil.which("dcmcjpeg"):
        pytest.skip("DCMTK dcmcjpeg is not installed")
    for p in paths:
        subprocess.run(["dcmcjpeg", "+e1", str(p), str(p)], check=True, capture_output=True)


@pytest.fixture
def make_series(tmp_path):
    """Write a generated series; returns (paths, volume, headers)."""
    counter = iter(range(1000))

    def make(volume=None, *, transfer_syntax="explicit", headers=None, spacing=(2.0, 0.8, 0.8),
             folder=None, **kwargs):
        volume = head_volume() if volume is None else volume
        headers = headers or SeriesHeaders()
        out = Path(folder) if folder else tmp_path / f"series{next(counter)}"
        if transfer_syntax == "jpeg-lossless":
            paths = write_series(volume, out, spacing, headers, transfer_syntax="explicit", **kwargs)
            dcmtk_jpeg_lossless(paths)
        else:
            paths = write_series(volume, out, spacing, headers, transfer_syntax=transfer_syntax, **kwargs)
        return paths, volume, headers

    return make
