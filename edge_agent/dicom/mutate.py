"""Seeded mutations of real DICOM files, for the fuzz test and ``scripts/fuzz_ingest.py``.

A mutation-based fuzzer of our own (no new dependency): :func:`seed_files`
writes the seeds — pydicom's real CT test files (and its MR ones retagged
as CT, so that their RLE / JPEG-LS / JPEG 2000 pixel data reach the
decoders), plus :mod:`edge_agent.dicom.synth` series in every transfer
syntax we write — and :func:`mutate` turns one seed into one hostile input:

* byte level: bit flips (anywhere, or inside the pixel data), truncation,
  a chunk duplicated or deleted, an element length set absurd, a VR
  replaced by another;
* header level: missing or empty Study/Series/SOP Instance UIDs, extreme
  Rows / Columns / BitsAllocated / BitsStored / SamplesPerPixel /
  NumberOfFrames (0, negative, 99,999,999, not a number), a wrong transfer
  syntax UID;
* structure: sequences nested 65 to 5,000 levels deep, damaged fragments of
  encapsulated pixel data (lengths, offset table, delimiters).

Everything is drawn from one ``random.Random(seed)`` and the seeds carry
fixed UIDs, dates and times: the same seed gives the same inputs.
"""

from __future__ import annotations

import random
import struct
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import CTImageStorage

from edge_agent.dicom import uids
from edge_agent.dicom.synth import SeriesHeaders, encode, save, slice_datasets

# pydicom test files (and pydicom-data's): CT, or MR retagged as CT (the reader only takes CT).
TEST_FILES = ("CT_small.dcm", "MR_small_RLE.dcm", "emri_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm",
              "emri_small_jpeg_2k_lossless.dcm", "JPEG2000.dcm", "eCT_Supplemental.dcm", "MR_small.dcm")
SYNTH_SYNTAXES = ("explicit", "implicit", "rle", "j2k-lossless", "jpegls", "deflated")

PIXEL_TAG = b"\xe0\x7f\x10\x00"
_UID_TAGS = {"StudyInstanceUID": b"\x20\x00\x0d\x00", "SeriesInstanceUID": b"\x20\x00\x0e\x00",
             "SOPInstanceUID": b"\x08\x00\x18\x00"}
_VRS = (b"SQ", b"UN", b"OB", b"OW", b"US", b"SS", b"DS", b"IS", b"UI", b"LO", b"FD", b"AT", b"XX")
_SYNTAXES = (uids.IMPLICIT_VR_LE, uids.EXPLICIT_VR_LE, uids.EXPLICIT_VR_BE, uids.RLE_LOSSLESS,
             uids.JPEG_2000_LOSSLESS, uids.JPEG_LS_LOSSLESS, uids.JPEG_BASELINE, uids.DEFLATED_EXPLICIT_VR_LE,
             "1.2.3.4.5", "")  # the fuzzer's order: seeds replay the same files
EXTREMES = {
    "Rows": (0, 1, 2, 7, 4096, 65535), "Columns": (0, 1, 3, 4096, 65535),
    "BitsAllocated": (0, 1, 7, 8, 12, 32, 64, 255, 65535), "BitsStored": (0, 1, 17, 64, 65535),
    "SamplesPerPixel": (0, 3, 4, 65535), "PixelRepresentation": (2, 65535), "HighBit": (0, 31, 65535),
    "NumberOfFrames": ("0", "-1", "-99999", "2", "3", "40000", "99999999", "1e9", "abc", "1.5", ""),
}


def seed_files(folder: Path, rng_seed: int = 0) -> list[Path]:
    """Write the seed files into ``folder`` (real test files retagged as CT, plus synthetic series)."""
    folder.mkdir(parents=True, exist_ok=True)
    out: list[Path] = []
    for name in TEST_FILES:
        source = get_testdata_file(name, download=False)
        if source is None:
            continue  # pydicom-data not installed: fewer seeds
        ds = dcmread(source)
        if str(ds.get("Modality", "")) != "CT" or "MR" in name:
            ds.Modality = "CT"
            ds.SOPClassUID = CTImageStorage
            ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        if "ImagePositionPatient" not in ds and "PerFrameFunctionalGroupsSequence" not in ds:
            ds.ImagePositionPatient, ds.ImageOrientationPatient = [0.0, 0.0, 0.0], [1.0, 0, 0, 0, 1.0, 0]
            ds.PixelSpacing = [0.5, 0.5]
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            if not str(ds.get(keyword, "")).strip():
                setattr(ds, keyword, f"1.2.826.0.1.3680043.10.1.{zlib.crc32((name + keyword).encode())}")
        path = folder / f"seed-{Path(name).stem}.dcm"
        ds.save_as(path)
        out.append(path)
    rng = np.random.default_rng(rng_seed)
    root = f"1.2.826.0.1.3680043.10.{rng_seed % 10**6}"  # fixed UIDs: the same seed gives the same bytes
    for k, syntax in enumerate(SYNTH_SYNTAXES):
        vol = rng.integers(-1024, 1500, (2, 32, 32)).astype(np.float32)
        vol[:, :4] = -1024.0  # runs for RLE
        headers = SeriesHeaders(study_instance_uid=f"{root}.1", series_instance_uid=f"{root}.2.{k}",
                                frame_of_reference_uid=f"{root}.3")
        series_dir = folder / f"synth-{syntax}"
        series_dir.mkdir(exist_ok=True)
        for n, ds in enumerate(slice_datasets(vol, (2.5, 0.7, 0.7), headers,
                                              sop_instance_uids=[f"{root}.4.{k}.{n}" for n in range(2)])):
            ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20260101"
            ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
            uid = ds.SOPInstanceUID
            encode(ds, syntax)
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid  # compress() makes a new one
            out.append(save(ds, series_dir / f"IM{n + 1:05d}.dcm"))
    return out


# --- byte-level mutations ---------------------------------------------------------------------------
def _body_start(data: bytes) -> int:
    return 132 if data[128:132] == b"DICM" else 0


def bit_flips(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    start = _body_start(data)
    pixel = data.find(PIXEL_TAG)
    if pixel > 0 and rng.random() < 0.5:
        start = pixel + 8  # inside the pixel data: what reaches the decoders
    if start >= len(b):  # cut at (or before) where the body starts: flip anywhere
        start = 0
    if not b:
        return data
    for _ in range(rng.choice((1, 2, 4, 8, 15, 32))):
        pos = rng.randrange(start, len(b))
        b[pos] ^= 1 << rng.randrange(8)
    return bytes(b)


def truncate(data: bytes, rng: random.Random) -> bytes:
    return data[:rng.randrange(0, len(data))]


def splice(data: bytes, rng: random.Random) -> bytes:
    a = rng.randrange(_body_start(data), len(data))
    n = rng.randrange(1, min(4096, len(data) - a) + 1)
    if rng.random() < 0.5:
        return data[:a] + data[a:a + n] * rng.choice((2, 3, 50)) + data[a + n:]
    return data[:a] + data[a + n:]


def _element_offsets(data: bytes) -> list[int]:
    """Offsets of plausible explicit-VR element headers (two capital letters after a 4-byte tag)."""
    out = []
    for i in range(_body_start(data), len(data) - 8):
        if 65 <= data[i + 4] <= 90 and 65 <= data[i + 5] <= 90 and data[i + 1] < 0x80:
            out.append(i)
            if len(out) > 400:
                break
    return out


def absurd_length(data: bytes, rng: random.Random) -> bytes:
    offsets = _element_offsets(data)
    if not offsets:
        return truncate(data, rng)
    i = rng.choice(offsets)
    b = bytearray(data)
    vr = bytes(b[i + 4:i + 6])
    value = rng.choice((0xFFFFFFFF, 0xFFFFFFFE, 0x7FFFFFFF, len(data) * 10, 1, 3))
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT", b"OF", b"OD", b"OL", b"UC", b"UR") and i + 12 <= len(b):
        struct.pack_into("<I", b, i + 8, value)
    else:
        struct.pack_into("<H", b, i + 6, value & 0xFFFF)
    return bytes(b)


def wrong_vr(data: bytes, rng: random.Random) -> bytes:
    offsets = _element_offsets(data)
    if not offsets:
        return bit_flips(data, rng)
    b = bytearray(data)
    for i in rng.sample(offsets, min(len(offsets), rng.choice((1, 3)))):
        b[i + 4:i + 6] = rng.choice(_VRS)
    return bytes(b)


def nest(data: bytes, depth: int, *, closed: bool = True) -> bytes:
    """Insert (0040,A730) Content Sequence nested ``depth`` levels (undefined lengths) before Pixel Data."""
    pixel = data.find(PIXEL_TAG)
    if pixel < 0:
        pixel = len(data)
    sq = b"\x40\x00\x30\xa7SQ\x00\x00\xff\xff\xff\xff"
    item = b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    end = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    closing = end * depth if closed else end * (depth // 2)
    return data[:pixel] + (sq + item) * depth + closing + data[pixel:]


def deep_sequence(data: bytes, rng: random.Random) -> bytes:
    """Sequences nested 65..5000 levels deep, sometimes never closed."""
    return nest(data, rng.choice((65, 300, 1200, 5000)), closed=rng.random() < 0.8)


def damaged_fragments(data: bytes, rng: random.Random) -> bytes:
    """Break an encapsulated pixel data item: its length, the offset table, or the delimiter."""
    pixel = data.find(PIXEL_TAG)
    items = []
    pos = data.find(b"\xfe\xff\x00\xe0", max(pixel, 0))
    while pos >= 0 and len(items) < 64:
        items.append(pos)
        pos = data.find(b"\xfe\xff\x00\xe0", pos + 8)
    if pixel < 0 or not items:
        return bit_flips(data, rng)
    b = bytearray(data)
    i = rng.choice(items)
    action = rng.randrange(4)
    if action == 0:
        struct.pack_into("<I", b, i + 4, rng.choice((0, 1, 0xFFFFFFFF, 0x7FFFFFFF, len(data))))
    elif action == 1:  # offset table pointing anywhere
        struct.pack_into("<I", b, items[0] + 4, 8)
        b[items[0] + 8:items[0] + 8] = struct.pack("<II", 0xFFFFFF00, rng.randrange(1 << 32))
    elif action == 2:
        end = data.rfind(b"\xfe\xff\xdd\xe0")
        if end > 0:
            del b[end:]
    else:
        b[i:i + 4] = b"\xfe\xff\xdd\xe0"  # sequence delimiter too early
    return bytes(b)


# --- header-level mutations (through pydicom) ---------------------------------------------------------
def _header_edit(data: bytes, edit: Callable) -> bytes:
    import io

    ds = dcmread(io.BytesIO(data), force=True)
    edit(ds)
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def uids(data: bytes, rng: random.Random) -> bytes:
    keyword = rng.choice(tuple(_UID_TAGS))

    def edit(ds) -> None:
        if rng.random() < 0.5 and keyword in ds:
            del ds[keyword]
        else:
            setattr(ds, keyword, rng.choice(("", " ", "\0")))

    return _header_edit(data, edit)


def extreme_values(data: bytes, rng: random.Random) -> bytes:
    keyword = rng.choice(tuple(EXTREMES))
    value = rng.choice(EXTREMES[keyword])

    def edit(ds) -> None:
        setattr(ds, keyword, value)

    return _header_edit(data, edit)


def transfer_syntax(data: bytes, rng: random.Random) -> bytes:
    syntax = rng.choice(_SYNTAXES)

    def edit(ds) -> None:
        ds.file_meta.TransferSyntaxUID = syntax

    try:
        return _header_edit(data, edit)
    except Exception:  # noqa: BLE001 - pydicom cannot write some combinations: patch the bytes instead
        old = data.find(b"1.2.840.10008.1.2", 132)
        return data if old < 0 else data[:old] + syntax.encode() + data[old + 17:]


MUTATIONS: dict[str, Callable[[bytes, random.Random], bytes]] = {
    "bit_flips": bit_flips, "truncate": truncate, "splice": splice, "absurd_length": absurd_length,
    "wrong_vr": wrong_vr, "deep_sequence": deep_sequence, "damaged_fragments": damaged_fragments,
    "uids": uids, "extreme_values": extreme_values, "transfer_syntax": transfer_syntax,
}


def mutate(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One to three mutations of ``data``: (their names joined by ``+``, the mutated bytes)."""
    names = []
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        name = rng.choice(tuple(MUTATIONS))
        try:
            data = MUTATIONS[name](data, rng)
        except Exception:  # noqa: BLE001 - pydicom cannot parse what an earlier mutation broke: flip bits
            name, data = "bit_flips", bit_flips(data, rng) if data else data
        names.append(name)
    return "+".join(names), data
