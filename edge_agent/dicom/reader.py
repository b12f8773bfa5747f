"""Read one DICOM file into CT slices in Hounsfield units.

:func:`read_file` is cheap enough to call per arriving file from the daemon.
It parses the header once (large values deferred), decides from the header
alone whether the file is ours (:class:`NotAnImage` otherwise), then decodes:
uncompressed little-endian pixel data is read straight from the file into
numpy (no pydicom pixel pipeline); every other transfer syntax goes through
``Dataset.pixel_array`` and the installed permissive plugins (gdcm,
pylibjpeg-openjpeg/-rle, pyjpegls; never the GPL pylibjpeg-libjpeg).

HU follow PS3.3 C.11.1.1.2 (Modality LUT): ``HU = stored * slope + intercept``
with slope 1 and intercept 0 when absent (``apply_modality_lut`` would skip
the rescale unless both are present). Enhanced CT frames take them from the
per-frame or shared Pixel Value Transformation functional group (PS3.3
C.7.6.16.2.9). Pixel Padding Value / Range Limit (PS3.3 C.7.5.1.1.2) and any
value below air are set to -1024 HU.
"""

from __future__ import annotations

import functools
import os
import zlib
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import get_decoder
from pydicom.uid import UID

from edge_agent.boundary import failure_reason
from edge_agent.dicom import fastpath, limits
from edge_agent.dicom.header import HEADER_FIELDS, header_fields, multi as _multi, to_float as _float
from edge_agent.dicom.model import BadFile, NotAnImage, Slice
from edge_agent.dicom.uids import (JPEG_2000, JPEG_2000_LOSSLESS, JPEG_LS_LOSSLESS, JPEG_LS_NEAR_LOSSLESS,
                                   LITTLE_ENDIAN_NATIVE, RLE_LOSSLESS)
from edge_agent.hu import AIR_HU, to_hu  # noqa: F401 - re-exported (edge_agent.dicom)

PIXEL_DATA = 0x7FE00010
_DEFER = 64 * 1024  # values larger than this stay on disk until needed
FAST_HEADERS = True  # native little-endian files skip pydicom's Dataset (see fastpath.py)

# SOP classes (PS3.4 Annex B.5) that carry CT slices we analyse.
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
LEGACY_ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.2"
CT_CLASSES = {CT_IMAGE, ENHANCED_CT, LEGACY_ENHANCED_CT}
MEDIA_DIRECTORY = "1.2.840.10008.1.3.10"
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"


@limits.guarded
def read_header(path: str | os.PathLike) -> Dataset | fastpath.Header:
    """Parse one file's header, once (large values deferred), for :func:`read_file` ``header=``.

    Only a regular file is opened; a media index (DICOMDIR) is refused by name. The fast path
    (:mod:`~edge_agent.dicom.fastpath`) reads native little-endian and encapsulated files; anything
    else goes to pydicom's ``dcmread``. Raises :class:`BadFile` like :func:`read_file`; the checks on
    what the header says (SOP class, frames, sizes, UIDs) are :func:`read_file`'s.
    """
    path = os.fspath(path)
    limits.check_regular(path)  # never open a FIFO, socket or device
    if os.path.basename(path).upper() in ("DICOMDIR", "DIRFILE"):
        raise NotAnImage(path, "is a media index (DICOMDIR/DIRFILE), not an image")
    ds = _fast_header(path) if FAST_HEADERS else None
    return _read_header(path) if ds is None else ds


def transfer_syntax(header: Dataset | fastpath.Header) -> str:
    """The Transfer Syntax UID of a parsed header (``""`` when its File Meta has none), as ``Slice`` keeps it."""
    return str(header.file_meta.get("TransferSyntaxUID", ""))


@limits.guarded
def read_file(path: str | os.PathLike, *, decode: bool = True, defer_hu: bool = False,
              stored_only: bool = False, header: Dataset | fastpath.Header | None = None) -> list[Slice]:
    """Read one file into its CT slices (one per frame), in HU when ``decode``.

    Raises :class:`BadFile` (not DICOM, truncated, no pixel data, undecodable
    syntax, inconsistent header) or :class:`NotAnImage` (valid DICOM that is
    not a CT slice we analyse). With ``decode=False`` the pixels are not
    decoded (``Slice.hu`` is ``None``) but their presence and length are
    still checked, so truncated uncompressed files are caught cheaply.
    ``defer_hu=True`` keeps the decoded stored values (``Slice.stored``) and
    leaves ``hu`` to :func:`~edge_agent.dicom.assemble`, which writes HU
    straight into the volume (one pass, half the memory while scanning);
    for uncompressed files ``content_hash`` is then left empty and computed
    from ``stored`` only if a duplicate SOP Instance UID needs it.
    ``stored_only=True`` keeps the stored values and ``rescale`` (and the
    content hash) and computes no HU: what the agent's ingest hands to the
    pipeline, which uploads them to the GPU as they are (half the bytes of
    HU) or turns them into HU only when a model scores them on the CPU.
    ``header`` is what :func:`read_header` returned for this ``path``: the file is then not parsed again
    (the ingest's decoder parses once to choose between its thread and a worker process).
    """
    path = os.fspath(path)
    ds = read_header(path) if header is None else header
    series_uid = str(ds.get("SeriesInstanceUID", ""))
    why = exclusion_reason(ds)
    if why:
        raise NotAnImage(path, why, series_uid)
    frames = limits.frame_count(ds, path, series_uid)
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if PIXEL_DATA not in ds or rows <= 0 or cols <= 0:
        raise BadFile(path, "has no pixel data; the file may be truncated, so wait for it to finish or resend it",
                      series_uid)
    limits.check_header(ds, path, rows, cols, frames, series_uid)  # UIDs, sizes: before any per-frame work
    geometry = frame_geometry(ds, path, frames)
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise NotAnImage(path, "is a colour image, not a greyscale CT slice", series_uid)
    keep = defer_hu or stored_only
    stored, content_hash = _stored_pixels(ds, path, rows, cols, frames, decode, series_uid,
                                          stored_only or not defer_hu)
    try:
        mtime = os.stat(path).st_mtime
    except OSError:
        mtime = 0.0
    common = _common_fields(ds)
    sop_uid = str(ds.get("SOPInstanceUID", ""))
    if not sop_uid or not series_uid:
        raise BadFile(path, "has no SOP Instance UID or Series Instance UID, so it cannot be placed in a series",
                      series_uid)
    padding = _padding(ds)
    slices = []
    for k, (position, orientation, spacing, thickness, slope, intercept) in enumerate(geometry):
        hu = None
        if stored is not None and not keep:
            hu = to_hu(stored[k], slope, intercept, padding)
        slices.append(Slice(
            path=path, frame=k,
            sop_instance_uid=sop_uid if frames == 1 else f"{sop_uid}.{k + 1}",
            series_instance_uid=series_uid, rows=rows, columns=cols,
            position=position, orientation=orientation, pixel_spacing=spacing,
            slice_thickness=thickness, hu=hu, content_hash=content_hash, mtime=mtime,
            stored=stored[k] if stored is not None and keep else None,
            rescale=(slope, intercept, padding), **common))
    return slices


def _fast_header(path: str) -> fastpath.Header | None:
    try:
        return fastpath.read_header(path)
    except OSError:
        return None  # the pydicom path raises the right BadFile


def _read_header(path: str) -> Dataset:
    try:
        return dcmread(path, defer_size=_DEFER)
    except InvalidDicomError:
        raise BadFile(path, "is not a DICOM Part 10 file (no 'DICM' marker); remove it from the folder") from None
    except FileNotFoundError:
        raise BadFile(path, "disappeared before it could be read") from None
    except OSError as exc:
        if exc.errno is None:  # pydicom's own "No tag to read at file position ...": a damaged file
            raise BadFile(path, "has a damaged or truncated header; resend the file") from None
        raise BadFile(path, f"could not be opened ({exc.strerror or exc}); check its permissions") from None
    except RecursionError as exc:  # sequences nested thousands deep
        raise BadFile(path, failure_reason(exc)) from None
    except Exception as exc:  # pydicom raises many types for damaged headers
        raise BadFile(path, f"has a damaged or truncated header ({type(exc).__name__}); resend the file") from None


def exclusion_reason(ds: Dataset) -> str:
    """Why a readable dataset is not a CT slice for us, or ``""`` when it is."""
    sop_class = str(ds.get("SOPClassUID", "") or ds.file_meta.get("MediaStorageSOPClassUID", ""))
    modality = str(ds.get("Modality", "") or "").upper()
    if sop_class == MEDIA_DIRECTORY or "DirectoryRecordSequence" in ds:
        return "is a media index (DICOMDIR), not an image"
    if sop_class.startswith(SECONDARY_CAPTURE_PREFIX):
        return f"is a secondary capture (Modality {modality or 'none'}), e.g. an exam summary, not a CT slice"
    if sop_class not in CT_CLASSES:
        name = limits.shown(UID(sop_class).name, "a damaged SOP Class UID") if sop_class else "no SOP class"
        if "Image Storage" in name:
            return f"is not CT ({name}, Modality {modality or 'none'}); only CT is analysed"
        return f"is a non-image object ({name})"
    if modality and modality != "CT":
        return f"has Modality {modality}; only CT is analysed"
    image_type = tuple(str(v).strip().upper() for v in _multi(ds.get("ImageType", ())))
    if "LOCALIZER" in image_type:
        return "is a localizer (scout) image"
    if image_type[:2] == ("DERIVED", "SECONDARY"):
        return "is a DERIVED\\SECONDARY image (reformat or post-processing), not an original slice"
    return ""


def _int(value: Any) -> int | None:
    number = _float(value, None)
    return None if number is None else int(number)


def _common_fields(ds: Dataset) -> dict:
    """Series-level fields for Slice. Patient attributes are never read here, except PatientAge (age rule)."""
    instance = ds.get("InstanceNumber")
    return dict(**header_fields(ds),
        study_instance_uid=str(ds.get("StudyInstanceUID", "")),
        accession_number=str(ds.get("AccessionNumber", "") or ""),
        modality=str(ds.get("Modality", "CT") or "CT"),
        series_description=str(ds.get("SeriesDescription", "") or ""),
        study_description=str(ds.get("StudyDescription", "") or ""),
        body_part=str(ds.get("BodyPartExamined", "") or ""),
        image_type=tuple(str(v) for v in _multi(ds.get("ImageType", ()))),
        gantry_tilt=_float(ds.get("GantryDetectorTilt"), 0.0) or 0.0,
        transfer_syntax=transfer_syntax(ds),
        instance_number=_int(instance),
    )


def _group(ds: Dataset, per_frame: Dataset | None, shared: Dataset | None, sequence: str) -> Dataset | None:
    """The first item of a functional group macro, per-frame before shared (PS3.3 C.7.6.16)."""
    for source in (per_frame, shared):
        if source is not None and sequence in source and len(source[sequence].value):
            return source[sequence].value[0]
    return None


def frame_geometry(ds: Dataset, path: str, frames: int) -> list[tuple]:
    """Per frame: (position, orientation, pixel_spacing, thickness, slope, intercept).

    Classic files use the top-level attributes; Enhanced CT reads the Plane
    Position / Plane Orientation / Pixel Measures / Pixel Value
    Transformation functional groups, falling back to top level.
    """
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds \
        and len(ds.SharedFunctionalGroupsSequence) else None
    per_frames = ds.get("PerFrameFunctionalGroupsSequence")
    series_uid = str(ds.get("SeriesInstanceUID", ""))
    if per_frames is not None and len(per_frames) not in (0, frames):
        raise BadFile(path, f"lists {len(per_frames)} per-frame groups for {frames} frames", series_uid)
    out = []
    for k in range(frames):
        per_frame = per_frames[k] if per_frames else None
        pos_item = _group(ds, per_frame, shared, "PlanePositionSequence") or ds
        ori_item = _group(ds, per_frame, shared, "PlaneOrientationSequence") or ds
        meas_item = _group(ds, per_frame, shared, "PixelMeasuresSequence") or ds
        pvt_item = _group(ds, per_frame, shared, "PixelValueTransformationSequence") or ds
        try:
            position = np.array([float(v) for v in pos_item.ImagePositionPatient], dtype=np.float64)
            orientation = np.array([float(v) for v in ori_item.ImageOrientationPatient], dtype=np.float64)
        except (AttributeError, TypeError, ValueError):
            raise BadFile(path, "has no valid Image Position/Orientation (Patient), so it cannot be placed "
                                "in a volume", series_uid) from None
        if position.shape != (3,) or orientation.shape != (6,):
            raise BadFile(path, "has a malformed Image Position/Orientation (Patient)", series_uid)
        spacing_values = _multi(meas_item.get("PixelSpacing", None) or ds.get("PixelSpacing", None))
        spacing = (float(spacing_values[0]), float(spacing_values[1])) if len(spacing_values) == 2 else (1.0, 1.0)
        thickness = _float(meas_item.get("SliceThickness", None) or ds.get("SliceThickness", None), None)
        slope = _float(pvt_item.get("RescaleSlope", None), None)
        intercept = _float(pvt_item.get("RescaleIntercept", None), None)
        if slope is None:
            slope = _float(ds.get("RescaleSlope"), 1.0) or 1.0
        if intercept is None:
            intercept = _float(ds.get("RescaleIntercept"), 0.0) or 0.0
        out.append((position, orientation, spacing, thickness, slope, intercept))
    return out


def _padding(ds: Dataset) -> tuple[int, int] | None:
    """Stored-value range that means 'no data' (PS3.3 C.7.5.1.1.2), or None."""
    value = ds.get("PixelPaddingValue")
    if value is None or value == "":
        return None
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    limit = ds.get("PixelPaddingRangeLimit")

    def as_stored(v: Any) -> int:
        v = int(_multi(v)[0])
        return v - 65536 if signed and v > 32767 else v

    lo = as_stored(value)
    hi = lo if limit in (None, "") else as_stored(limit)
    return (min(lo, hi), max(lo, hi))


def _stored_pixels(ds: Dataset, path: str, rows: int, cols: int, frames: int, decode: bool,
                   series_uid: str, want_hash: bool = True) -> tuple[np.ndarray | None, str]:
    """Stored values as (frames, rows, cols) ints (or None) and a hash of the pixel bytes."""
    syntax = ds.file_meta.get("TransferSyntaxUID")
    bits = int(ds.get("BitsAllocated", 16) or 16)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    if syntax in LITTLE_ENDIAN_NATIVE and bits in (8, 16):
        return _native_pixels(ds, path, rows, cols, frames, bits, signed, decode, series_uid, want_hash)
    try:
        encoded = ds.PixelData
    except Exception:
        raise BadFile(path, "is truncated inside its pixel data; resend the file", series_uid) from None
    if encoded is None or len(encoded) == 0:
        raise BadFile(path, "has empty pixel data; the file may be truncated, so resend it", series_uid)
    content_hash = pixel_hash(encoded)
    if not decode:
        return None, content_hash
    limits.check_codestreams(encoded, path, rows, cols, series_uid)  # before a decoder allocates their size
    unsupported = BadFile(path, f"uses {UID(str(syntax)).name if syntax else 'an unknown transfer syntax'}, "
                                "which no installed decoder can read; ask for another transfer syntax", series_uid)
    if syntax and not can_decode(str(syntax)):
        raise unsupported
    try:
        source = ds.pixel_dataset() if isinstance(ds, fastpath.Header) else ds
        plugin = preferred_plugin(str(syntax))
        if plugin:
            source.pixel_array_options(decoding_plugin=plugin)
        arr = source.pixel_array
    except (NotImplementedError, ImportError):
        raise unsupported from None
    except RuntimeError as exc:  # a plugin ran and rejected the data: damaged, not unsupported
        raise BadFile(path, f"has pixel data that could not be decoded ({_short(exc)}); resend the file",
                      series_uid) from None
    except Exception as exc:
        raise BadFile(path, f"has pixel data that could not be decoded ({_short(exc)}); the file may be "
                            "truncated, so resend it", series_uid) from None
    arr = arr.reshape(frames, rows, cols) if arr.size == frames * rows * cols else None
    if arr is None:
        raise BadFile(path, "has pixel data whose size does not match Rows x Columns x frames", series_uid)
    return arr, content_hash


# Faster permissive plugins where pydicom's default order picks a slower one (measured:
# RLE 1.3 → 0.3 ms, JPEG-LS 4.0 → 3.0 ms per 512² slice).
# JPEG 2000: pylibjpeg-openjpeg (22.7 vs 23.7 ms, docs/perf/ingest.md), and gdcm aborts the whole process
# (an uncaught C++ exception, std::terminate) on some damaged J2K streams, found by scripts/fuzz_ingest.py.
_PREFERRED = {RLE_LOSSLESS: "pylibjpeg", JPEG_LS_LOSSLESS: "pyjpegls", JPEG_LS_NEAR_LOSSLESS: "pyjpegls",
              JPEG_2000_LOSSLESS: "pylibjpeg", JPEG_2000: "pylibjpeg"}


def _decoder(syntax: str) -> Any:
    """pydicom's pixel data decoder for ``syntax``, or ``None`` when pydicom has none."""
    try:
        return get_decoder(UID(syntax))
    except (NotImplementedError, ValueError):
        return None


@functools.lru_cache(maxsize=None)
def can_decode(syntax: str) -> bool:
    """Whether pydicom can decode ``syntax`` here: native data, or an installed decoding plugin (its
    ``available_plugins``). Asked of pydicom's decoder registry, not guessed from a failed decode's message."""
    decoder = _decoder(syntax)
    return decoder is not None and decoder.is_available


@functools.lru_cache(maxsize=None)
def preferred_plugin(syntax: str) -> str:
    """The decoding plugin to ask for, or ``""`` for pydicom's default choice."""
    name = _PREFERRED.get(syntax, "")
    decoder = _decoder(syntax) if name else None
    return name if decoder is not None and name in decoder.available_plugins else ""


def pixel_hash(data: bytes | memoryview) -> str:
    """Cheap content hash of pixel bytes (CRC-32 and length)."""
    return f"{zlib.crc32(data):08x}-{len(data)}"


def _short(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:120]


def _native_pixels(ds: Dataset, path: str, rows: int, cols: int, frames: int, bits: int, signed: bool,
                   decode: bool, series_uid: str, want_hash: bool = True) -> tuple[np.ndarray | None, str]:
    """Uncompressed little-endian pixels read straight from the file (PS3.5 8.1.1)."""
    raw = ds.get_item(PIXEL_DATA)
    expected = rows * cols * frames * (bits // 8)
    value = raw.value
    if value is None:  # deferred: read the bytes straight from the file, once
        with limits.open_regular(path) as fh:
            fh.seek(raw.value_tell)
            value = fh.read(expected)
    if len(value) < expected:
        raise BadFile(path, f"is truncated: its pixel data has {len(value)} of {expected} bytes; wait for the "
                            "transfer to finish or resend it", series_uid)
    value = memoryview(value)[:expected]
    content_hash = pixel_hash(value) if want_hash or not decode else ""
    if not decode:
        return None, content_hash
    dtype = np.dtype(("<i" if signed else "<u") + str(bits // 8))
    arr = np.frombuffer(value, dtype=dtype).reshape(frames, rows, cols)
    stored_bits = int(ds.get("BitsStored", bits) or bits)
    if stored_bits < bits:
        arr = _fix_unused_bits(arr, stored_bits, signed)
    return arr, content_hash


def _fix_unused_bits(arr: np.ndarray, stored_bits: int, signed: bool) -> np.ndarray:
    """Clear bits above High Bit and sign-extend (PS3.5 8.1.1: those bits may hold overlays)."""
    width = arr.dtype.itemsize * 8
    unsigned = arr.view(np.dtype(f"<u{arr.dtype.itemsize}"))
    mask = (1 << stored_bits) - 1
    if unsigned.max() <= mask and not signed:
        return arr
    shift = width - stored_bits
    if signed:
        return (arr.view(np.dtype(f"<i{arr.dtype.itemsize}")) << shift) >> shift
    return unsigned & np.array(mask, dtype=unsigned.dtype)


