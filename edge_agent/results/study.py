"""What a results object must copy from the original study to belong to it.

An SR or a Key Object Selection sits in the patient's study only if it carries
the same Patient and General Study modules as the images (PS3.3 C.7.1.1,
C.7.2.1): Patient Name and ID *must* be copied there. They are read here, from
the header of one original file, and nowhere else in the agent; a
:class:`StudyHeader` never shows them (its ``repr`` names no value), and no
log line, payload or exception text is built from it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from pydicom import dcmread
from pydicom.dataset import Dataset

from edge_agent.errors import EdgeAgentError

#: Patient module (C.7.1.1) and General Study module (C.7.2.1) attributes copied into our objects.
PATIENT_STUDY_KEYWORDS = (
    "SpecificCharacterSet",
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
    "PatientIdentityRemoved", "DeidentificationMethod",
    "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
    "StudyDescription",
)
#: Type 2 attributes every SR/KO must have, empty when the original lacks them (PS3.3 C.7.1.1, C.7.2.1).
TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
         "ReferringPhysicianName", "StudyID", "AccessionNumber")
_IMAGE_KEYWORDS = ("SOPClassUID", "NumberOfFrames", "Rows", "Columns", "SeriesInstanceUID")


class StudyHeaderError(EdgeAgentError):
    """The original study's header cannot be read."""


@dataclass(repr=False)
class StudyHeader:
    """The original study's patient/study attributes, and the image class of its series.

    ``sop_class_uid``, ``frames``, ``rows`` and ``columns`` describe the series' images (from the file
    read): they let a reference name the right SOP class and, for a multi-frame image, the frame.
    """

    dataset: Dataset = field(default_factory=Dataset)
    sop_class_uid: str = ""
    frames: int = 1
    rows: int = 0
    columns: int = 0

    def __repr__(self) -> str:  # never the values: they are patient data
        return f"StudyHeader(<{len(self.dataset)} patient/study attributes, not shown>, sop_class={self.sop_class_uid})"

    __str__ = __repr__

    @property
    def study_instance_uid(self) -> str:
        return str(self.dataset.get("StudyInstanceUID", ""))

    def evidence(self, series_instance_uid: str, sop_instance_uid: str) -> Dataset:
        """A header-only dataset of one original image: what highdicom takes as evidence and copies from."""
        ds = Dataset()
        for element in self.dataset:
            ds.add(element)
        for keyword in TYPE2:
            if keyword not in ds:
                setattr(ds, keyword, "")
        ds.SeriesInstanceUID = series_instance_uid
        ds.SOPInstanceUID = sop_instance_uid
        ds.SOPClassUID = self.sop_class_uid
        ds.Modality = "CT"
        if self.rows and self.columns:  # an IMAGE reference (not COMPOSITE) in a Key Object Selection
            ds.Rows, ds.Columns = self.rows, self.columns
        return ds


def read_study_header(path: str | os.PathLike) -> StudyHeader:
    """The patient/study attributes of the file at ``path`` (header only, no pixels).

    Raises :class:`StudyHeaderError` with a sentence that names the file, never a value from it.
    """
    try:
        ds = dcmread(os.fspath(path), stop_before_pixels=True,
                     specific_tags=[*PATIENT_STUDY_KEYWORDS, *_IMAGE_KEYWORDS])
    except Exception as exc:  # noqa: BLE001 - any failure is one sentence; pydicom raises many types
        raise StudyHeaderError(f"The study header of {os.fspath(path)} cannot be read ({type(exc).__name__}), so no "
                               "DICOM result can be built for its series.") from None
    kept = Dataset()
    for keyword in PATIENT_STUDY_KEYWORDS:
        if keyword in ds:
            kept.add(ds.data_element(keyword))
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        frames = 1
    sop_class = str(ds.get("SOPClassUID", "") or ds.file_meta.get("MediaStorageSOPClassUID", ""))
    return StudyHeader(kept, sop_class, max(frames, 1), int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0))
