"""Haemorrhages for the head phantom: parameters per type and painting into a slice.

Types: intraparenchymal (``iph``, lobulated, with oedema when large), subdural
crescent (``sdh``), epidural lens (``edh``), subarachnoid in sulci or basal
cisterns (``sah``) and intraventricular layering (``ivh``), 50–90 HU.
"""

from __future__ import annotations

import math

import numpy as np

from edge_agent.phantoms._geometry import box_of, paint, soft_ellipsoid, sub

BLEED_TYPES = ("iph", "sdh", "edh", "sah", "ivh")
# --------------------------------------------------------------------------- bleeds


def _ellipsoid_cap_offset(axes: tuple[float, float, float], volume_mm3: float) -> float:
    """Offset h along the y axis such that the cap y > h of the ellipsoid holds ``volume_mm3``."""
    ax, ay, az = axes
    lo, hi = -ay, ay
    for _ in range(40):
        h = (lo + hi) / 2
        v = math.pi * ax * az * (ay - h) ** 2 * (2 * ay + h) / (3 * ay ** 2)
        lo, hi = (h, hi) if v > volume_mm3 else (lo, h)
    return (lo + hi) / 2


def _bleed(rng: np.random.Generator, a: dict, kind: str, volume_ml: float) -> dict:
    """Parameters of one haemorrhage of ``kind`` holding about ``volume_ml``."""
    v = volume_ml * 1000.0
    hu = float(rng.uniform(50.0, 90.0))
    bx, by, bz = a["brain_axes"]
    b = {"type": kind, "hu": hu, "requested_ml": volume_ml}
    if kind == "iph":
        u = rng.normal(size=3)
        u *= rng.uniform(0.15, 0.7) / np.linalg.norm(u)
        centre = (u[0] * bx, u[1] * by, u[2] * bz * 0.8 + 5.0)
        ratios = rng.uniform(0.55, 1.0, size=3)
        ratios[0] = 1.0
        r = (v / (4.0 / 3.0 * math.pi * float(np.prod(ratios)))) ** (1 / 3)
        parts = [(centre, tuple(float(r * q) for q in ratios), float(rng.uniform(0, 180)))]
        if volume_ml > 2 and rng.random() < 0.6:   # lobulated: a daughter blob
            off = rng.normal(size=3) * r * 0.5
            parts.append((tuple(np.add(centre, off)), tuple(float(r * 0.6 * q) for q in ratios[::-1]),
                          float(rng.uniform(0, 180))))
        b.update(parts=parts, oedema=float(rng.uniform(2.0, 5.0)) if volume_ml > 4 else 0.0)
    elif kind in ("sdh", "edh"):
        r_eff = (bx + by) / 2.0 + a["csf_gap"]
        if kind == "sdh":
            t = float(np.clip(2.5 * volume_ml ** 0.4, 1.5, 25.0))
            area = v / (t * 0.617)
            aspect = rng.uniform(1.0, 2.5)
            height = math.sqrt(area / aspect)
            arc = aspect * height
            hu = float(rng.uniform(50.0, 80.0))
        else:
            t = float(np.clip(4.0 * volume_ml ** 0.4, 2.0, 35.0))
            radius = math.sqrt(v / (0.5 * t) / math.pi)
            arc, height = 2 * radius, 2 * radius
            hu = float(rng.uniform(60.0, 90.0))
        theta0 = float(rng.uniform(-math.pi, math.pi))
        z0 = float(rng.uniform(-15.0, 45.0))
        b.update(hu=hu, thickness=t, theta0=theta0, half_theta=arc / (2 * r_eff), z0=z0, half_z=height / 2)
    elif kind == "sah":
        hu = float(rng.uniform(50.0, 75.0))
        if rng.random() < 0.5:   # basal cisterns: a ring around the midbrain
            height = float(np.clip(v / 300.0, 2.0, 30.0))
            b.update(hu=hu, form="cisternal", centre=(0.0, 6.0, -16.0 + height / 4), height=height)
        else:                    # convexity sulci within a patch of cortex
            area = v / 1.6
            side = math.sqrt(area)
            r_eff = (bx + by) / 2.0
            b.update(hu=hu, form="sulcal", theta0=float(rng.uniform(-math.pi, math.pi)),
                     half_theta=side / (2 * r_eff), z0=float(rng.uniform(-5.0, 40.0)), half_z=side / 2)
    elif kind == "ivh":
        vents = a["ventricles"][:2]
        axes = vents[0][1]
        full = 4.0 / 3.0 * math.pi * float(np.prod(axes))
        both = v > 0.6 * full or rng.random() < 0.5
        per = v / 2 if both else v
        if per >= full:
            h = -axes[1] - 1.0
        else:
            h = _ellipsoid_cap_offset(axes, per)
        sides = [0, 1] if both else [int(rng.integers(2))]
        b.update(hu=hu, sides=sides, level=h)
    else:
        raise ValueError(f"unknown bleed type {kind!r}")
    return b



def _paint_bleed(img, p, d, w, theta, sulcal, vent_m, bleed, a, acq, z,
                allow=None) -> tuple[float, np.ndarray | None]:
    """Paint the haemorrhage into ``img``; returns its amount on this slice (mm²) and its membership.

    ``allow`` (0..1 per pixel) is the share of the voxel that is intracranial space (not skull base)."""
    x, y, zz = p
    hu = bleed["hu"]
    kind = bleed["type"]
    m = None
    if kind == "iph":
        total = np.zeros(img.shape, np.float32)
        for c, ax, yaw in bleed["parts"]:
            if bleed["oedema"]:
                oed = tuple(v + bleed["oedema"] for v in ax)
                box = box_of(acq, z, c, max(oed))
                if box is not None:
                    paint(img, soft_ellipsoid(sub(p, box), c, oed, acq, yaw_deg=yaw), a["white_hu"] - 8.0, box)
        for c, ax, yaw in bleed["parts"]:
            box = box_of(acq, z, c, max(ax))
            if box is not None:
                t = total[box]
                np.maximum(t, soft_ellipsoid(sub(p, box), c, ax, acq, yaw_deg=yaw), out=t)
        m = total
    elif kind in ("sdh", "edh"):
        dth = np.angle(np.exp(1j * (theta - bleed["theta0"]))) / bleed["half_theta"]
        dzz = (zz - bleed["z0"]) / bleed["half_z"]
        if kind == "sdh":
            f = np.sqrt(np.clip(1 - dth ** 2, 0, 1) * np.clip(1 - dzz ** 2, 0, 1))
        else:
            f = np.clip(1 - dth ** 2 - dzz ** 2, 0, 1)
        gap = a["csf_gap"]
        depth = bleed["thickness"] * f
        m = np.clip(0.5 - (d - gap) / w, 0, 1) * np.clip(0.5 + (d - (gap - depth)) / w, 0, 1) * (f > 0)
    elif kind == "sah":
        if bleed["form"] == "cisternal":
            cx, cy, cz = bleed["centre"]
            rr = np.sqrt((x - cx) ** 2 + ((y - cy) / 1.2) ** 2)
            ring = np.clip(1 - np.abs(rr - 14.0) / 2.5, 0, 1)
            m = ring * np.clip(1 - np.abs(zz - cz) / (bleed["height"] / 2 + 1e-3), 0, 1) ** 0.3
        else:
            dth = np.angle(np.exp(1j * (theta - bleed["theta0"]))) / bleed["half_theta"]
            dzz = (zz - bleed["z0"]) / bleed["half_z"]
            region = (np.abs(dth) < 1) & (np.abs(dzz) < 1)
            m = np.clip(sulcal * 1.3, 0, 1) * region
    elif kind == "ivh":
        m = np.zeros(img.shape, np.float32)
        for side in bleed["sides"]:
            vm, box = vent_m[side]
            if vm is None:
                continue
            c, ax, yaw = a["ventricles"][side]
            cos, sin = math.cos(math.radians(yaw)), math.sin(math.radians(yaw))
            ly = -sin * (x[box] - c[0]) + cos * (y[box] - c[1])
            m[box] = np.maximum(m[box], vm * np.clip(0.5 + (ly - bleed["level"]) / acq.pixel_spacing, 0, 1))
    if m is None:
        return 0.0, None
    if allow is not None:
        m = m * allow
    paint(img, m, hu)
    return float(m.sum()) * acq.pixel_spacing ** 2, m



def bleed_centre(bleed: dict, a: dict) -> np.ndarray:
    """Point (phantom frame, mm) around which a bleed sits."""
    bx, by, _ = a["brain_axes"]
    if bleed["type"] == "iph":
        return np.asarray(bleed["parts"][0][0], float)
    if bleed["type"] in ("sdh", "edh") or bleed.get("form") == "sulcal":
        t = bleed["theta0"]
        return np.array([bx * math.cos(t), by * math.sin(t), bleed["z0"]])
    if bleed["type"] == "sah":
        return np.asarray(bleed["centre"], float)
    return np.asarray(a["ventricles"][bleed["sides"][0]][0], float)


