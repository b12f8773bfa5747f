"""Non-contrast head CT phantom with optional intracranial haemorrhage.

Anatomy (phantom frame, mm; x to the patient's left, y posterior, z superior,
origin at the centre of the brain): scalp, skull with inner/outer tables and
diploë, a thin CSF layer, cortex with sulci and a midline fissure, white
matter, deep grey nuclei, lateral/third/fourth ventricles, and at the skull
base petrous ridges, clivus and sphenoid sinus with beam-hardening streaks
between them. Confounders that are not bleeds: pineal, choroid-plexus,
falx and basal-ganglia calcifications, random streak artefacts, and the
partial-volume skull at the vertex. Haemorrhage types: intraparenchymal
(``iph``), subdural crescent (``sdh``), epidural lens (``edh``),
subarachnoid in sulci or basal cisterns (``sah``) and intraventricular
layering (``ivh``), 50–90 HU.

Typical values follow standard CT teaching (grey matter 35–45 HU, white
matter 20–30 HU, CSF 0–10 HU, acute blood 50–90 HU, cortical bone
> 1000 HU).
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
    streak,
    sub,
)

BLEED_TYPES = ("iph", "sdh", "edh", "sah", "ivh")
MIN_LABEL_AREA_MM2 = 8.0
"""A slice is labelled positive when voxels at least half blood cover this area on it."""


def _anatomy(rng: np.random.Generator) -> dict:
    """Draw one head: sizes, tissue values, ventricles, calcifications, skull base."""
    s = rng.uniform(0.88, 1.12)
    brain = (66.0 * s * rng.uniform(0.93, 1.07), 82.0 * s * rng.uniform(0.93, 1.07), 62.0 * s)
    vent = rng.uniform(0.7, 1.6)
    a = {
        "brain_axes": brain,
        "csf_gap": rng.uniform(1.0, 3.5),
        "skull": rng.uniform(4.5, 8.0),
        "scalp": rng.uniform(3.0, 7.0),
        "grey_hu": rng.uniform(35.0, 42.0),
        "white_hu": rng.uniform(22.0, 30.0),
        "csf_hu": rng.uniform(0.0, 10.0),
        "scalp_hu": rng.uniform(15.0, 45.0),
        "table_hu": rng.uniform(1300.0, 1900.0),
        "diploe_hu": rng.uniform(450.0, 800.0),
        "cortex": rng.uniform(2.5, 4.0),
        "sulci": (rng.uniform(0, 6.28), rng.uniform(0, 6.28), int(rng.integers(9, 15)), rng.uniform(0.85, 1.15)),
        "cupping_hu": rng.uniform(0.0, 7.0),
        "ventricles": [
            ((sx * 10.0 * vent ** 0.5, -2.0, 14.0), (5.0 * vent, 24.0 * vent ** 0.5, 9.0 * vent ** 0.7), sx * 6.0)
            for sx in (-1.0, 1.0)
        ] + [
            ((sx * 15.0 * vent ** 0.5, 24.0, 6.0), (5.0 * vent, 10.0, 7.0 * vent ** 0.7), sx * -20.0)
            for sx in (-1.0, 1.0)
        ],
        "third_ventricle": ((0.0, 4.0, -4.0), (1.2 * vent, 14.0, 9.0)),
        "fourth_ventricle": ((0.0, 32.0, -40.0), (6.0, 4.0, 7.0)),
        "deep_grey": [((sx * 12.0, 8.0, 2.0), (9.0, 12.0, 9.0), 0.0) for sx in (-1.0, 1.0)]
        + [((sx * 20.0, -6.0, 0.0), (6.0, 14.0, 8.0), sx * 15.0) for sx in (-1.0, 1.0)],
        "petrous": [((sx * 34.0, 8.0, -38.0), (22.0, 7.0, 6.0), sx * -40.0) for sx in (-1.0, 1.0)],
        "clivus": ((0.0, 2.0, -44.0), (7.0, 10.0, 14.0)),
        "sphenoid": ((0.0, -22.0, -36.0), (12.0, 10.0, 9.0)),
        "calcifications": [],
    }
    calcs = a["calcifications"]
    if rng.random() < 0.5:   # pineal
        calcs.append(((0.0, 22.0, 0.0), rng.uniform(1.2, 3.5), rng.uniform(100.0, 400.0), "pineal"))
    if rng.random() < 0.4:   # choroid plexus in both atria
        for sx in (-1.0, 1.0):
            calcs.append(((sx * 15.0 * vent ** 0.5, 26.0, 7.0), rng.uniform(1.5, 4.0), rng.uniform(80.0, 250.0),
                          "choroid_plexus"))
    if rng.random() < 0.2:   # falx
        calcs.append(((0.0, rng.uniform(-40.0, 40.0), rng.uniform(25.0, 50.0)), rng.uniform(1.5, 3.5),
                      rng.uniform(150.0, 600.0), "falx"))
    if rng.random() < 0.12:  # basal ganglia (globus pallidus)
        for sx in (-1.0, 1.0):
            calcs.append(((sx * 18.0, -2.0, 0.0), rng.uniform(1.5, 3.0), rng.uniform(80.0, 200.0), "basal_ganglia"))
    return a


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


# --------------------------------------------------------------------------- rendering


def _render_slice(a: dict, bleed: dict | None, acq: Acquisition, z: float, seed: int,
                  k: int) -> tuple[np.ndarray, float, np.ndarray | None]:
    """One noisy slice, its blood amount (mm², partial volume counted) and blood membership (or None)."""
    p = acq.grid(z)
    n = acq.matrix
    img = np.full((n, n), AIR_HU, np.float32)
    bx, by, bz = a["brain_axes"]
    x, y, zz = p
    qx, qy, qz = x / bx, y / by, zz / bz
    r = np.sqrt(qx * qx + qy * qy + qz * qz) + 1e-6
    dist = np.sqrt(x * x + y * y + zz * zz)
    d = (r - 1.0) * dist / r                     # ≈ signed distance to the brain surface (mm)
    gz = np.abs(qz / bz) / (np.sqrt((qx / bx) ** 2 + (qy / by) ** 2 + (qz / bz) ** 2) + 1e-9)
    w = np.sqrt(acq.pixel_spacing ** 2 + (acq.thickness * gz) ** 2)

    def inside(level: float) -> np.ndarray:
        return np.clip(0.5 - (d - level) / w, 0.0, 1.0)

    gap, skull, scalp = a["csf_gap"], a["skull"], a["scalp"]
    paint(img, inside(gap + skull + scalp), a["scalp_hu"])
    paint(img, inside(gap + skull), a["table_hu"])
    paint(img, inside(gap + skull - 1.6), a["diploe_hu"])
    paint(img, inside(gap + 1.6), a["table_hu"])
    paint(img, inside(gap), a["csf_hu"])
    brain = inside(0.0)
    theta = np.arctan2(y, x)
    paint(img, brain, a["grey_hu"])
    # White matter below the cortical ribbon; sulci cut into the ribbon; a midline fissure.
    paint(img, inside(-a["cortex"]), a["white_hu"])
    ph1, ph2, nf, thr = a["sulci"]
    pattern = np.cos(nf * theta + 0.09 * zz + ph1) + 0.6 * np.cos(1.7 * nf * theta - 0.07 * zz + ph2)
    sulcal = np.clip((pattern - thr) * 3.0, 0.0, 1.0) * np.clip((d + 9.0) / 3.0, 0.0, 1.0) * brain
    fissure = np.clip(1.0 - np.abs(x) / 1.2, 0.0, 1.0) * np.clip((np.abs(y) - 0.35 * by) / 4.0, 0.0, 1.0) * brain
    csf = np.maximum(sulcal, fissure)
    paint(img, csf, a["csf_hu"])
    img += (a["cupping_hu"] * np.exp(-np.abs(d) / 4.0) * brain).astype(np.float32)

    def blob(centre, axes, value, yaw=0.0):
        box = box_of(acq, z, centre, max(axes))
        if box is not None:
            m = soft_ellipsoid(sub(p, box), centre, axes, acq, yaw_deg=yaw)
            paint(img, m, value, box)
            return m, box
        return None, None

    for c, ax, yaw in a["deep_grey"]:
        blob(c, ax, a["grey_hu"] - 3.0, yaw)
    vent_m = []
    for c, ax, yaw in a["ventricles"]:
        vent_m.append(blob(c, ax, a["csf_hu"], yaw))
    blob(*a["third_ventricle"], a["csf_hu"])
    blob(*a["fourth_ventricle"], a["csf_hu"])
    blob(*a["sphenoid"], -900.0)
    blob(*a["clivus"], a["table_hu"] * 0.8)
    petrous = [blob(c, ax, a["table_hu"], yaw)[1] for c, ax, yaw in a["petrous"]]

    area, mask = 0.0, None
    if bleed is not None:
        area, mask = _paint_bleed(img, p, d, w, theta, sulcal, vent_m, bleed, a, acq, z)
    for c, radius, hu, _name in a["calcifications"]:
        blob(c, (radius, radius, radius), hu)

    if all(b is not None for b in petrous):   # beam hardening between the petrous ridges
        cen = [((b[0].start + b[0].stop) / 2, (b[1].start + b[1].stop) / 2) for b in petrous]
        img += streak(img.shape, cen[0], cen[1], 3.0 / acq.pixel_spacing, -float(acq.extras["bh_hu"]))
    for kk, p0, p1, amp, width in acq.extras["streaks"]:
        if kk == k:
            img += streak(img.shape, p0, p1, width, amp, infinite=True) * (img > -500)
    img = apply_scanner(img, acq, seed, k)
    return img, area, mask


def _paint_bleed(img, p, d, w, theta, sulcal, vent_m, bleed, a, acq, z) -> tuple[float, np.ndarray | None]:
    """Paint the haemorrhage into ``img``; returns its amount on this slice (mm²) and its membership."""
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
    paint(img, m, hu)
    return float(m.sum()) * acq.pixel_spacing ** 2, m


def head_scan(rng: np.random.Generator, *, thickness: float | None, slices: int | None, matrix: int,
              bleed_point: np.ndarray | None) -> Acquisition:
    """Draw the acquisition for a head series (FOV 0.4–0.9 mm pixels, 2–5 mm slices, tilted head)."""
    acq = sample_acquisition(
        rng, spacing_range=(0.4, 0.9), thickness=thickness, slices=slices, coverage=(120.0, 165.0),
        z_range=(-70.0, 80.0), matrix=matrix, shift_mm=18.0, yaw=15.0, pitch=12.0, noise=(2.0, 7.0),
    )
    if bleed_point is not None:   # make sure a short series still covers the bleed
        bleed_z = float((acq.rotation @ bleed_point)[2])
        lo, hi = acq.z_positions[0], acq.z_positions[-1]
        if not lo <= bleed_z <= hi:
            shift = bleed_z - (lo + hi) / 2 + rng.uniform(-0.3, 0.3) * (hi - lo)
            acq.z_positions = acq.z_positions + shift
    acq.extras["bh_hu"] = float(rng.uniform(10.0, 45.0))
    streaks = []
    n = acq.matrix
    if rng.random() < 0.25:
        for _ in range(int(rng.integers(1, 4))):
            k = int(rng.integers(len(acq.z_positions)))
            p0 = tuple(float(v) for v in rng.uniform(0, n, 2))
            ang = rng.uniform(0, math.pi)
            p1 = (p0[0] + math.sin(ang) * 10, p0[1] + math.cos(ang) * 10)
            amp = float(rng.choice([-1, 1]) * rng.uniform(20.0, 80.0))
            streaks.append((k, p0, p1, amp, float(rng.uniform(0.8, 2.5))))
    acq.extras["streaks"] = streaks
    return acq


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


def generate_head(seed: int, *, bleed: str | None, volume_ml: float | None, slices: int | None,
                  thickness_mm: float | None, matrix: int, only=None) -> dict:
    """Everything :func:`edge_agent.phantoms.head_phantom` needs.

    ``only`` renders a subset of slices: a list of indices, or a callable
    ``(acquisition, bleed_z or None, rng) -> indices`` (training picks slices around the bleed).
    """
    rng = np.random.default_rng([seed, 1])
    a = _anatomy(rng)
    b = None
    if bleed == "random":
        bleed = BLEED_TYPES[int(rng.integers(len(BLEED_TYPES)))]
    if bleed is not None:
        if volume_ml is None:
            volume_ml = float(np.exp(rng.uniform(math.log(0.3), math.log(60.0))))
        b = _bleed(rng, a, bleed, float(volume_ml))
    acq = head_scan(rng, thickness=thickness_mm, slices=slices, matrix=matrix,
                    bleed_point=None if b is None else bleed_centre(b, a))
    if callable(only):
        bz = None if b is None else float((acq.rotation @ bleed_centre(b, a))[2])
        only = only(acq, bz, np.random.default_rng([seed, 3]))
    indices = range(len(acq.z_positions)) if only is None else only
    images, amounts, masks = [], [], []
    for k in indices:
        img, amount, m = _render_slice(a, b, acq, float(acq.z_positions[k]), seed, k)
        images.append(img)
        amounts.append(amount)
        masks.append(np.zeros(img.shape, bool) if m is None else m >= 0.5)
    # visible area: voxels at least half blood (what the slice label is based on)
    areas = [float(mk.sum()) * acq.pixel_spacing ** 2 for mk in masks]
    headers = make_headers(
        rng, acq.vendor, body_part="HEAD", study=str(rng.choice(["CT HEAD WO CONTRAST", "CT BRAIN NON CON",
                                                                  "HEAD ROUTINE", "CT CRANE SANS IV"])),
        series=f"AXIAL {acq.thickness:g}mm {acq.vendor.kernel}", window=(40.0, 80.0), kvp=120.0)
    return {"anatomy": a, "bleed": b, "acq": acq, "images": images, "areas": np.asarray(areas),
            "amounts": np.asarray(amounts),
            "indices": list(indices), "masks": masks,
            "headers": headers}
