"""Chest CT phantom with optional pulmonary nodule.

Anatomy (phantom frame, mm; x to the patient's left, y posterior, z superior):
body wall (fat, muscle), ribs, vertebra with spinal canal, mediastinum
(heart, aorta), lungs around -850 HU with a dependent density gradient, a
branching vessel tree and airways (trachea, main bronchi with walls).
Findings: solid (-50..60 HU) or ground-glass (-700..-350 HU) nodules,
4–30 mm, lobulated. Confounders that are not nodules: vessel cross-sections,
linear and band-like scars.
"""

from __future__ import annotations

import math

import numpy as np

from edge_agent.phantoms._geometry import (
    AIR_HU,
    Acquisition,
    apply_scanner,
    box_of,
    make_headers,
    paint,
    sample_acquisition,
    soft_ellipsoid,
    sub,
)

NODULE_TYPES = ("solid", "ground_glass")
MIN_LABEL_AREA_MM2 = 8.0


def _vessel_tree(rng: np.random.Generator, hilum: np.ndarray, side: float) -> list[tuple]:
    """Segments (a, b, radius) of a branching pulmonary vessel tree starting at the hilum."""
    segs = []
    stack = []
    for zdir in np.linspace(-0.95, 0.95, 6):   # trunks fanning out from the hilum, apex to base
        u = np.array([side * rng.uniform(0.2, 0.7), rng.uniform(-0.6, 0.6), zdir * rng.uniform(1.0, 2.5)])
        stack.append((hilum, u / np.linalg.norm(u), rng.uniform(30, 45), rng.uniform(3.0, 5.0), 0))
    while stack:
        a, u, length, r, depth = stack.pop()
        b = a + u * length
        segs.append((a, b, r))
        if depth < 4:
            for _ in range(2):
                v = u + rng.normal(0, 0.5, 3)
                v[0] += side * 0.1
                stack.append((b, v / np.linalg.norm(v), length * rng.uniform(0.6, 0.8), r * 0.7, depth + 1))
    return segs


def _anatomy(rng: np.random.Generator) -> dict:
    s = rng.uniform(0.88, 1.15)
    body = (160.0 * s * rng.uniform(0.9, 1.1), 110.0 * s * rng.uniform(0.9, 1.1))
    lung_axes = (body[0] * 0.36, body[1] * 0.72, 135.0 * s)
    a = {
        "body": body,
        "fat": rng.uniform(8.0, 25.0),
        "muscle": rng.uniform(6.0, 14.0),
        "fat_hu": rng.uniform(-110.0, -80.0),
        "muscle_hu": rng.uniform(35.0, 55.0),
        "lung_hu": rng.uniform(-890.0, -830.0),
        "gradient_hu": rng.uniform(0.0, 60.0),
        "lungs": [((sx * body[0] * 0.42, 5.0, 0.0), lung_axes) for sx in (-1.0, 1.0)],
        "heart": ((body[0] * 0.08, -body[1] * 0.2, -50.0 * s), (60.0 * s, 50.0 * s, 50.0 * s)),
        "blood_hu": rng.uniform(30.0, 50.0),
        "spine": (0.0, body[1] * 0.72, rng.uniform(14.0, 20.0)),
        "rib_hu": rng.uniform(500.0, 900.0),
        "trachea_r": rng.uniform(7.0, 10.0),
        "confounders": [],
    }
    a["vessels"] = []
    for (c, ax), side in zip(a["lungs"], (-1.0, 1.0)):
        hilum = np.array([c[0] - side * ax[0] * 0.55, 0.0, 0.0])
        a["vessels"] += _vessel_tree(rng, hilum, side)
    scars = []
    for _ in range(int(rng.integers(0, 4))):
        li = int(rng.integers(2))
        c, ax = a["lungs"][li]
        u = rng.normal(size=3)
        u *= rng.uniform(0.3, 0.8) / np.linalg.norm(u)
        p = np.array(c) + u * np.array(ax)
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)
        length = rng.uniform(10.0, 30.0)
        scars.append((p - d * length / 2, p + d * length / 2, rng.uniform(0.8, 2.0), rng.uniform(-300.0, 20.0)))
    a["scars"] = scars
    if scars:
        a["confounders"].append("scar")
    return a


def _nodule(rng: np.random.Generator, a: dict, kind: str, diameter: float) -> dict:
    li = int(rng.integers(2))
    c, ax = a["lungs"][li]
    u = rng.normal(size=3)
    u *= rng.uniform(0.1, 0.75) / np.linalg.norm(u)
    centre = tuple(np.array(c) + u * np.array(ax))
    hu = rng.uniform(-50.0, 60.0) if kind == "solid" else rng.uniform(-700.0, -350.0)
    r = diameter / 2
    parts = [(centre, (r, r * rng.uniform(0.8, 1.0), r * rng.uniform(0.8, 1.0)), float(rng.uniform(0, 180)))]
    if diameter > 8 and rng.random() < 0.5:   # lobulation
        off = rng.normal(size=3) * r * 0.45
        parts.append((tuple(np.add(centre, off)), (r * 0.6, r * 0.6, r * 0.6), 0.0))
    return {"type": kind, "hu": float(hu), "diameter": float(diameter), "parts": parts}


def _capsule(p, a, b, r, acq: Acquisition) -> np.ndarray:
    ab = b - a
    ll = float(ab @ ab) + 1e-9
    t = np.clip(((p[0] - a[0]) * ab[0] + (p[1] - a[1]) * ab[1] + (p[2] - a[2]) * ab[2]) / ll, 0.0, 1.0)
    dx, dy, dz = p[0] - a[0] - t * ab[0], p[1] - a[1] - t * ab[1], p[2] - a[2] - t * ab[2]
    dist = np.sqrt(dx * dx + dy * dy + dz * dz)
    uz = abs(ab[2]) / math.sqrt(ll)
    w = math.sqrt(acq.pixel_spacing ** 2 + 0.5 * (acq.thickness * math.sqrt(max(1 - uz * uz, 0.0))) ** 2)
    return np.clip(0.5 - (dist - r) / w, 0.0, 1.0)


def _render_slice(a: dict, nod: dict | None, acq: Acquisition, z: float, seed: int,
                  k: int) -> tuple[np.ndarray, float, np.ndarray]:
    """One noisy slice, the nodule's visible area (mm², voxels ≥ half nodule) and its mask."""
    p = acq.grid(z)
    x, y, zz = p
    n = acq.matrix
    img = np.full((n, n), AIR_HU, np.float32)
    bx, by = a["body"]
    taper = 1.0 - 0.15 * np.clip((zz - 60.0) / 120.0, 0.0, 1.0)   # narrower towards the apices
    r = np.sqrt((x / (bx * taper)) ** 2 + (y / (by * taper)) ** 2) + 1e-6
    d = (r - 1.0) * np.sqrt(x * x + y * y) / r
    w = acq.pixel_spacing
    paint(img, np.clip(0.5 - d / w, 0, 1), a["fat_hu"])
    paint(img, np.clip(0.5 - (d + a["fat"]) / w, 0, 1), a["muscle_hu"])
    inner = np.clip(0.5 - (d + a["fat"] + a["muscle"]) / w, 0, 1)
    paint(img, inner, a["fat_hu"] + 40.0)
    # ribs: short bony arcs just inside the muscle, in a ring pattern that shifts with z
    theta = np.arctan2(y, x)
    rib = (np.cos(theta * 14.0 + zz * 0.25) > 0.55) & (np.abs(d + a["fat"] + a["muscle"] + 4.0) < 4.0)
    paint(img, rib.astype(np.float32), a["rib_hu"])
    # lungs with a dependent (posterior) density gradient
    lung_m = np.zeros((n, n), np.float32)
    for c, ax in a["lungs"]:
        box = box_of(acq, z, c, max(ax))
        if box is not None:
            m = soft_ellipsoid(sub(p, box), c, ax, acq)
            lung_m[box] = np.maximum(lung_m[box], m)
    lung_val = a["lung_hu"] + a["gradient_hu"] * np.clip((y + by * 0.5) / by, 0.0, 1.0)
    paint(img, lung_m, lung_val)
    for c, ax in [a["heart"]]:
        box = box_of(acq, z, c, max(ax))
        if box is not None:
            paint(img, soft_ellipsoid(sub(p, box), c, ax, acq), a["blood_hu"], box)
    # vessels (only inside the lungs) and airways
    for va, vb, vr in a["vessels"]:
        mid = (va + vb) / 2
        box = box_of(acq, z, tuple(mid), float(np.linalg.norm(vb - va)) / 2 + vr)
        if box is not None:
            m = _capsule(sub(p, box), va, vb, vr, acq) * lung_m[box]
            paint(img, m, a["blood_hu"], box)
    tr = a["trachea_r"]
    for ta, tb, rr in [(np.array([0.0, 0.0, 160.0]), np.array([0.0, 0.0, 35.0]), tr),
                       (np.array([0.0, 0.0, 35.0]), np.array([-45.0, 0.0, 10.0]), tr * 0.7),
                       (np.array([0.0, 0.0, 35.0]), np.array([45.0, 0.0, 10.0]), tr * 0.7)]:
        box = box_of(acq, z, tuple((ta + tb) / 2), float(np.linalg.norm(tb - ta)) / 2 + rr + 3)
        if box is not None:
            q = sub(p, box)
            paint(img, _capsule(q, ta, tb, rr + 1.8, acq), a["muscle_hu"] + 30.0, box)
            paint(img, _capsule(q, ta, tb, rr, acq), -990.0, box)
    for sa, sb, sr, shu in a["scars"]:
        box = box_of(acq, z, tuple((sa + sb) / 2), float(np.linalg.norm(sb - sa)) / 2 + sr)
        if box is not None:
            paint(img, _capsule(sub(p, box), sa, sb, sr, acq) * lung_m[box], shu, box)
    # aorta (descending, left of the spine) and the vertebra with its canal
    sx, sy, sr = a["spine"]
    for c, rad, hu in (((bx * 0.12, sy - 30.0), 12.0, a["blood_hu"]), ((sx, sy), sr, 300.0),
                       ((sx, sy), sr - 2.0, 180.0), ((sx, sy + sr + 7.0), 6.5, 15.0)):
        m = np.clip(0.5 - (np.sqrt((x - c[0]) ** 2 + (y - c[1]) ** 2) - rad) / w, 0, 1)
        paint(img, m, hu)
    area, mask = 0.0, np.zeros((n, n), bool)
    if nod is not None:
        total = np.zeros((n, n), np.float32)
        for c, ax, yaw in nod["parts"]:
            box = box_of(acq, z, c, max(ax))
            if box is not None:
                t = total[box]
                np.maximum(t, soft_ellipsoid(sub(p, box), c, ax, acq, yaw_deg=yaw), out=t)
        paint(img, total, nod["hu"])
        mask = total >= 0.5
        area = float(mask.sum()) * acq.pixel_spacing ** 2
    return apply_scanner(img, acq, seed, k), area, mask


def generate_chest(seed: int, *, nodule: str | None, diameter_mm: float | None, slices: int | None,
                   thickness_mm: float | None, matrix: int, only=None) -> dict:
    """Everything :func:`edge_agent.phantoms.chest_phantom` needs (``only`` as in the head generator)."""
    rng = np.random.default_rng([seed, 2])
    a = _anatomy(rng)
    nod = None
    if nodule == "random":
        nodule = NODULE_TYPES[int(rng.integers(2))]
    if nodule is not None:
        if diameter_mm is None:
            diameter_mm = float(np.exp(rng.uniform(math.log(4.0), math.log(30.0))))
        nod = _nodule(rng, a, nodule, float(diameter_mm))
    acq = sample_acquisition(
        rng, spacing_range=(0.6, 0.9), thickness=thickness_mm, slices=slices, coverage=(200.0, 320.0),
        z_range=(-150.0, 170.0), matrix=matrix, shift_mm=20.0, yaw=6.0, pitch=3.0, noise=(8.0, 35.0),
    )
    if nod is not None:
        nz = float((acq.rotation @ np.asarray(nod["parts"][0][0]))[2])
        lo, hi = acq.z_positions[0], acq.z_positions[-1]
        if not lo <= nz <= hi:
            acq.z_positions = acq.z_positions + (nz - (lo + hi) / 2 + rng.uniform(-0.3, 0.3) * (hi - lo))
    nz = None if nod is None else float((acq.rotation @ np.asarray(nod["parts"][0][0]))[2])
    if callable(only):
        only = only(acq, nz, np.random.default_rng([seed, 3]))
    indices = list(range(len(acq.z_positions)) if only is None else only)
    images, areas, masks = [], [], []
    for k in indices:
        img, area, mask = _render_slice(a, nod, acq, float(acq.z_positions[k]), seed, k)
        images.append(img)
        areas.append(area)
        masks.append(mask)
    headers = make_headers(
        rng, acq.vendor, body_part="CHEST", study=str(rng.choice(["CT CHEST WO CONTRAST", "CT THORAX",
                                                                   "LOW DOSE CHEST", "CT LUNG SCREENING"])),
        series=f"AXIAL {acq.thickness:g}mm LUNG", window=(-600.0, 1500.0), kvp=float(rng.choice([100.0, 120.0])))
    confounders = list(a["confounders"]) + ["vessels"]
    return {"anatomy": a, "nodule": nod, "acq": acq, "images": images, "areas": np.asarray(areas),
            "indices": indices, "masks": masks, "headers": headers, "confounders": confounders}
