"""Series assembly: one series' slices → an ordered HU volume with its geometry.

Dedupe on SOP Instance UID, keep the majority Rows×Columns / orientation /
pixel spacing, order along the slice normal (PS3.3 C.7.6.2.1.1), then
spacing, gaps and gantry tilt (:mod:`edge_agent.dicom.geometry`).
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from edge_agent.dicom import geometry
from edge_agent.dicom.model import Rejected, Series, Slice
from edge_agent.dicom.reader import AIR_HU, HEADER_FIELDS, pixel_hash, to_hu

_PARALLEL_FROM = 16  # slices; below this HU conversion runs in the calling thread


def assemble(slices: list[Slice], *, resample_tilt: bool = True) -> Series:
    """One series from its decoded slices: dedupe, check consistency, sort along the normal, stack.

    Duplicates (same SOP Instance UID) are dropped: an identical resend
    silently, a changed one keeps the newest file (mtime). Slices whose
    Rows×Columns, orientation or pixel spacing differ from the majority are
    left out as ``inconsistent``, as is a second image at the same position.
    A tilted stack is resampled onto the normal when ``resample_tilt``.
    Raises ``ValueError`` for an empty list, several series or undecoded slices.
    """
    return _assemble(list(slices), resample_tilt=resample_tilt, consume=False)


def _assemble(slices: list[Slice], *, resample_tilt: bool, consume: bool,
              rejected: list[Rejected] | None = None, workers: int = 1) -> Series:
    if any(s.hu is None and s.stored is None for s in slices):
        raise ValueError("assemble() needs decoded slices; read them with decode=True")
    rejected = list(rejected or [])
    warnings: list[str] = []
    ordered = plan(slices, rejected, warnings)
    reference = ordered[0]
    volume = np.empty((len(ordered), reference.rows, reference.columns), dtype=np.float32)
    _fill(volume, ordered, consume, workers)
    return finish(ordered, volume, rejected, warnings, resample_tilt=resample_tilt)


def plan(slices: list[Slice], rejected: list[Rejected], warnings: list[str]) -> list[Slice]:
    """The slices of one series that make its volume, in order along the normal (pixels not needed).

    Appends what it leaves out to ``rejected`` and its remarks to ``warnings``.
    """
    if not slices:
        raise ValueError("assemble() needs at least one slice")
    series_uids = {s.series_instance_uid for s in slices}
    if len(series_uids) != 1:
        raise ValueError(f"assemble() got slices of {len(series_uids)} series; group them by SeriesInstanceUID")
    series_uid = series_uids.pop()
    kept = _deduplicate(sorted(slices, key=lambda s: (s.path, s.frame)), rejected, warnings)
    kept = _consistent(kept, rejected)
    distances = geometry.along_normal(np.stack([s.position for s in kept]), kept[0].orientation)
    ordered: list[Slice] = []
    last: Slice | None = None
    last_distance = 0.0
    for i in np.argsort(distances, kind="stable"):
        s = kept[i]
        if last is not None and abs(distances[i] - last_distance) < geometry.SAME_POSITION_MM:
            rejected.append(Rejected(s.path, f"lies at the same position ({distances[i]:.2f} mm along the normal) "
                                             f"as {last.path}; one image per position is kept", "inconsistent",
                                     series_uid))
            continue
        ordered.append(s)
        last, last_distance = s, distances[i]
    if len(ordered) < len(kept):
        warnings.append(f"{len(kept) - len(ordered)} image(s) at an already occupied position left out")
    return ordered


def finish(ordered: list[Slice], volume: np.ndarray, rejected: list[Rejected], warnings: list[str], *,
           resample_tilt: bool) -> Series:
    """The Series around a filled volume: spacing, gaps, gantry tilt (resampled in place if asked)."""
    reference = ordered[0]
    orientation = reference.orientation
    positions_3d = np.stack([s.position for s in ordered])
    positions = geometry.along_normal(positions_3d, orientation)
    step, spacing_warnings = geometry.spacing_report(positions, reference.slice_thickness)
    warnings.extend(spacing_warnings)
    header_tilt = float(np.median([s.gantry_tilt for s in ordered]))
    stack_tilt = geometry.stack_tilt(positions_3d, orientation)
    tilt, corrected = header_tilt, False
    if stack_tilt > geometry.TILT_TOLERANCE_DEG:
        tilt = stack_tilt
        if resample_tilt:
            geometry.correct_shear(volume, positions_3d, orientation, reference.pixel_spacing, AIR_HU)
            corrected = True
            warnings.append(f"gantry tilt of {stack_tilt:.1f} degrees corrected by shear resampling onto the "
                            "slice normal")
        else:
            warnings.append(f"gantry tilt of {stack_tilt:.1f} degrees not corrected: slices are sheared")
    return Series(
        series_instance_uid=reference.series_instance_uid, study_instance_uid=reference.study_instance_uid,
        sop_instance_uids=[s.sop_instance_uid for s in ordered], hu=volume, positions=positions,
        spacing=(step, float(reference.pixel_spacing[0]), float(reference.pixel_spacing[1])),
        modality=reference.modality, body_part=reference.body_part,
        series_description=reference.series_description, study_description=reference.study_description,
        accession_number=reference.accession_number, slice_thickness=reference.slice_thickness,
        orientation=np.asarray(orientation, dtype=np.float64), pixel_spacing=reference.pixel_spacing,
        gantry_tilt=tilt, tilt_corrected=corrected, warnings=warnings, rejected=rejected,
        paths=[s.path for s in ordered], frames=[s.frame for s in ordered], origin=positions_3d[0].copy(),
        **{name: getattr(reference, name) for name in HEADER_FIELDS})


def _fill(volume: np.ndarray, ordered: list[Slice], consume: bool, workers: int) -> None:
    """Write each slice's HU into the volume (numpy releases the GIL: threads share the work)."""

    def fill(start: int, stop: int) -> None:
        for k in range(start, stop):
            s = ordered[k]
            if s.hu is not None:
                volume[k] = s.hu
            else:
                to_hu(s.stored, *s.rescale, out=volume[k])
            if consume:
                s.hu = s.stored = None  # free as we go: peak memory stays near one volume

    n = len(ordered)
    if workers <= 1 or n < _PARALLEL_FROM:
        fill(0, n)
        return
    bounds = np.linspace(0, n, workers + 1).astype(int)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dicom-hu") as pool:
        for future in [pool.submit(fill, int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]:
            future.result()


def _deduplicate(slices: list[Slice], rejected: list[Rejected], warnings: list[str]) -> list[Slice]:
    """Keep one slice per SOP Instance UID (identical resend: first; changed: newest mtime)."""
    by_uid: dict[str, Slice] = {}
    identical = changed = 0
    for s in slices:
        previous = by_uid.get(s.sop_instance_uid)
        if previous is None:
            by_uid[s.sop_instance_uid] = s
        elif previous.path == s.path and previous.frame == s.frame:
            continue  # the same file listed twice
        elif _content_hash(previous) == _content_hash(s):
            identical += 1
            rejected.append(Rejected(s.path, f"duplicate of {previous.path} (same SOP Instance UID and pixels)",
                                     "duplicate", s.series_instance_uid))
        else:
            changed += 1
            newer, older = (s, previous) if s.mtime > previous.mtime else (previous, s)
            by_uid[s.sop_instance_uid] = newer
            rejected.append(Rejected(older.path, f"superseded by {newer.path}: same SOP Instance UID with "
                                                 "different pixels, the newer file is kept", "duplicate",
                                     s.series_instance_uid))
    if identical:
        warnings.append(f"{identical} duplicate instance(s) dropped (same SOP Instance UID and pixels)")
    if changed:
        warnings.append(f"{changed} instance(s) resent with different pixels; the newest file kept")
    return list(by_uid.values())


def _content_hash(s: Slice) -> str:
    """The slice's hash, computed from its stored values when the reader left it out."""
    if not s.content_hash and s.stored is not None:
        s.content_hash = pixel_hash(np.ascontiguousarray(s.stored).data)
    return s.content_hash


def _key(s: Slice) -> tuple:
    return (s.rows, s.columns, tuple(np.round(s.orientation, 3)),
            tuple(round(float(v), 4) for v in s.pixel_spacing))


def _consistent(slices: list[Slice], rejected: list[Rejected]) -> list[Slice]:
    """Keep the slices that share the majority Rows×Columns, orientation and pixel spacing."""
    counts = Counter(_key(s) for s in slices)
    reference = max(counts, key=lambda k: counts[k])  # first seen wins ties
    kept = []
    for s in slices:
        key = _key(s)
        if key == reference:
            kept.append(s)
            continue
        if key[:2] != reference[:2]:
            what = f"is {s.rows}x{s.columns} pixels but the series is {reference[0]}x{reference[1]}"
        elif key[2] != reference[2]:
            what = "has an image orientation different from the rest of the series"
        else:
            what = f"has pixel spacing {key[3]} but the series has {reference[3]}"
        rejected.append(Rejected(s.path, f"{what}; it is left out of the volume", "inconsistent",
                                 s.series_instance_uid))
    return kept


