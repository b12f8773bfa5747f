"""The optional secondary-capture image of a positive result: the key slice, its region marked, the words burnt in.

For a PACS or viewer that shows neither SR content nor key-object flags, one
picture says it: the key slice in the model's preview window (the same
thumbnail as the MQTT preview — pixels from Hounsfield units only, nothing
from the original's overlays or burnt-in text), enlarged to at least
:data:`MIN_SIDE` pixels, a red frame around the evidence region where the
model's evidence located one on that slice, and two bands of text: above, the
finding, its probability and the model; below, that this is an AI result and,
for a model trained on synthetic data, the disclaimer. **No patient
attribute is ever drawn**: the words are built from the finding code, label,
probability, model name and version only.

The object (SC Image Storage, PS3.3 A.8.1) is built with highdicom
(``highdicom.sc.SCImage``) in the original study, its own series, with
Burned In Annotation YES (the text is in the pixels: a de-identifying archive
must treat it as such — it holds no PHI, but the flag tells the truth about
the pixels), Recognizable Visual Features NO, the source image referenced
(Source Image Sequence), and a UID derived like the SR's and KOS's.
"""

from __future__ import annotations

import datetime as dt

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from edge_agent import __version__
from edge_agent.results.content import ModelResult
from edge_agent.results.sr import MANUFACTURER, key_reference, pin_times
from edge_agent.results.study import StudyHeader

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
SC_SERIES_NUMBER = 9904
MIN_SIDE = 512           # the picture's longer side at least this (a thumbnail is enlarged, never cropped)
_BAND = 0.1              # each text band: this fraction of the picture's height (at least 3 lines of text)
_RED = (255, 40, 40)
_YELLOW = (255, 220, 0)


def patient_orientation(orientation) -> tuple[str, str]:
    """(row, column) direction letters of an Image Orientation (Patient) (PS3.3 C.7.6.1.1.1), e.g. ("L", "P")."""
    def letter(v) -> str:
        axis = int(np.argmax(np.abs(v)))
        return ("L", "P", "H")[axis] if v[axis] >= 0 else ("R", "A", "F")[axis]

    o = np.asarray(orientation, float)
    if o.shape != (6,) or not np.all(np.isfinite(o)) or not o[:3].any() or not o[3:].any():
        return "L", "P"   # an axial slice, when the header gave nothing usable
    return letter(o[:3]), letter(o[3:])


def caption(result: ModelResult) -> tuple[list[str], list[str]]:
    """(top lines, bottom lines) burnt into the picture: finding, probability, model; AI result, disclaimer."""
    a = result.algorithm
    top = [f"{f['label']}: POSITIVE  p={f['probability']:.2f}" for f in result.findings if f["positive"]]
    top.append(f"AI model {a.name} {a.version} (edge-agent {__version__})")
    bottom = ["AI triage result - key slice; region marked in red - not a diagnosis"]
    if a.synthetic_training:
        bottom.append("Model trained on synthetic phantoms only - not for clinical use")
    return top, bottom


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)   # Pillow >= 10.1: a scalable font
    except TypeError:
        return ImageFont.load_default()


def render(image: np.ndarray, result: ModelResult, boxes=()) -> np.ndarray:
    """The RGB picture (uint8, rows x columns x 3): ``image`` (grey uint8) enlarged, ``boxes`` framed in red
    (``(r0, c0, r1, c1)`` in ``image``'s pixels), the caption in a band above and below."""
    from PIL import Image, ImageDraw

    grey = np.ascontiguousarray(image, np.uint8)
    scale = max(1.0, MIN_SIDE / max(grey.shape))
    height, width = round(grey.shape[0] * scale), round(grey.shape[1] * scale)
    slice_image = Image.fromarray(grey, mode="L").resize((width, height), Image.Resampling.BICUBIC).convert("RGB")
    band = max(48, round(_BAND * height))
    canvas = Image.new("RGB", (width, height + 2 * band), (0, 0, 0))
    canvas.paste(slice_image, (0, band))
    draw = ImageDraw.Draw(canvas)
    line = max(12, band // 3 - 2)
    font = _font(line)
    margin = max(4, round(0.03 * min(width, height)))
    for r0, c0, r1, c1 in boxes:
        x0, y0 = c0 * scale - margin, band + r0 * scale - margin
        x1, y1 = c1 * scale + margin, band + r1 * scale + margin
        draw.rectangle([max(0, x0), max(band, y0), min(width - 1, x1), min(band + height - 1, y1)],
                       outline=_RED, width=max(2, round(scale)))
    top, bottom = caption(result)
    for i, text in enumerate(top[:3]):
        draw.text((6, 2 + i * (line + 2)), text, fill=_YELLOW, font=font)
    for i, text in enumerate(bottom[:3]):
        draw.text((6, band + height + 2 + i * (line + 2)), text, fill=_YELLOW, font=font)
    return np.asarray(canvas, np.uint8)


def build_capture(result: ModelResult, header: StudyHeader, *, key_sop_instance_uid: str, image: np.ndarray,
                  orientation=(), boxes=(), revision: int, site: str, device: str,
                  decided_at: float) -> hd.sc.SCImage:
    """The secondary capture of ``result``'s key slice ``key_sop_instance_uid`` (``image``: its grey thumbnail)."""
    del site, device  # the picture names no place: the SR's observer does
    pixels = render(image, result, boxes)
    d = header.dataset
    when = dt.datetime.fromtimestamp(decided_at)
    sc = hd.sc.SCImage(
        pixel_array=pixels, photometric_interpretation="RGB", bits_allocated=8, coordinate_system="PATIENT",
        patient_orientation=patient_orientation(orientation),
        study_instance_uid=header.study_instance_uid, series_instance_uid=result.uid("sc-series"),
        series_number=SC_SERIES_NUMBER, sop_instance_uid=result.uid("sc", revision), instance_number=revision,
        manufacturer=MANUFACTURER, patient_id=d.get("PatientID"), patient_name=d.get("PatientName"),
        patient_birth_date=d.get("PatientBirthDate"), patient_sex=d.get("PatientSex") or None,
        accession_number=d.get("AccessionNumber"), study_id=d.get("StudyID"), study_date=d.get("StudyDate"),
        study_time=d.get("StudyTime"), referring_physician_name=d.get("ReferringPhysicianName"),
        transfer_syntax_uid=ExplicitVRLittleEndian)
    for keyword in ("SpecificCharacterSet", "IssuerOfPatientID", "PatientIdentityRemoved", "DeidentificationMethod",
                    "StudyDescription"):
        if keyword in d:
            setattr(sc, keyword, d.data_element(keyword).value)
    if result.body_part.strip():  # Laterality (Type 2C) is then for paired parts only: left out, not guessed
        sc.BodyPartExamined = result.body_part.strip().upper()[:16]
    else:
        sc.Laterality = ""
    sc.BurnedInAnnotation = "YES"
    sc.RecognizableVisualFeatures = "NO"
    sc.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
    sc.DerivationDescription = "AI result: key slice windowed and downscaled from its Hounsfield units, annotated"
    sc.ManufacturerModelName = f"edge-agent {result.algorithm.name}"[:64]
    sc.SoftwareVersions = __version__
    sc.SeriesDescription = (f"AI {result.algorithm.name} {result.algorithm.version} key image"
                            + (" - not for diagnosis" if result.algorithm.synthetic_training else ""))[:64]
    uid, frame = key_reference(key_sop_instance_uid, header)
    source = Dataset()
    source.ReferencedSOPClassUID, source.ReferencedSOPInstanceUID = header.sop_class_uid, uid
    if frame is not None:
        source.ReferencedFrameNumber = frame
    sc.SourceImageSequence = [source]
    sc.ContentDate, sc.ContentTime = when.strftime("%Y%m%d"), when.strftime("%H%M%S")
    sc.DateOfSecondaryCapture, sc.TimeOfSecondaryCapture = sc.ContentDate, sc.ContentTime
    pin_times(sc, when)
    return sc
