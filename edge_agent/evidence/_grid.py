"""Shared pixel machinery of the evidence checks: a coarse analysis grid and geometry helpers.

Every check works on a copy of the slice cropped to the object (anything denser
than -500 HU, which is tissue, bone, plastic or water and never air) and
block-averaged by an integer factor to about 1 mm pixels. Block averaging is
the physically honest downsampling for CT: each coarse pixel is the mean HU of
the tissue it covers (a larger voxel), so partial volume behaves as on a
scanner with larger pixels, and uncorrelated noise falls by the factor. The
models see 1.8–2.2 mm pixels; the evidence looks about twice as finely.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

OBJECT_HU = -500.0
"""Anything above this is matter (soft tissue, bone, water, plastic); below, air or lung."""


@dataclass
class Grid:
    """A slice on the analysis grid, and how to map its pixels back to the original image."""

    hu: np.ndarray               # float32 (rows, cols): block means
    spacing: tuple[float, float]  # mm per coarse pixel (row, col)
    factor: int                  # original pixels per coarse pixel along each axis
    origin: tuple[int, int]      # original (row, col) of the coarse grid's top-left block
    field: np.ndarray            # bool: coarse pixels inside the reconstructed field (not padding)
    touches_edge: float          # fraction of the crop border that is matter (body cut by the field)

    @property
    def pixel_mm2(self) -> float:
        return self.spacing[0] * self.spacing[1]

    def to_original(self, r: float, c: float) -> tuple[float, float]:
        """Coarse (row, col) (pixel centres, fractional allowed) → original (row, col)."""
        f = self.factor
        return self.origin[0] + (r + 0.5) * f - 0.5, self.origin[1] + (c + 0.5) * f - 0.5


def make_grid(hu: np.ndarray, pixel_spacing: tuple[float, float], target_mm: float) -> Grid | None:
    """Crop to the object and block-average to about ``target_mm``; None when the slice holds no matter."""
    img = np.asarray(hu, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError("slice_features expects one 2-D slice")
    sr, sc = (float(v) for v in pixel_spacing)
    matter = img > OBJECT_HU
    rows = np.flatnonzero(matter.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(matter.any(axis=0))
    f = max(1, int(round(target_mm / min(sr, sc))))
    pad = 2 * f
    r0, r1 = max(rows[0] - pad, 0), min(rows[-1] + 1 + pad, img.shape[0])
    c0, c1 = max(cols[0] - pad, 0), min(cols[-1] + 1 + pad, img.shape[1])
    r1 = r0 + max((r1 - r0) // f, 1) * f
    c1 = c0 + max((c1 - c0) // f, 1) * f
    crop = img[r0:r1, c0:c1]
    if crop.shape[0] < f or crop.shape[1] < f:
        return None
    h, w = crop.shape[0] // f, crop.shape[1] // f
    crop = crop[: h * f, : w * f]
    coarse = crop.reshape(h, f, w, f).mean(axis=(1, 3), dtype=np.float32) if f > 1 else crop.copy()
    if (img <= -1023.5).any():
        # outside the field: padding / air-at-the-clip that reaches the crop's border. Gas enclosed by the
        # body (trachea, bronchi, bullae) can read -1000 and below on a noisy (lung-kernel) scan: it is not
        # padding, and treating it as such would join the lungs to the outside air.
        low = coarse <= -1000.0
        edge = np.zeros(low.shape, bool)
        edge[0, :] = edge[-1, :] = edge[:, 0] = edge[:, -1] = True
        field = ~reconstruct(edge, low)
    else:
        field = np.ones(coarse.shape, bool)
    # how much of the image border is matter: a body cut by the field of view (small FOV)
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    circle = _field_border(img)
    touches = float((circle > OBJECT_HU).mean()) if circle.size else float((border > OBJECT_HU).mean())
    return Grid(coarse, (sr * f, sc * f), f, (int(r0), int(c0)), field, touches)


def _field_border(img: np.ndarray) -> np.ndarray:
    """HU just inside the edge of the reconstructed field (the circle, where padding marks it)."""
    n0, n1 = img.shape
    pad = img <= -1023.5
    if pad.mean() < 0.1:   # no padding outside the circle: the field is the whole image
        return np.concatenate([img[1], img[-2], img[:, 1], img[:, -2]])
    ang = np.linspace(0, 2 * math.pi, 256, endpoint=False)
    rr = (n0 - 1) / 2.0 + np.sin(ang) * (n0 / 2.0 - 3)
    cc = (n1 - 1) / 2.0 + np.cos(ang) * (n1 / 2.0 - 3)
    return img[np.clip(rr.astype(int), 0, n0 - 1), np.clip(cc.astype(int), 0, n1 - 1)]


def reconstruct(seeds: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Components of ``mask`` (8-connected) that contain a seed: geodesic reconstruction, by labelling."""
    labels, n = ndimage.label(mask, ndimage.generate_binary_structure(2, 2))
    if n == 0:
        return np.zeros(mask.shape, bool)
    hit = np.zeros(n + 1, bool)
    hit[labels[seeds & mask]] = True
    hit[0] = False
    return hit[labels]


def disc(radius_px: float) -> np.ndarray:
    """Boolean disc structuring element of the given radius (pixels)."""
    r = max(int(math.floor(radius_px)), 1)
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return (yy * yy + xx * xx) <= radius_px * radius_px + 1e-6


def smooth(x: np.ndarray, sigma_mm: float, spacing: tuple[float, float]) -> np.ndarray:
    """Light Gaussian smoothing (noise) with a physical width."""
    if sigma_mm <= 0:
        return x
    return ndimage.gaussian_filter(x, (sigma_mm / spacing[0], sigma_mm / spacing[1]), truncate=2.0)


def enclosed(mask: np.ndarray) -> np.ndarray:
    """Pixels not in ``mask`` that see ``mask`` in all four axis directions (ray enclosure).

    ``binary_fill_holes`` needs a closed ring; a skull-base slice is open (foramen
    magnum, orbits, sutures at partial volume). A pixel surrounded by bone left,
    right, above and below is inside the skull's outline even where the ring has gaps.
    """
    m = mask
    left = np.maximum.accumulate(m, axis=1)
    right = np.maximum.accumulate(m[:, ::-1], axis=1)[:, ::-1]
    up = np.maximum.accumulate(m, axis=0)
    down = np.maximum.accumulate(m[::-1], axis=0)[::-1]
    return left & right & up & down & ~m


def axis_ratio(mask: np.ndarray) -> float:
    """Minor/major axis ratio of a region from its second moments (1 = disc)."""
    rr, cc = np.nonzero(mask)
    if rr.size < 5:
        return 0.0
    cov = np.cov(np.vstack([rr, cc]).astype(np.float64))
    ev = np.linalg.eigvalsh(cov)
    return float(math.sqrt(max(ev[0], 1e-9) / max(ev[1], 1e-9)))


def series_spacing(positions_mm: list[float], thickness: float | None) -> float:
    """Slice spacing along the normal: median step of the positions, else the thickness, else 5 mm."""
    pos = np.asarray(positions_mm, dtype=np.float64)
    if pos.size >= 2:
        steps = np.abs(np.diff(pos))
        steps = steps[steps > 1e-3]
        if steps.size:
            return float(np.median(steps))
    return float(thickness) if thickness else 5.0


def lps_box(points: list[tuple[int, float, float]], image_positions, orientation, pixel_spacing) -> dict | None:
    """Patient (LPS) bounding box of (slice index, original row, original col) points.

    PS3.3 C.7.6.2.1.1: P = IPP + col·Δc·F_row + row·Δr·F_col, with F_row the first
    direction cosine triplet of Image Orientation (Patient), Δc = PixelSpacing[1],
    Δr = PixelSpacing[0].
    """
    if not points or image_positions is None or orientation is None or pixel_spacing is None:
        return None
    f_row = np.asarray(orientation[:3], float)
    f_col = np.asarray(orientation[3:6], float)
    dr, dc = float(pixel_spacing[0]), float(pixel_spacing[1])
    pts = []
    for k, r, c in points:
        if not 0 <= k < len(image_positions) or image_positions[k] is None:
            return None
        pts.append(np.asarray(image_positions[k], float) + c * dc * f_row + r * dr * f_col)
    arr = np.vstack(pts)
    return {"min": [round(float(v), 1) for v in arr.min(axis=0)],
            "max": [round(float(v), 1) for v in arr.max(axis=0)]}
