"""Slice geometry: order along the normal, spacing, gaps, gantry tilt.

Positions come from Image Position (Patient) projected on the slice normal
``cross(row_cosines, col_cosines)`` (PS3.3 C.7.6.2.1.1), never from
InstanceNumber or SliceLocation. A stack whose direction leaves the normal
(gantry tilt, PS3.3 C.8.2.1 Gantry/Detector Tilt) is sheared in-plane; it is
resampled back onto the normal here (the shear correction dcm2niix and
dicom2nifti apply).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

TILT_TOLERANCE_DEG = 0.1  # below this the stack counts as straight (rounded DS values)
GAP_FACTOR = 1.5          # a step this many times the median spacing is a gap
UNEVEN_TOLERANCE = 0.05   # relative spread of steps that counts as uneven
SAME_POSITION_MM = 0.01


def normal(orientation: np.ndarray) -> np.ndarray:
    """Unit slice normal from the six direction cosines."""
    orientation = np.asarray(orientation, dtype=np.float64)
    n = np.cross(orientation[:3], orientation[3:])
    length = np.linalg.norm(n)
    return n / length if length > 0 else np.array([0.0, 0.0, 1.0])


def along_normal(positions: np.ndarray, orientation: np.ndarray) -> np.ndarray:
    """Distance of each ImagePositionPatient along the slice normal, mm."""
    return np.asarray(positions, dtype=np.float64).reshape(-1, 3) @ normal(orientation)


def spacing_report(distances: np.ndarray, thickness: float | None) -> tuple[float, list[str]]:
    """Median step of sorted ``distances`` and warnings for gaps and uneven steps."""
    warnings: list[str] = []
    if len(distances) < 2:
        warnings.append("single slice: spacing along the normal taken from SliceThickness")
        return float(thickness or 0.0), warnings
    steps = np.diff(distances)
    step = float(np.median(steps))
    if step <= 0:
        return 0.0, ["all slices share one position"]
    gaps = np.nonzero(steps > GAP_FACTOR * step)[0]
    for i in gaps[:5]:
        missing = int(round(steps[i] / step)) - 1
        warnings.append(f"gap of {steps[i]:.2f} mm between {distances[i]:.2f} and {distances[i + 1]:.2f} mm "
                        f"along the normal (median spacing {step:.2f} mm): about {missing} slice(s) missing")
    if len(gaps) > 5:
        warnings.append(f"{len(gaps) - 5} more gaps")
    regular = np.delete(steps, gaps)
    if len(regular) and regular.max() - regular.min() > max(UNEVEN_TOLERANCE * step, 0.01):
        warnings.append(f"uneven slice spacing: steps from {regular.min():.3f} to {regular.max():.3f} mm "
                        f"(median {step:.3f} mm)")
    if thickness and abs(thickness - step) > 0.25 * step and not len(gaps):
        warnings.append(f"spacing {step:.2f} mm differs from SliceThickness {thickness:.2f} mm "
                        "(overlapping or spaced reconstruction)")
    return step, warnings


def stack_tilt(positions: np.ndarray, orientation: np.ndarray) -> float:
    """Angle in degrees between the stack direction (first → last position) and the normal."""
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    if len(positions) < 2:
        return 0.0
    direction = positions[-1] - positions[0]
    length = np.linalg.norm(direction)
    if length == 0:
        return 0.0
    cosine = abs(float(direction @ normal(orientation))) / length
    return float(np.degrees(np.arccos(min(1.0, cosine))))


def correct_shear(volume: np.ndarray, positions: np.ndarray, orientation: np.ndarray,
                  pixel_spacing: tuple[float, float], fill: float = -1024.0) -> None:
    """Resample a tilted stack in place so every slice lines up with the first along the normal.

    Slice ``k`` starts ``off_k = p_k - p_0 - ((p_k - p_0)·n) n`` away from
    where a straight stack would put it; its content is moved by that offset
    (bilinear, ``fill`` outside) so voxel (k, i, j) sits at
    ``p_0 + d_k n + j dx row + i dy col``.
    """
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    orientation = np.asarray(orientation, dtype=np.float64)
    n = normal(orientation)
    row_dir, col_dir = orientation[:3], orientation[3:]
    dy, dx = pixel_spacing
    scratch = np.empty(volume.shape[1:], dtype=volume.dtype)
    for k in range(1, len(positions)):
        delta = positions[k] - positions[0]
        offset = delta - (delta @ n) * n
        shift = (float(offset @ col_dir) / dy, float(offset @ row_dir) / dx)
        if abs(shift[0]) < 1e-3 and abs(shift[1]) < 1e-3:
            continue
        ndimage.shift(volume[k], shift, output=scratch, order=1, mode="constant", cval=fill, prefilter=False)
        volume[k] = scratch
