"""Pulmonary nodules (the positives): type, shape, location and exact 3-D rendering.

- types: ``solid`` (-50..60 HU), ``ground_glass`` (-700..-350 HU, added to the lung so vessels inside
  stay visible), ``part_solid`` (ground glass with a solid core of 25–60 % of the diameter);
- shapes: ``sphere`` (an ellipsoid of the declared equivalent diameter, axis ratios 0.88–1.12 with
  the same volume), ``lobulated`` (2–4 lobes on the surface), ``spiculated`` (6–14 thin spicules);
- locations: ``parenchymal``, ``juxtapleural`` (abutting the chest wall, flattened against the pleura),
  ``juxtavascular`` (touching a 1–4 mm vessel);
- 4–30 mm; rendered on sub-planes through the slice (:mod:`edge_agent.phantoms.chest_vessels`), so it
  spans as many slices as its 3-D extent.

Slice labels: a slice is positive when the nodule's cross-section on some plane inside the slice
(voxels ≥ half nodule) covers ≥ 8 mm², i.e. the nodule passes through the slice with at least a
3.2 mm disc. ``finding_mask`` marks the pixels whose slice-averaged nodule fraction is ≥ 0.5.
"""

from __future__ import annotations

import numpy as np

from edge_agent.phantoms import chest_vessels as cv
from edge_agent.phantoms.chest_anatomy import lung_inside, pleural_point, _random_lung_point

NODULE_TYPES = ("solid", "ground_glass", "part_solid")
SHAPES = ("sphere", "lobulated", "spiculated")
LOCATIONS = ("parenchymal", "juxtapleural", "juxtavascular")


def draw_nodule(rng: np.random.Generator, a: dict, kind: str, diameter: float, force: dict) -> dict:
    r = diameter / 2.0
    shape = str(rng.choice(SHAPES, p=[0.5, 0.3, 0.2]))
    loc = str(rng.choice(LOCATIONS, p=[0.55, 0.25, 0.2]))
    shape = force.get("nodule_shape", shape)
    loc = force.get("nodule_location", loc)
    if kind == "solid":
        hu = rng.uniform(-50.0, 60.0)
    else:
        hu = rng.uniform(-700.0, -350.0)
    centre = None
    if loc == "juxtavascular":
        cands = [s for s in a["arteries"] + a["veins"] if 1.0 <= s[2] <= 4.0]
        for _ in range(20):
            if not cands:
                break
            va, vb, vr, _g = cands[int(rng.integers(len(cands)))]
            pt = va + rng.uniform(0.2, 0.8) * (vb - va)
            u = (vb - va) / (np.linalg.norm(vb - va) + 1e-9)
            n = cv._perp(u, rng)
            c = pt + n * (vr + r * rng.uniform(0.55, 0.9))
            if lung_inside(a, c, r * 0.8):
                centre = c
                break
    elif loc == "juxtapleural":
        for _ in range(10):
            c = pleural_point(rng, a, depth=r * rng.uniform(0.75, 0.95))
            if c is not None:
                centre = c
                break
    if centre is None:
        loc = "parenchymal" if loc != "juxtapleural" or centre is None else loc
        for margin in (r + 3.0, r, 2.0):
            centre = _random_lung_point(rng, a, margin=margin, tries=60)
            if centre is not None:
                break
        if centre is None:
            centre = np.asarray(a["lungs"][0][0], float)
        loc = "parenchymal"
    ea, eb = rng.uniform(0.88, 1.12, 2)
    axes = (r * ea, r * eb, r / (ea * eb))
    frame = cv.random_frame(rng)
    parts = [(np.asarray(centre, float), axes, frame)]
    spicules = []
    if shape == "lobulated":
        for _ in range(int(rng.integers(2, 5))):
            u = rng.normal(size=3)
            u /= np.linalg.norm(u)
            rl = r * rng.uniform(0.35, 0.6)
            parts.append((centre + u * r * rng.uniform(0.55, 0.8), (rl, rl, rl), np.eye(3)))
    elif shape == "spiculated":
        for _ in range(int(rng.integers(6, 15))):
            u = rng.normal(size=3)
            u /= np.linalg.norm(u)
            spicules.append((centre + u * r * 0.6, centre + u * r * rng.uniform(1.3, 2.1),
                             float(rng.uniform(0.3, min(0.9, 0.12 * r + 0.3)))))
    core = None
    if kind == "part_solid":
        f = rng.uniform(0.25, 0.6)
        core = (np.asarray(centre, float) + rng.normal(0, 0.1 * r, 3), (r * f, r * f, r * f), rng.uniform(-50.0, 60.0))
    return {"type": kind, "hu": float(hu), "diameter": float(diameter), "shape": shape, "location": loc,
            "centre": np.asarray(centre, float), "parts": parts, "spicules": spicules, "core": core,
            "extent": float(r * (2.2 if spicules else 1.3))}


def render_nodule(img: np.ndarray, slab: cv.Slab, nod: dict, lung: np.ndarray, lung_hu: float):
    """Paint the nodule; returns (max cross-section area on a sub-plane (mm²), slab-averaged membership
    (full slice), Σ membership × pixel area (mm²))."""
    acq = slab.acq
    n = acq.matrix
    zero = np.zeros((n, n), np.float32)
    c_s = cv.to_scanner(acq, nod["centre"])
    ext = nod["extent"]
    if abs(c_s[2] - slab.z) > ext + acq.thickness / 2:
        return 0.0, zero, 0.0
    box = slab.box(c_s[0] - ext - 2, c_s[0] + ext + 2, c_s[1] - ext - 2, c_s[1] + ext + 2)
    if box is None:
        return 0.0, zero, 0.0
    total = None

    def acc(res):
        nonlocal total
        if res is not None:
            total = res[1] if total is None else np.maximum(total, res[1])

    for pc, axes, frame in nod["parts"]:
        acc(cv.ellipsoid_m(slab, cv.to_scanner(acq, pc), axes, acq.rotation @ frame, box=box))
    for sa, sb, sr in nod["spicules"]:
        acc(cv.capsule_m(slab, cv.to_scanner(acq, sa), cv.to_scanner(acq, sb), sr, box=box))
    if total is None:
        return 0.0, zero, 0.0
    total = total * np.clip(lung[box] * 1.25, 0.0, 1.0)[None]      # stays inside the lung (flattens on pleura)
    m = total.mean(axis=0)
    if nod["type"] == "solid":
        t = img[box]
        t += m * (nod["hu"] - t)
    else:   # ground glass: added density, vessels inside stay visible
        img[box] += m * (nod["hu"] - lung_hu)
        if nod["core"] is not None:
            pc, axes, hu = nod["core"]
            res = cv.ellipsoid_m(slab, cv.to_scanner(acq, pc), axes)
            if res is not None:
                cv.paint_m(img, res[0], res[1], hu, lung)
    px2 = acq.pixel_spacing ** 2
    area = float((total >= 0.5).sum(axis=(1, 2)).max()) * px2
    out = zero.copy()
    out[box] = m
    return area, out, float(m.sum()) * px2
