"""Shared machinery of the phantom generators: scanner geometry, soft shapes, noise.

Shapes are evaluated per slice on the scanner's pixel grid, in the patient
frame of the phantom (mm). Their edges are soft: a pixel's membership is the
fraction of a voxel (pixel size in plane, slice thickness through plane) that
the shape would cover, which models partial-volume averaging without
supersampling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from edge_agent.dicom.synth import SeriesHeaders

from edge_agent.hu import AIR_HU  # noqa: E402,F401 - one definition of air


@dataclass(frozen=True)
class Vendor:
    """How a scanner stores pixels (PS3.3 C.7.6.16.2.11 Pixel Padding, C.11.1 Rescale)."""

    manufacturer: str
    signed: bool
    rescale_intercept: float
    padding_value: int | None
    kernel: str          # the vendor's soft-tissue head kernel (ConvolutionKernel of soft / standard recons)
    sharp_kernel: str    # its bone / sharp head kernel (ConvolutionKernel of sharp recons)


VENDORS = (
    Vendor("GE MEDICAL SYSTEMS", True, -1024.0, -2000, "STND", "BONE"),   # padding -2000 stored = -3024 HU
    Vendor("SIEMENS", False, -1024.0, None, "H31s", "H70h"),               # outside circle stored as air
    Vendor("Philips", True, -1000.0, None, "UB", "D"),                     # intercept -1000, no padding
    Vendor("TOSHIBA", True, 0.0, -2000, "FC26", "FC30"),                   # stored = HU, padding -2000
)


@dataclass
class Acquisition:
    """One scan's geometry: where the slices are and how the phantom sits in them."""

    matrix: int
    pixel_spacing: float              # mm, square pixels
    thickness: float                  # mm; slices are contiguous (spacing = thickness)
    z_positions: np.ndarray           # mm, slice centres in the phantom frame (ascending)
    centre: tuple[float, float]       # phantom centre in the image plane (mm from the image centre)
    rotation: np.ndarray              # 3x3: phantom frame → scanner frame
    noise_sd: float                   # HU, per pixel
    noise_blur: float                 # pixels, noise correlation (reconstruction kernel)
    hu_offset: float                  # vendor calibration offset added to every tissue
    hu_scale: float                   # vendor calibration slope quirk around water
    vendor: Vendor
    extras: dict = field(default_factory=dict)

    def grid(self, z: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Phantom-frame coordinates (x, y, z) of every pixel of the slice at scanner height ``z``."""
        n = self.matrix
        axis = (np.arange(n, dtype=np.float32) - (n - 1) / 2.0) * self.pixel_spacing
        xs = axis[None, :] - self.centre[0]
        ys = axis[:, None] - self.centre[1]
        r = self.rotation.T.astype(np.float32)   # scanner → phantom
        # (x, y, z) = R^T @ (xs, ys, z); broadcast over the grid without building (3, n, n) twice.
        px = r[0, 0] * xs + r[0, 1] * ys + r[0, 2] * z
        py = r[1, 0] * xs + r[1, 1] * ys + r[1, 2] * z
        pz = r[2, 0] * xs + r[2, 1] * ys + r[2, 2] * z
        return px, py, pz

    def outside_mask(self) -> np.ndarray:
        """Pixels outside the reconstruction circle (scanners store padding there)."""
        n = self.matrix
        axis = np.arange(n, dtype=np.float32) - (n - 1) / 2.0
        return (axis[None, :] ** 2 + axis[:, None] ** 2) > (n / 2.0) ** 2


def rotation_matrix(yaw_deg: float, pitch_deg: float, roll_deg: float) -> np.ndarray:
    """Rotation about z (in-plane), then x (nodding), then y (tilting), in degrees."""
    a, b, c = (math.radians(v) for v in (yaw_deg, pitch_deg, roll_deg))
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    ry = np.array([[math.cos(c), 0, math.sin(c)], [0, 1, 0], [-math.sin(c), 0, math.cos(c)]])
    return rz @ rx @ ry


def soft_ellipsoid(
    p: tuple[np.ndarray, np.ndarray, np.ndarray],
    centre: tuple[float, float, float],
    axes: tuple[float, float, float],
    acq: Acquisition,
    *,
    yaw_deg: float = 0.0,
) -> np.ndarray:
    """Partial-volume membership (0..1) of an ellipsoid at the pixels ``p`` (phantom frame)."""
    x = p[0] - centre[0]
    y = p[1] - centre[1]
    z = p[2] - centre[2]
    if yaw_deg:
        c, s = math.cos(math.radians(yaw_deg)), math.sin(math.radians(yaw_deg))
        x, y = c * x + s * y, -s * x + c * y
    qx, qy, qz = x / axes[0], y / axes[1], z / axes[2]
    r = np.sqrt(qx * qx + qy * qy + qz * qz) + 1e-6
    # Signed distance ≈ (r - 1) * (distance along the ray); the surface normal's z part sets how
    # much the slice thickness smears the edge.
    dist = np.sqrt(x * x + y * y + z * z) + 1e-6
    sd = (r - 1.0) * dist / r
    nz = np.abs(qz / axes[2]) / (np.sqrt((qx / axes[0]) ** 2 + (qy / axes[1]) ** 2 + (qz / axes[2]) ** 2) + 1e-9)
    width = np.sqrt(acq.pixel_spacing ** 2 + (acq.thickness * nz) ** 2)
    return np.clip(0.5 - sd / width, 0.0, 1.0)


def box_of(acq: Acquisition, z: float, centre: tuple[float, float, float], radius: float) -> tuple[slice, slice] | None:
    """Pixel box of a sphere of ``radius`` (phantom frame) on the slice at ``z``; None when missed."""
    c = acq.rotation @ np.asarray(centre, float)
    dz = abs(c[2] - z)
    reach = radius + acq.thickness
    if dz > reach:
        return None
    half = math.sqrt(max(reach ** 2 - dz ** 2, 0.0)) + 2 * acq.pixel_spacing
    n = acq.matrix
    col = (c[0] + acq.centre[0]) / acq.pixel_spacing + (n - 1) / 2.0
    row = (c[1] + acq.centre[1]) / acq.pixel_spacing + (n - 1) / 2.0
    h = half / acq.pixel_spacing
    r0, r1 = max(int(row - h), 0), min(int(row + h) + 2, n)
    c0, c1 = max(int(col - h), 0), min(int(col + h) + 2, n)
    if r0 >= r1 or c0 >= c1:
        return None
    return slice(r0, r1), slice(c0, c1)


def sub(p: tuple[np.ndarray, ...], box: tuple[slice, slice]) -> tuple[np.ndarray, ...]:
    """The part of the coordinate arrays inside a pixel box."""
    return tuple(a[box] for a in p)


def paint(img: np.ndarray, m: np.ndarray, value: float | np.ndarray, box: tuple[slice, slice] | None = None) -> None:
    """Blend ``value`` into ``img`` with membership ``m`` (in place): img = img·(1-m) + value·m."""
    target = img if box is None else img[box]
    target += m * (value - target)


def slice_noise(acq: Acquisition, seed: int, k: int, shape: tuple[int, int]) -> np.ndarray:
    """Correlated Gaussian noise of standard deviation ``acq.noise_sd`` for slice ``k``."""
    rng = np.random.default_rng([seed, 7919, k])
    white = rng.standard_normal(shape, dtype=np.float32)
    if acq.noise_blur > 0.3:
        white = ndimage.gaussian_filter(white, acq.noise_blur, truncate=2.5)
        white *= 1.0 / max(float(white.std()), 1e-6)
    return white * np.float32(acq.noise_sd)


def streak(shape: tuple[int, int], p0: tuple[float, float], p1: tuple[float, float], width_px: float,
           amplitude: float, *, infinite: bool = False) -> np.ndarray:
    """A line artefact between two pixel points (row, col): ``amplitude`` · Gaussian profile across it."""
    rows = np.arange(shape[0], dtype=np.float32)[:, None]
    cols = np.arange(shape[1], dtype=np.float32)[None, :]
    d = np.array([p1[0] - p0[0], p1[1] - p0[1]], np.float32)
    length = float(np.hypot(*d)) + 1e-6
    d /= length
    t = (rows - p0[0]) * d[0] + (cols - p0[1]) * d[1]
    perp = (rows - p0[0]) * d[1] - (cols - p0[1]) * d[0]
    out = amplitude * np.exp(-0.5 * (perp / width_px) ** 2)
    if not infinite:
        out = out * ((t >= 0) & (t <= length))
    return out.astype(np.float32)


def apply_scanner(img: np.ndarray, acq: Acquisition, seed: int, k: int) -> np.ndarray:
    """Add noise and the vendor's calibration quirks to a noiseless slice.

    With ``acq.extras["recon"]`` (head phantoms) the kernel's sharpening/smoothing and noise texture
    of :mod:`edge_agent.phantoms._scanner` are used instead of plain correlated Gaussian noise."""
    tissue = img > -950
    img = np.where(tissue, (img * acq.hu_scale) + acq.hu_offset, img)
    recon = acq.extras.get("recon")
    if recon is None:
        img += slice_noise(acq, seed, k, img.shape)
        return img
    from edge_agent.phantoms._scanner import apply_recon, texture_noise

    img = apply_recon(img.astype(np.float32), recon)
    noise = texture_noise(np.random.default_rng([seed, 7919, k]), img.shape, recon)
    return (img + noise * np.float32(acq.noise_sd)).astype(np.float32)


def make_headers(rng: np.random.Generator, vendor: Vendor, *, body_part: str, study: str, series: str,
                 window: tuple[float, float], kvp: float) -> SeriesHeaders:
    """Scanner-like headers for a phantom series (synthetic identities only, no real PHI)."""
    return SeriesHeaders(
        patient_name="PHANTOM^" + body_part,
        patient_id=f"PH{rng.integers(10000, 99999)}",
        accession_number=f"ACC{rng.integers(100000, 999999)}",
        study_description=study,
        series_description=series,
        body_part=body_part,
        station_name=f"CT{rng.integers(1, 9)}-{vendor.manufacturer.split()[0][:4]}",
        manufacturer=vendor.manufacturer,
        kvp=kvp,
        rescale_intercept=vendor.rescale_intercept,
        signed=vendor.signed,
        padding_value=vendor.padding_value,
        window=window,
    )


def sample_acquisition(rng: np.random.Generator, *, spacing_range: tuple[float, float],
                       thickness: float | None, slices: int | None, coverage: tuple[float, float],
                       z_range: tuple[float, float], matrix: int, shift_mm: float, yaw: float, pitch: float,
                       noise: tuple[float, float], thickness_choices=(2.0, 2.5, 3.0, 4.0, 5.0),
                       thickness_p=None) -> Acquisition:
    """Draw a scan: field of view, slice thickness and count, pose of the phantom, noise, vendor."""
    px = float(rng.uniform(*spacing_range)) * 512.0 / matrix
    if thickness is None:
        thickness = float(rng.choice(list(thickness_choices), p=thickness_p))
    if slices is None:
        slices = int(np.clip(round(rng.uniform(*coverage) / thickness), 8, 80))
    extent = slices * thickness
    lo, hi = z_range
    if extent >= hi - lo:
        z0 = (lo + hi) / 2.0 - extent / 2.0
    else:
        z0 = float(rng.uniform(lo, hi - extent))
    z_positions = z0 + thickness * (np.arange(slices) + 0.5)
    vendor = VENDORS[int(rng.integers(len(VENDORS)))]
    return Acquisition(
        matrix=matrix,
        pixel_spacing=px,
        thickness=thickness,
        z_positions=z_positions.astype(np.float64),
        centre=(float(rng.uniform(-shift_mm, shift_mm)), float(rng.uniform(-shift_mm, shift_mm))),
        rotation=rotation_matrix(rng.uniform(-yaw, yaw), rng.uniform(-pitch, pitch), rng.uniform(-3, 3)),
        noise_sd=float(rng.uniform(*noise)),
        noise_blur=float(rng.uniform(0.4, 1.2)),
        hu_offset=float(rng.uniform(-20, 20)),
        hu_scale=float(rng.uniform(0.97, 1.03)),
        vendor=vendor,
    )
