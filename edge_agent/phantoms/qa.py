"""Physical QA phantoms as scanned with a clinical head protocol: a hard negative for head models.

A water-filled acrylic cylinder (diameter 160–220 mm, wall 3–8 mm) with, on
some modules, rods of test materials (air, polyethylene, acrylic, Delrin,
Teflon/bone-equivalent, low-contrast rods a few HU above water), a
high-contrast resolution bar module or a uniform water module; the table
under it; scanned with head protocols (0.6–5 mm, soft to bone kernels, FBP or
iterative). No blood anywhere: every slice is negative.
"""

from __future__ import annotations

import math

import numpy as np

from edge_agent.phantoms import _scanner
from edge_agent.phantoms._geometry import AIR_HU, apply_scanner, make_headers, sample_acquisition

MATERIALS = {"air": -1000.0, "polyethylene": -95.0, "ldpe": -100.0, "acrylic": 120.0, "delrin": 340.0,
             "teflon": 950.0, "bone50": 700.0, "polystyrene": -35.0}


def _disc(xx, yy, cx, cy, r, px):
    return np.clip(0.5 - (np.hypot(xx - cx, yy - cy) - r) / px, 0.0, 1.0).astype(np.float32)


def generate_qa(seed: int, *, slices: int | None = None, thickness_mm: float | None = None,
                matrix: int = 512, force: dict | None = None) -> dict:
    """Images and acquisition of a QA-phantom series (same keys as :func:`generate_head`)."""
    force = dict(force or {})
    rng = np.random.default_rng([seed, 31])
    acq = sample_acquisition(rng, spacing_range=(0.4, 0.6), thickness=thickness_mm, slices=slices,
                             coverage=(40.0, 160.0), z_range=(-80.0, 80.0), matrix=matrix, shift_mm=15.0,
                             yaw=180.0, pitch=1.0, noise=(2.0, 7.0),
                             thickness_choices=(0.625, 1.0, 1.25, 2.5, 5.0), thickness_p=(0.15, 0.2, 0.1, 0.2, 0.35))
    recon = _scanner.draw_recon(np.random.default_rng([seed, 32]), acq.thickness, force)
    acq.extras.update(recon=recon, streaks=[], motion=None, metal=[])
    acq.noise_sd, acq.noise_blur = recon["noise_sd"], recon["sigma"]
    radius = float(rng.uniform(80.0, 110.0))
    wall = float(rng.uniform(3.0, 8.0))
    water = float(rng.uniform(-4.0, 6.0))
    # modules along z: (z0, z1, kind, parameters)
    modules, z = [], -80.0
    while z < 80.0:
        length = float(rng.uniform(20.0, 45.0))
        kind = str(rng.choice(["inserts", "uniform", "low_contrast", "bars"], p=[0.4, 0.2, 0.25, 0.15]))
        rods = []
        if kind == "inserts":
            names = list(rng.choice(list(MATERIALS), size=int(rng.integers(4, 9))))
            ring = rng.uniform(0.35, 0.65) * radius
            for i, name in enumerate(names):
                ang = 2 * math.pi * i / len(names) + rng.uniform(-0.1, 0.1)
                rods.append((ring * math.cos(ang), ring * math.sin(ang), float(rng.uniform(4.0, 12.5)),
                             MATERIALS[name] + float(rng.uniform(-20, 20))))
        elif kind == "low_contrast":
            ring = rng.uniform(0.3, 0.6) * radius
            for i in range(int(rng.integers(6, 12))):
                ang = 2 * math.pi * i / 10
                rods.append((ring * math.cos(ang), ring * math.sin(ang), float(rng.uniform(1.0, 8.0)),
                             water + float(rng.uniform(3.0, 60.0))))
        elif kind == "bars":
            for i in range(int(rng.integers(4, 9))):
                ang = 2 * math.pi * i / 8
                rods.append((0.5 * radius * math.cos(ang), 0.5 * radius * math.sin(ang), float(rng.uniform(0.5, 2.0)),
                             float(rng.uniform(1000.0, 2500.0))))
        modules.append((z, z + length, kind, rods))
        z += length
    images = []
    n = acq.matrix
    for k, zk in enumerate(acq.z_positions):
        x, y, _ = acq.grid(float(zk))
        img = np.full((n, n), AIR_HU, np.float32)
        px = acq.pixel_spacing
        img += _disc(x, y, 0, 0, radius, px) * (120.0 - AIR_HU)
        img += _disc(x, y, 0, 0, radius - wall, px) * (water - 120.0)
        table_y = radius + float(rng.uniform(5.0, 30.0)) if k == 0 else table_y
        img += (np.clip(0.5 - np.abs(y - table_y - 6) / 6 + (np.abs(x) > 150) * -9, 0, 1)
                * (200.0 - AIR_HU)).astype(np.float32)
        for z0, z1, kind, rods in modules:
            if z0 <= zk < z1:
                for cx, cy, r, hu in rods:
                    m = _disc(x, y, cx, cy, r, px)
                    img += m * (hu - img)
        images.append(apply_scanner(_scanner.apply_recon(img, {"sharpen": 0, "smooth": 0}), acq, seed, k))
    headers = make_headers(rng, acq.vendor, body_part="HEAD", study=str(rng.choice(["QA HEAD", "CT HEAD",
                                                                                  "PHANTOM DAILY QA"])),
                           series=f"AXIAL {acq.thickness:g}mm {acq.vendor.kernel}", window=(40.0, 80.0), kvp=120.0)
    return {"acq": acq, "images": images, "headers": headers, "modules": [(m[0], m[1], m[2]) for m in modules]}
