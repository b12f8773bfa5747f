"""A small header reader for the common case: single-image little-endian Part 10 CT files.

pydicom builds a full ``Dataset`` (every element, lazily converted) — about
half a millisecond per CT header, as long as it takes to read and rescale
uncompressed pixels. For Implicit/Explicit VR Little Endian files and the
encapsulated syntaxes (explicit VR little endian with fragments: RLE, JPEG,
JPEG-LS, JPEG 2000; PS3.5 7.1, A.1, A.2, A.4) this module reads the whole
file in one call, walks the top-level elements with ``struct`` (skipping
sequences, PS3.5 7.5), keeps the few attributes the reader needs and points
at the pixel bytes. Compressed pixels are then decoded by pydicom from a
minimal dataset (:meth:`Header.pixel_dataset`).

It returns ``None`` whenever the file is anything else — deflated or big
endian, Enhanced (functional-group) objects, a character set other than
ASCII/Latin-1/UTF-8, a malformed or truncated element — and
:mod:`edge_agent.dicom.reader` then uses pydicom. Tests check both paths
give identical slices.
"""

from __future__ import annotations

import os
import struct
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset

from edge_agent.boundary import MAX_SEQUENCE_DEPTH
from edge_agent.dicom.limits import open_regular
from edge_agent.dicom.uids import IMPLICIT_VR_LE, JPEG_FAMILY_PREFIX, LITTLE_ENDIAN_NATIVE, RLE_LOSSLESS

# JPEG, JPEG-LS, JPEG 2000, HTJ2K (JPEG_FAMILY_PREFIX) and RLE: all explicit VR little endian
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UR", b"UT", b"UN", b"SV", b"UV"}
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
PIXEL_DATA = 0x7FE00010
_HEAD = 16384  # first read; most CT headers are 2-8 KB
_CHARSETS = {"": "latin-1", "ISO_IR 6": "latin-1", "ISO_IR 100": "latin-1", "ISO_IR 192": "utf-8"}

# tag → (keyword, kind); kind: "s" one string, "m" multi-valued strings, "u" US, "x" US/SS by VR
WANTED: dict[int, tuple[str, str]] = {
    0x00080005: ("SpecificCharacterSet", "m"), 0x00080008: ("ImageType", "m"),
    0x00080016: ("SOPClassUID", "s"), 0x00080018: ("SOPInstanceUID", "s"),
    0x00080050: ("AccessionNumber", "s"), 0x00080060: ("Modality", "s"),
    0x00081030: ("StudyDescription", "s"), 0x0008103E: ("SeriesDescription", "s"),
    0x00180015: ("BodyPartExamined", "s"), 0x00180050: ("SliceThickness", "s"),
    0x00181120: ("GantryDetectorTilt", "s"), 0x0020000D: ("StudyInstanceUID", "s"),
    0x0020000E: ("SeriesInstanceUID", "s"), 0x00200013: ("InstanceNumber", "s"),
    0x00200032: ("ImagePositionPatient", "m"), 0x00200037: ("ImageOrientationPatient", "m"),
    0x00280002: ("SamplesPerPixel", "u"), 0x00280004: ("PhotometricInterpretation", "s"),
    0x00280008: ("NumberOfFrames", "s"), 0x00280102: ("HighBit", "u"),
    0x00280010: ("Rows", "u"), 0x00280011: ("Columns", "u"), 0x00280030: ("PixelSpacing", "m"),
    0x00280100: ("BitsAllocated", "u"), 0x00280101: ("BitsStored", "u"),
    0x00280103: ("PixelRepresentation", "u"), 0x00280120: ("PixelPaddingValue", "x"),
    0x00280121: ("PixelPaddingRangeLimit", "x"), 0x00281052: ("RescaleIntercept", "s"),
    0x00281053: ("RescaleSlope", "s"),
    # read for the applicability rules (edge_agent.dicom.header.header_fields)
    0x00080070: ("Manufacturer", "s"), 0x00081090: ("ManufacturerModelName", "s"),
    0x00180010: ("ContrastBolusAgent", "s"), 0x00181040: ("ContrastBolusRoute", "s"),
    0x00180060: ("KVP", "s"), 0x00181030: ("ProtocolName", "s"), 0x00181060: ("TriggerTime", "s"),
    0x00181100: ("ReconstructionDiameter", "s"), 0x00181210: ("ConvolutionKernel", "m"),
    0x00189037: ("CardiacSynchronizationTechnique", "s"), 0x00101010: ("PatientAge", "s"),
}
_KIND = {keyword: kind for keyword, kind in WANTED.values()}
_TEXT = {"AccessionNumber", "StudyDescription", "SeriesDescription", "BodyPartExamined", "Manufacturer",
         "ManufacturerModelName", "ContrastBolusAgent", "ContrastBolusRoute", "ProtocolName", "ConvolutionKernel"}
# Presence of any of these means the object needs the full reader.
_FALLBACK = {0x00041220, 0x52009229, 0x52009230}


class _Unsupported(Exception):
    """Internal: this file is not for the fast path."""


class NestedTooDeep(RecursionError):
    """Sequences nested deeper than MAX_SEQUENCE_DEPTH (the reader's boundary words it)."""


class PixelElement:
    """Stands in for pydicom's RawDataElement of Pixel Data: the bytes already read."""

    def __init__(self, value: memoryview, length: int) -> None:
        self.value = value
        self.length = length


class FileMeta(dict):
    """The few File Meta attributes the reader asks for (``.get`` like a Dataset)."""


class Header:
    """The wanted attributes of one file, answering ``get``/``in``/attributes like a pydicom Dataset."""

    def __init__(self, values: dict[str, Any], meta: FileMeta, pixel: PixelElement | None) -> None:
        self._values = values
        self.file_meta = meta
        self._pixel = pixel

    def get(self, key: str, default: Any = None) -> Any:
        return self._values.get(key, default)

    def get_item(self, tag: int) -> PixelElement | None:
        return self._pixel if tag == PIXEL_DATA else None

    def __contains__(self, key: object) -> bool:
        if key == PIXEL_DATA or key == "PixelData":
            return self._pixel is not None
        return key in self._values

    def __getattr__(self, name: str) -> Any:
        if name == "PixelData" and self.__dict__.get("_pixel") is not None:
            return bytes(self.__dict__["_pixel"].value)
        try:
            return self.__dict__["_values"][name]
        except KeyError:
            raise AttributeError(name) from None

    def pixel_dataset(self) -> Dataset:
        """A minimal pydicom Dataset with the Image Pixel module and pixel data, for pydicom's decoders."""
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = self.file_meta["TransferSyntaxUID"]
        for keyword in ("Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "BitsStored", "HighBit",
                        "PixelRepresentation", "PhotometricInterpretation", "NumberOfFrames"):
            value = self._values.get(keyword)
            if value not in (None, ""):
                setattr(ds, keyword, value)
        if "PhotometricInterpretation" not in ds:
            ds.PhotometricInterpretation = "MONOCHROME2"
        ds.PixelData = self.PixelData
        ds["PixelData"].VR = "OB"
        return ds


def read_header(path: str) -> Header | None:
    """Parse a native little-endian Part 10 file, or ``None`` to let pydicom do it."""
    try:
        with open_regular(path) as fh:
            head = fh.read(_HEAD)
            meta, pos = _parse_meta(memoryview(head))
            if not _supported(meta.get("TransferSyntaxUID", "")):
                return None  # deflated or big endian: don't read the rest twice
            data = bytearray(os.fstat(fh.fileno()).st_size)
            view = memoryview(data)
            view[:len(head)] = head
            got = len(head) + (fh.readinto(view[len(head):]) or 0)
        return _parse(view[:got], meta, pos)
    except (_Unsupported, struct.error, UnicodeDecodeError, IndexError, ValueError):
        return None


def _supported(syntax: str) -> bool:
    return syntax in LITTLE_ENDIAN_NATIVE or syntax == RLE_LOSSLESS or syntax.startswith(JPEG_FAMILY_PREFIX)


def transfer_syntax(path: str) -> str:
    """The Transfer Syntax UID of a Part 10 file from its first bytes, or ``""``."""
    try:
        with open_regular(path) as fh:
            meta, _ = _parse_meta(memoryview(fh.read(_HEAD)))
        return meta.get("TransferSyntaxUID", "")
    except (OSError, _Unsupported, struct.error, UnicodeDecodeError, IndexError, ValueError):
        return ""


def _parse_meta(buf: memoryview) -> tuple[FileMeta, int]:
    """File Meta Information (PS3.10 7.1): always Explicit VR Little Endian, group 0002."""
    if len(buf) < 144 or bytes(buf[128:132]) != b"DICM":
        raise _Unsupported
    meta = FileMeta()
    pos = 132
    while pos + 8 <= len(buf) and struct.unpack_from("<H", buf, pos)[0] == 0x0002:
        tag, vr, length, pos = _element(buf, pos, explicit=True)
        if length == _UNDEFINED or pos + length > len(buf):
            raise _Unsupported
        if tag in (0x00020010, 0x00020002):
            text = bytes(buf[pos:pos + length]).decode("ascii").strip(" \0")
            meta["TransferSyntaxUID" if tag == 0x00020010 else "MediaStorageSOPClassUID"] = text
        pos += length
    return meta, pos


def _parse(buf: memoryview, meta: FileMeta, pos: int) -> Header:
    syntax = meta["TransferSyntaxUID"]
    explicit = syntax != IMPLICIT_VR_LE
    encapsulated = syntax not in LITTLE_ENDIAN_NATIVE
    raw: dict[str, tuple[bytes, bytes]] = {}
    pixel = None
    end = len(buf)
    while pos + 8 <= end:
        tag, vr, length, pos = _element(buf, pos, explicit)
        if tag == PIXEL_DATA:
            if (length == _UNDEFINED) != encapsulated:
                raise _Unsupported  # encoding does not match the syntax: let pydicom judge
            if encapsulated:
                stop = _fragments_end(buf, pos)
                pixel = PixelElement(buf[pos:stop], stop - pos)
            else:
                pixel = PixelElement(buf[pos:pos + length], length)
            break
        if tag in _FALLBACK:
            raise _Unsupported
        if length == _UNDEFINED:
            if explicit and vr != b"SQ":
                raise _Unsupported
            pos = _skip_sequence(buf, pos, explicit)
            continue
        if pos + length > end:
            raise _Unsupported  # truncated header: pydicom gives the precise error
        if tag in WANTED:
            raw[WANTED[tag][0]] = (bytes(buf[pos:pos + length]), vr)
        pos += length
    return Header(_convert(raw), meta, pixel)


def _element(buf: memoryview, pos: int, explicit: bool) -> tuple[int, bytes, int, int]:
    """(tag, VR, length, value position) of the element header at ``pos`` (PS3.5 7.1.1-7.1.3)."""
    group, elem = struct.unpack_from("<HH", buf, pos)
    tag = (group << 16) | elem
    if group == 0xFFFE:  # item / delimiter: no VR in either encoding
        return tag, b"", struct.unpack_from("<I", buf, pos + 4)[0], pos + 8
    if not explicit:
        return tag, b"", struct.unpack_from("<I", buf, pos + 4)[0], pos + 8
    vr = bytes(buf[pos + 4:pos + 6])
    if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
        raise _Unsupported
    if vr in _LONG_VRS:
        return tag, vr, struct.unpack_from("<I", buf, pos + 8)[0], pos + 12
    return tag, vr, struct.unpack_from("<H", buf, pos + 6)[0], pos + 8


def _fragments_end(buf: memoryview, pos: int) -> int:
    """End of encapsulated pixel data items (offset table + fragments), before the delimiter (PS3.5 A.4)."""
    while True:
        if pos + 8 > len(buf):
            raise _Unsupported  # truncated: pydicom reports it
        tag, _, length, value = _element(buf, pos, True)
        if tag == _SEQ_END:
            return pos
        if tag != _ITEM or length == _UNDEFINED or value + length > len(buf):
            raise _Unsupported
        pos = value + length


def _skip_sequence(buf: memoryview, pos: int, explicit: bool, depth: int = 1) -> int:
    """Position after an undefined-length sequence starting at ``pos`` (PS3.5 7.5.2)."""
    if depth > MAX_SEQUENCE_DEPTH:
        raise NestedTooDeep(f"sequences nested over {MAX_SEQUENCE_DEPTH} levels")
    while True:
        tag, _, length, pos = _element(buf, pos, explicit)
        if tag == _SEQ_END:
            return pos
        if tag != _ITEM:
            raise _Unsupported
        if length != _UNDEFINED:
            pos += length
            continue
        while True:  # undefined-length item: walk its elements to the item delimiter
            tag, vr, length, pos = _element(buf, pos, explicit)
            if tag == _ITEM_END:
                break
            if length == _UNDEFINED:
                if explicit and vr != b"SQ":
                    raise _Unsupported
                pos = _skip_sequence(buf, pos, explicit, depth + 1)
            else:
                pos += length


def _convert(raw: dict[str, tuple[bytes, bytes]]) -> dict[str, Any]:
    charsets = raw.get("SpecificCharacterSet", (b"", b""))[0].decode("ascii").strip(" \0").split("\\")
    charset = charsets[0].strip() if len(charsets) == 1 else None
    if charset not in _CHARSETS:
        raise _Unsupported  # ISO 2022 and friends: pydicom knows them
    encoding = _CHARSETS[charset]
    values: dict[str, Any] = {}
    for keyword, (value, vr) in raw.items():
        kind = _KIND[keyword]
        if kind == "u":
            values[keyword] = struct.unpack_from("<H", value)[0] if len(value) >= 2 else None
        elif kind == "x":
            if len(value) < 2:
                continue
            values[keyword] = struct.unpack_from("<h" if vr == b"SS" else "<H", value)[0]
        else:
            text = value.decode(encoding if keyword in _TEXT else "ascii").rstrip(" \0")
            if kind == "m":
                values[keyword] = text.split("\\") if text else []  # as pydicom: inner spaces kept
            else:
                values[keyword] = text.strip()
    return values
