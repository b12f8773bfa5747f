"""Reconstruction kernels: what kind of kernel a ConvolutionKernel value names, per manufacturer.

Kernel names are vendor-specific; the same letters mean different things on
different scanners (Philips ``B`` is a standard body kernel, Siemens ``B70f``
a sharp one). :func:`classify` returns one of :data:`KINDS` — ``soft``
(soft-tissue / standard / brain), ``sharp`` (medium-sharp and sharp body
kernels, used for lung as well as bone), ``lung`` (lung-optimised), ``bone``
(bone, edge and ultra-high-resolution kernels) — or ``None`` for a name this
table does not know. The table (docs/MANIFEST.md, "Reconstruction kernels")
follows the vendors' naming conventions; a site adds or overrides kernels
with patterns in the manifest or the agent's config, never by editing code.
"""

from __future__ import annotations

import re

KINDS = ("soft", "sharp", "lung", "bone")
KIND_WORDS = {"soft": "soft-tissue", "sharp": "sharp", "lung": "lung", "bone": "bone"}

# Words that mean the same on every scanner (GE names its kernels this way; Canon AiCE/AIDR
# and Philips IMR add words to theirs): checked for every manufacturer, known or not.
_GENERIC = (
    (r"BONE|EDGE|ULTRA|EXTR?A\s*SHARP", "bone"),
    (r"LUNG", "lung"),
    (r"SHARP|CRISP", "sharp"),
    (r"SOFT|SMOOTH|STANDARD|STND|STD|BRAIN|HEAD|BODY|ROUTINE|DETAIL", "soft"),
)

# (manufacturer word, [(regex on the whole kernel value, kind)]). Regexes are full matches.
_VENDORS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    # GE: SOFT, STANDARD, DETAIL, CHEST, LUNG, BONE, BONEPLUS, EDGE, ULTRA (HD variants alike)
    ("GE", ((r"(HD\s*)?CHEST", "sharp"),)),
    # Siemens: family letter(s) + resolution index (+ rotation/version letter): H31s, Hr38, Br40d,
    # Bl57, Hr64h, I70f (SAFIRE body), J70h (SAFIRE head), U90u (UHR), S80s (special/physics)
    ("SIEMENS", (
        (r"[A-Z]L\d{2}[A-Z]?", "lung"),                       # Bl57, Bl64: lung-optimised
        (r"(H|HR|HC|HF|HV|J|JR|JV)([6-9]\d)[A-Z]?", "bone"),  # head family ≥ 60: bone
        (r"(U|UR|S|SR)\d{2}[A-Z]?", "bone"),                  # ultra-high-resolution / special
        (r"[A-Z]{1,2}([5-9]\d)[A-Z]?", "sharp"),              # any other family ≥ 50: sharp
        (r"[A-Z]{1,2}([0-4]\d)[A-Z]?", "soft"),               # ≤ 49: soft / standard
    )),
    # Philips: A, B (body), C (sharper), D (sharp), E/EA-ED (extra sharp), L (lung), UA-UC (brain),
    # YA-YF (sharp "Y" filters)
    ("PHILIPS", (
        (r"E[A-D]?|EE", "bone"),
        (r"L[A-C]?", "lung"),
        (r"C|D|Y[A-F]", "sharp"),
        (r"A|B|CB|U[A-C]", "soft"),
    )),
    # Canon / Toshiba: FC01-FC29 body and head soft tissue (FC26 brain), FC30-FC39 head bone,
    # FC50-FC59 lung, FC80-FC89 high-resolution bone and lung
    ("TOSHIBA|CANON", (
        (r"FC3\d", "bone"),
        (r"FC5\d", "lung"),
        (r"FC8\d", "sharp"),
        (r"FC[0-2]\d", "soft"),
    )),
)
# Names distinctive enough to classify even when Manufacturer is absent or another vendor's.
_DISTINCTIVE = ("TOSHIBA|CANON", "SIEMENS")  # FC30 would pass as a Siemens name: Canon first


def _vendor(manufacturer: str) -> str | None:
    for key, _ in _VENDORS:
        if re.search(rf"(?<![A-Z])({key})(?![A-Z])", manufacturer):
            return key
    return None


def _table(key: str) -> tuple[tuple[str, str], ...]:
    return next(rules for name, rules in _VENDORS if name == key)


def classify(kernel: str, manufacturer: str | None = None) -> str | None:
    """The kind of one kernel value (``soft``/``sharp``/``lung``/``bone``), or None when unknown.

    The manufacturer's own table is tried first, then the words every
    vendor uses (BONE, LUNG, SHARP, STANDARD, ...), then the tables whose
    names cannot be mistaken (Siemens, Canon/Toshiba).
    """
    name = " ".join(str(kernel).upper().split())
    if not name:
        return None
    vendor = _vendor(" ".join(str(manufacturer or "").upper().split()))
    tables = [_table(vendor)] if vendor else []
    for rules in tables:
        for pattern, kind in rules:
            if re.fullmatch(pattern, name):
                return kind
    for pattern, kind in _GENERIC:
        if re.search(rf"(?<![A-Z])({pattern})", name):
            return kind
    for key in _DISTINCTIVE:
        if key == vendor:
            continue
        for pattern, kind in _table(key):
            if re.fullmatch(pattern, name):
                return kind
    return None


def vendor_word(manufacturer: str | None) -> str | None:
    """Which vendor table a Manufacturer value selects (``GE``, ``SIEMENS``, ...), or None."""
    return _vendor(" ".join(str(manufacturer or "").upper().split()))
