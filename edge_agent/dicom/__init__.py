"""The DICOM layer: read one file, assemble series, Hounsfield units, geometry.

This package is the only place in edge-agent that imports pydicom.

- :func:`read_file` — one file → CT slices in HU (raises :class:`BadFile` /
  :class:`NotAnImage`); cheap enough to call per arriving file.
- :func:`assemble` — one series from its slices: dedupe, consistency, order
  along the slice normal, spacing, gaps, gantry tilt.
- :func:`read_series` — the contract: files/folders → ``list[Series]``.
- :func:`scan` — the same plus every file left out with its reason.

Decisions (see the docstrings for the rules and their DICOM sources):

- Only CT is analysed: CT Image, Enhanced CT and Legacy Converted Enhanced
  CT storage. Any other modality, secondary captures (even with Modality
  CT), localizers, ``DERIVED\\SECONDARY`` images, DICOMDIR/DIRFILE and
  non-image objects raise :class:`NotAnImage` (``kind="excluded"``).
- Frames of a multi-frame file get ``sop_instance_uid = f"{uid}.{frame+1}"``;
  single-frame files keep their UID.
- HU: slope 1 / intercept 0 when absent; padding (value or range) and
  anything below -1024 become -1024 (air), so vendor fill values such as
  -2000 stored (GE) or -1500 HU never reach a window.
- Duplicates (same SOP Instance UID): an identical resend is dropped, a
  changed one keeps the newest file (mtime); a second image at the same
  position, or a slice whose size/orientation/pixel spacing differs from the
  majority, is left out as ``inconsistent``.
- Gantry tilt (stack direction off the normal) is resampled onto the normal
  by a bilinear in-plane shear (``Series.tilt_corrected``), or only reported
  with ``scan(..., resample_tilt=False)``.
- ``ScanReport.rejected`` lists every file left out, including those also
  listed in their ``Series.rejected``.
- Headers are checked once, before any per-frame work (:mod:`limits`):
  only regular files are opened; missing or empty Study/Series/SOP
  Instance UIDs, Number of Frames < 1 and sizes the pixel data cannot
  hold are refused (``BadFile``) with a sentence; whatever else fails in
  a decoder — a Rust panic, deep recursion — becomes a ``BadFile`` too.
"""

from edge_agent.dicom.assembly import assemble
from edge_agent.dicom.model import (
    BadFile,
    DicomError,
    NotAnImage,
    Rejected,
    ScanReport,
    Series,
    Slice,
)
from edge_agent.dicom.reader import AIR_HU, read_file, to_hu
from edge_agent.dicom.series import iter_files, read_series, scan

__all__ = [
    "AIR_HU", "BadFile", "DicomError", "NotAnImage", "Rejected", "ScanReport", "Series", "Slice",
    "assemble", "iter_files", "read_file", "read_series", "scan", "to_hu",
]
