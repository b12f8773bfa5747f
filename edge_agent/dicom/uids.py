"""The DICOM UIDs this project names: transfer syntaxes by what reading them takes (PS3.5 Annex A, PS3.6).

One home for sets that the reader, the header limits, the ingest's decoder choice, the batch readers and the
DICOM receiver would otherwise each declare.
"""

from __future__ import annotations

IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"      # retired
DEFLATED_EXPLICIT_VR_LE = "1.2.840.10008.1.2.1.99"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
JPEG_LOSSLESS_P14 = "1.2.840.10008.1.2.4.57"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
JPEG_LS_NEAR_LOSSLESS = "1.2.840.10008.1.2.4.81"
JPEG_2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEG_2000 = "1.2.840.10008.1.2.4.91"

#: Native pixel data the reader takes straight from the file (no pydicom pixel pipeline), and the fast header
#: path's explicit/implicit little-endian element walk.
LITTLE_ENDIAN_NATIVE = frozenset({IMPLICIT_VR_LE, EXPLICIT_VR_LE})

#: Pixel data that needs no decoder (PS3.5 A.1–A.3, and Deflated A.5: zlib releases the GIL).
NATIVE_SYNTAXES = frozenset({IMPLICIT_VR_LE, EXPLICIT_VR_LE, EXPLICIT_VR_BE, DEFLATED_EXPLICIT_VR_LE})

#: JPEG (….4.5x–.70), JPEG-LS (.80/.81), JPEG 2000 (.90–.93), HTJ2K (.201–.203): decoders that hold the GIL.
JPEG_FAMILY_PREFIX = "1.2.840.10008.1.2.4."

#: Syntaxes only gdcm decodes here (pylibjpeg-libjpeg is GPL and not installed): JPEG baseline, extended and
#: lossless. gdcm can abort the whole process on damaged data (an uncaught C++ exception), which no Python
#: boundary catches, so such files are decoded in worker processes.
ABORT_PRONE = frozenset({JPEG_BASELINE, JPEG_EXTENDED, JPEG_LOSSLESS_P14, JPEG_LOSSLESS_SV1})

#: What the DICOM receiver accepts for storage (all read by the pipeline's decoders), in proposal order.
STORAGE_TRANSFER_SYNTAXES = (IMPLICIT_VR_LE, EXPLICIT_VR_LE, DEFLATED_EXPLICIT_VR_LE, RLE_LOSSLESS,
                             JPEG_LOSSLESS_SV1, JPEG_LOSSLESS_P14, JPEG_LS_LOSSLESS, JPEG_LS_NEAR_LOSSLESS,
                             JPEG_2000_LOSSLESS, JPEG_2000)
