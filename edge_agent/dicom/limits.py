"""Checks at the edge, before any work that a header can make unbounded.

:func:`~edge_agent.dicom.reader.read_file` runs these on the header, before
the per-frame geometry loop and before any pixel decoder:

* only regular files are opened (:func:`check_regular`, :func:`open_regular`):
  a FIFO would block ``open()`` forever, a device would never end;
* Number of Frames is a whole number of at least 1 (:func:`frame_count`);
  0, negative or unreadable values are refused, never read as "no frames";
* Study, Series and SOP Instance UIDs are present and not empty
  (:func:`check_header`): a file that cannot be placed in a study and a
  series is refused here, with a sentence, rather than failing later in a
  payload. We refuse rather than invent UIDs: a made-up Study Instance UID
  would put results into a study that does not exist in the PACS;
* frames × rows × columns × samples × bits fit the pixel data that is
  actually there (native syntaxes), at most one frame per 8-byte fragment
  item (encapsulated syntaxes, PS3.5 A.4: a fragment never holds two
  frames), and the decoded size stays under :data:`MAX_DECODED_BYTES` and a
  plausible compression ratio — so a 39 KB file claiming 99,999,999 frames
  is refused in microseconds, not by the out-of-memory killer.

:func:`guarded` wraps the reader: whatever escapes it (a decoder panic, a
``RecursionError`` from sequences nested thousands deep, ``MemoryError``)
becomes a :class:`~edge_agent.dicom.model.BadFile` with a sentence
(:mod:`edge_agent.boundary`), so callers — threads or worker processes —
only ever see picklable, one-sentence errors.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
from typing import Any, BinaryIO, Callable, TypeVar

from edge_agent.boundary import describe, failure_reason, is_fatal
from edge_agent.dicom.model import BadFile, DicomError
from edge_agent.dicom.uids import NATIVE_SYNTAXES

log = logging.getLogger(__name__)
_F = TypeVar("_F", bound=Callable[..., Any])

PIXEL_DATA = 0x7FE00010
UNDEFINED_LENGTH = 0xFFFFFFFF
MAX_FRAMES = 50_000  # the largest Enhanced CT objects have a few thousand frames
MAX_DECODED_BYTES = 4 * 1024 ** 3  # stored values of one file, before HU (float32 doubles it)
# Compressed pixel data may decode to at most this many times its size (or COMPRESSED_FLOOR bytes, whichever
# is more: a blank slice compresses extremely well). Lossless CT compresses 2-4:1, lossy JPEG 2000 ~50:1.
MAX_COMPRESSION_RATIO = 4000
COMPRESSED_FLOOR = 128 * 1024 ** 2

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def special_kind(mode: int) -> str:
    """What a non-regular file is, in words (``""`` for a regular file)."""
    if stat.S_ISREG(mode):
        return ""
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def check_regular(path: str) -> None:
    """Raise :class:`BadFile` unless ``path`` is a regular file (symbolic links followed); never opens it."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise BadFile(path, "disappeared before it could be read") from None
    except OSError as exc:
        raise BadFile(path, f"could not be examined ({exc.strerror or exc}); check its permissions") from None
    kind = special_kind(st.st_mode)
    if kind:
        raise BadFile(path, f"is {kind}, not a regular file; only regular files are read")


def open_regular(path: str) -> BinaryIO:
    """Open for reading without ever blocking: ``O_NONBLOCK``, then refuse anything but a regular file.

    Raises ``OSError`` (``EINVAL`` for a file that is not regular) like ``open``.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def frame_count(ds: Any, path: str, series_uid: str = "") -> int:
    """Number of Frames as an int ≥ 1 (1 when absent or empty); :class:`BadFile` for anything else."""
    try:
        value = ds.get("NumberOfFrames", None)
        text = "" if value is None else str(value).strip()
        if not text:
            return 1
        number = float(text)
    except Exception:  # noqa: BLE001 - pydicom raises many types for a malformed IS
        number, text = float("nan"), "\0"
    if not number.is_integer() or number < 1:
        shown = f"Number of Frames '{text}'" if len(text) <= 20 and text.isprintable() else \
            "an unreadable Number of Frames"
        raise BadFile(path, f"has {shown}; it must be a whole number of at least 1", series_uid)
    if number > MAX_FRAMES:
        raise BadFile(path, f"claims {int(number):,} frames, more than the {MAX_FRAMES:,} any CT object "
                            "has; its header is damaged", series_uid)
    return int(number)


def _int(ds: Any, keyword: str, default: int) -> int:
    try:
        return int(ds.get(keyword, default) or default)
    except Exception:  # noqa: BLE001
        return default


def pixel_length(ds: Any) -> int | None:
    """Bytes of Pixel Data as stored (without decoding or reading deferred values), or None if unknown."""
    try:
        elem = ds.get_item(PIXEL_DATA)
    except Exception:  # noqa: BLE001
        return None
    if elem is None:
        return None
    value = getattr(elem, "value", None)
    if value is not None:
        return len(value)
    length = getattr(elem, "length", None)
    return None if length in (None, UNDEFINED_LENGTH) else int(length)


def check_header(ds: Any, path: str, rows: int, cols: int, frames: int, series_uid: str = "") -> None:
    """UIDs present, and the declared image size plausible for the pixel data there; :class:`BadFile` if not."""
    for keyword, words in (("StudyInstanceUID", "a study"), ("SeriesInstanceUID", "a series"),
                           ("SOPInstanceUID", "its series")):
        try:
            uid = str(ds.get(keyword, "") or "").strip(" \0")
        except Exception:  # noqa: BLE001
            uid = ""
        if not uid:
            name = keyword.replace("InstanceUID", " Instance UID")
            raise BadFile(path, f"has no {name}, so it cannot be placed in {words}; the sender must fill it in",
                          series_uid)
    samples = max(1, _int(ds, "SamplesPerPixel", 1))
    bits = _int(ds, "BitsAllocated", 16)
    decoded = (frames * rows * cols * samples * bits + 7) // 8
    size = f"{frames:,} frame(s) of {rows}x{cols} pixels at {bits} bits"
    if decoded > MAX_DECODED_BYTES:
        raise BadFile(path, f"declares {size} ({decoded:,} bytes), more than one file may decode to; "
                            "its header is damaged", series_uid)
    length = pixel_length(ds)
    if length is None:
        return  # measured when the pixels are read
    syntax = str(ds.file_meta.get("TransferSyntaxUID", "") or "") if hasattr(ds, "file_meta") else ""
    if syntax in NATIVE_SYNTAXES or not syntax:
        if decoded > length:  # deflated too: pydicom has inflated the dataset, so this is the real length
            raise BadFile(path, f"declares {size} ({decoded:,} bytes) but its pixel data holds only {length:,} "
                                "bytes; the header is wrong or the file is truncated", series_uid)
        return
    if frames > max(1, length // 8):
        raise BadFile(path, f"declares {frames:,} frames but its compressed pixel data ({length:,} bytes) "
                            "has room for fewer fragments; its header is damaged", series_uid)
    if decoded > max(COMPRESSED_FLOOR, MAX_COMPRESSION_RATIO * length):
        raise BadFile(path, f"declares {size} ({decoded:,} bytes) from only {length:,} bytes of compressed "
                            "pixel data; its header is damaged", series_uid)


_ITEM = b"\xfe\xff\x00\xe0"
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # JPEG start-of-frame markers (ITU T.81 B.1.1.3)
_SOF_LS = 0xF7  # JPEG-LS start of frame (ITU T.87 C.2.2)


def _fragments(encoded: bytes | memoryview, limit: int = MAX_FRAMES):
    """The fragments of encapsulated pixel data (PS3.5 A.4), Basic Offset Table excluded; stops at damage."""
    data = memoryview(encoded)
    pos, first = 0, True
    while pos + 8 <= len(data) and len(data) and limit > 0:
        if bytes(data[pos:pos + 4]) != _ITEM:
            return
        length = int.from_bytes(data[pos + 4:pos + 8], "little")
        start, pos = pos + 8, pos + 8 + length
        if not first:
            limit -= 1
            yield data[start:min(pos, len(data))]
        first = False


def _codestream_size(fragment: memoryview) -> tuple[int, int] | None:
    """(columns, rows) a JPEG, JPEG-LS or JPEG 2000 frame declares in its own header, or None if not found."""
    head = bytes(fragment[:16384])
    at = 0 if head.startswith(b"\xff\x4f\xff\x51") else -1  # J2K SOC + SIZ
    if head.startswith(b"\x00\x00\x00\x0cjP  "):  # inside a JP2 wrapper (not DICOM, but seen)
        at = head.find(b"\xff\x4f\xff\x51", 0, 1024)
    if at >= 0 and len(head) >= at + 24:
        xsiz, ysiz, xo, yo = (int.from_bytes(head[at + 8 + 4 * k:at + 12 + 4 * k], "big") for k in range(4))
        return xsiz - xo, ysiz - yo
    if not head.startswith(b"\xff\xd8"):
        return None
    pos = 2
    for _ in range(256):  # marker segments before the frame header (tables, APPn, comments)
        while pos < len(head) and head[pos] == 0xFF:
            pos += 1  # fill bytes
        if pos + 3 > len(head):
            return None
        marker = head[pos]
        if marker in _SOF or marker == _SOF_LS:
            if pos + 8 > len(head):
                return None
            rows = int.from_bytes(head[pos + 4:pos + 6], "big")
            cols = int.from_bytes(head[pos + 6:pos + 8], "big")
            return (cols, rows) if rows else None  # rows 0: set later by a DNL marker
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            pos += 1
            continue
        pos += 1 + int.from_bytes(head[pos + 1:pos + 3], "big")
    return None


def check_codestreams(encoded: bytes | memoryview, path: str, rows: int, cols: int, series_uid: str = "") -> None:
    """Each compressed frame must declare the Rows x Columns of the header (PS3.5 8.2), before a decoder
    allocates what it declares: one flipped bit in a JPEG 2000 SIZ marker asked OpenJPEG for 1.6 GB."""
    for fragment in _fragments(encoded):
        size = _codestream_size(fragment)
        if size is not None and size != (cols, rows):
            raise BadFile(path, f"has compressed pixel data of {size[0]}x{size[1]} pixels in a {cols}x{rows} "
                                "image; the file is damaged", series_uid)


def shown(text: str, instead: str, limit: int = 64) -> str:
    """``text`` for a reason when it is short and printable (header values can be any bytes), else ``instead``."""
    return text if len(text) <= limit and text.isprintable() else instead


def clean_reason(reason: str, limit: int = 400) -> str:
    """A reason fit to print: control characters replaced, at most ``limit`` characters."""
    if reason.isprintable() and len(reason) <= limit:
        return reason
    text = "".join(c if c.isprintable() else "?" for c in reason)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def guarded(read: _F) -> _F:
    """Decorate a ``read(path, ...)``: anything but a :class:`DicomError` or fatal exit becomes a BadFile."""

    @functools.wraps(read)
    def wrapper(path: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return read(path, *args, **kwargs)
        except DicomError as exc:
            exc.reason = clean_reason(exc.reason)  # header text quoted in a reason may be any bytes
            exc.args = (exc.path, exc.reason, exc.series_instance_uid)  # what a worker process pickles
            raise
        except BaseException as exc:  # noqa: BLE001 - decoder panics derive from BaseException
            if is_fatal(exc):
                raise
            where = os.fsdecode(path) if isinstance(path, (str, bytes, os.PathLike)) else str(path)
            log.debug("reading %s failed: %s", where, describe(exc))
            if isinstance(exc, Exception) and not isinstance(exc, (RecursionError, MemoryError)):
                reason = (f"has a damaged header or pixel data that could not be read ({type(exc).__name__}); "
                          "resend the file or remove it")
            else:
                reason = failure_reason(exc)
            raise BadFile(where, reason) from None

    return wrapper  # type: ignore[return-value]
