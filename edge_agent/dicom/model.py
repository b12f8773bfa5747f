"""Data objects of the DICOM layer: errors, one decoded slice, one series.

None of these objects carries patient name, ID, birth date or sex: the
reader never copies those attributes out of a dataset. Patient Age is kept
(``patient_age``, out of every repr) for the applicability age rule only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from edge_agent.errors import EdgeAgentError
from edge_agent.hu import to_hu

RejectKind = Literal["bad", "excluded", "duplicate", "inconsistent"]


class DicomError(EdgeAgentError):
    """A file that cannot become part of a series; ``str(err)`` is ``"{path}: {reason}"``.

    ``reason`` is one sentence. ``series_instance_uid`` is filled when the
    header could be read (so a series can list the files it left out).
    """

    kind: RejectKind = "bad"

    def __init__(self, path: str, reason: str, series_instance_uid: str = "") -> None:
        super().__init__(path, reason, series_instance_uid)
        self.path = path
        self.reason = reason
        self.series_instance_uid = series_instance_uid

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"

    def to_rejected(self) -> "Rejected":
        """The same verdict as a plain record for reports."""
        return Rejected(self.path, self.reason, self.kind, self.series_instance_uid)


class BadFile(DicomError):
    """Not DICOM, truncated, no pixel data, undecodable transfer syntax, inconsistent header."""

    kind: RejectKind = "bad"


class NotAnImage(DicomError):
    """Valid DICOM deliberately left out.

    DICOMDIR/DIRFILE media indexes, localizers (ImageType ``…\\LOCALIZER``),
    ``DERIVED\\SECONDARY`` images, secondary captures (exam summaries tagged
    CT), non-image objects (SR, RT, SEG, KO, PR …) and images of any modality
    other than CT (the agent's models are CT models; an MR or CR image is not
    an error, just not ours).
    """

    kind: RejectKind = "excluded"


@dataclass
class Rejected:
    """A file (or frame) left out, with one sentence saying why."""

    path: str
    reason: str
    kind: RejectKind = "bad"
    series_instance_uid: str = ""


@dataclass
class Slice:
    """One decoded 2-D image: a classic file, or one frame of an Enhanced CT file.

    ``sop_instance_uid`` is the file's SOP Instance UID for single-frame files
    and ``f"{uid}.{frame + 1}"`` for frames of a multi-frame file (unique per
    frame; not a registered UID, only a key).
    ``hu`` is float32 Hounsfield units with padding and outside-field pixels
    set to -1024 (``None`` when read with ``decode=False``).
    ``content_hash`` hashes the stored (possibly compressed) pixel bytes: an
    identical resend has the same hash, a changed image a different one.
    """

    path: str
    frame: int
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    accession_number: str
    modality: str
    series_description: str
    study_description: str
    body_part: str
    image_type: tuple[str, ...]
    position: np.ndarray
    orientation: np.ndarray
    pixel_spacing: tuple[float, float]
    slice_thickness: float | None
    gantry_tilt: float
    rows: int
    columns: int
    hu: np.ndarray | None
    content_hash: str
    transfer_syntax: str = ""
    mtime: float = 0.0
    instance_number: int | None = None
    # Stored values and (slope, intercept, padding) kept when read with
    # ``defer_hu=True`` (assemble() converts them straight into the volume) or
    # ``stored_only=True`` (the agent's pipeline).
    stored: np.ndarray | None = field(default=None, repr=False)
    rescale: tuple | None = field(default=None, repr=False)
    # Acquisition and reconstruction header fields the applicability rules
    # read (edge_agent.inference.applicability); None when absent.
    manufacturer: str | None = None
    manufacturer_model: str | None = None
    convolution_kernel: tuple[str, ...] | None = None
    contrast_agent: str | None = None
    contrast_route: str | None = None
    cardiac_sync: str | None = None
    trigger_time: float | None = None
    kvp: float | None = None
    protocol_name: str | None = None
    reconstruction_diameter: float | None = None
    # PatientAge (AS, e.g. "045Y") is for the age rule only: never printed,
    # published or logged (repr=False keeps it out of every repr too).
    patient_age: str | None = field(default=None, repr=False)

    def hu_pixels(self) -> np.ndarray | None:
        """HU of this slice: ``hu``, else converted from ``stored`` (None when neither is kept)."""
        if self.hu is not None:
            return self.hu
        if self.stored is None or self.rescale is None:
            return None
        return to_hu(self.stored, *self.rescale)

    def drop_pixels(self) -> None:
        """Forget the pixels (HU and stored values); the header fields stay."""
        self.hu = self.stored = None


@dataclass
class Series:
    """One CT series as a volume, ordered along the slice normal (lowest first).

    ``hu`` is float32 ``(slices, rows, cols)``; ``positions`` are mm along the
    normal ``cross(row_cosines, col_cosines)`` (PS3.3 C.7.6.2.1.1);
    ``spacing`` is ``(z, y, x)`` mm with z the median of all position
    differences. ``warnings`` lists gaps, uneven spacing, gantry tilt and
    dropped duplicates; ``rejected`` the files of this series left out.
    """

    series_instance_uid: str
    study_instance_uid: str
    sop_instance_uids: list[str]
    hu: np.ndarray
    positions: np.ndarray
    spacing: tuple[float, float, float]
    modality: str = "CT"
    body_part: str = ""
    series_description: str = ""
    study_description: str = ""
    accession_number: str = ""
    slice_thickness: float | None = None
    orientation: np.ndarray = field(default_factory=lambda: np.array([1.0, 0, 0, 0, 1, 0]))
    pixel_spacing: tuple[float, float] = (1.0, 1.0)
    gantry_tilt: float = 0.0
    tilt_corrected: bool = False
    warnings: list[str] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    frames: list[int] = field(default_factory=list)
    origin: np.ndarray | None = None  # ImagePositionPatient of the first slice after sorting
    # Header fields of the first slice (see Slice); patient_age is for the age rule only.
    manufacturer: str | None = None
    manufacturer_model: str | None = None
    convolution_kernel: tuple[str, ...] | None = None
    contrast_agent: str | None = None
    contrast_route: str | None = None
    cardiac_sync: str | None = None
    trigger_time: float | None = None
    kvp: float | None = None
    protocol_name: str | None = None
    reconstruction_diameter: float | None = None
    patient_age: str | None = field(default=None, repr=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(slices, rows, cols) of ``hu``."""
        return tuple(self.hu.shape)  # type: ignore[return-value]


@dataclass
class ScanReport:
    """Everything found under some paths: the series, and every file left out with its reason."""

    series: list[Series]
    rejected: list[Rejected]
