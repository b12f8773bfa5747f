"""What real head CTs have and simple ellipsoid heads lack: skull base, dura, vessels, ageing, scalp.

Everything here is a hard negative for a haemorrhage model (none of it is blood
inside the skull, except where :mod:`edge_agent.phantoms.head` paints a bleed):

- skull base as a height field ``F(x, y)`` (the floor of the cranial fossae):
  domed orbital roofs and the lower cribriform plate, the sphenoid ridge, the
  sella and the clivus, the petrous ridges, the middle and posterior fossae and
  the foramen magnum. Below the floor: a bone plate (thin under the orbits),
  then orbital fat, ethmoid air cells, the sphenoid sinus, dense petrous bone
  with mastoid air cells, or soft tissue. The bone plate is integrated exactly
  through the slice thickness, so an oblique orbital roof in a 5 mm slice
  leaves the broad 50–300 HU partial-volume haze that mimics blood;
- globes (vitreous, dense lens) and extra-ocular muscles in orbital fat;
- dense falx and tentorium (40–75 HU), dural venous sinuses (40–62 HU),
  a dense basilar artery, calcified carotid siphons;
- ageing: atrophy (wide CSF spaces and ventricles), periventricular low
  density, old infarcts and lacunes (low density, never blood);
- scalp haematoma or swelling: blood OUTSIDE the skull.
"""

from __future__ import annotations

import math

import numpy as np

from edge_agent.phantoms._geometry import Acquisition, box_of, paint, soft_ellipsoid, sub


def _sig(v):
    return 1.0 / (1.0 + np.exp(-np.clip(v, -30, 30)))


def _on(rng: np.random.Generator, force: dict, key: str, p: float) -> bool:
    """Draw a feature (always consumes one number so other draws do not shift); ``force`` overrides."""
    u = rng.random()
    return bool(force[key]) if key in force else bool(u < p)


def draw_extras(rng: np.random.Generator, a: dict, force: dict) -> None:
    """Add skull-base, dural, vascular, ageing and scalp parameters to the anatomy ``a`` (in place)."""
    bx, by, bz = a["brain_axes"]
    a["base"] = {
        "y_sph": -rng.uniform(0.18, 0.28) * by, "z_or": -rng.uniform(0.38, 0.52) * bz,
        "dome": rng.uniform(3.0, 10.0), "crib": rng.uniform(4.0, 10.0), "tilt": rng.uniform(-0.15, 0.25),
        "z_mid": -rng.uniform(0.70, 0.84) * bz, "z_sel": -rng.uniform(0.52, 0.64) * bz,
        "z_pet": -rng.uniform(0.46, 0.60) * bz, "z_pf": -rng.uniform(0.90, 1.0) * bz,
        "plate_orbit": rng.uniform(0.8, 2.5), "plate": rng.uniform(2.0, 5.0),
        "bone_hu": rng.uniform(1100.0, 1900.0), "fat_hu": rng.uniform(-110.0, -60.0),
        "soft_hu": rng.uniform(35.0, 60.0), "pneumatised": rng.uniform(0.2, 1.0),
        "cells": [(rng.normal(size=3) / 1.0, rng.uniform(0, 6.28)) for _ in range(3)],
        "cell_mm": rng.uniform(3.0, 7.0), "cell_thr": rng.uniform(-0.1, 0.35),
        "globe": (rng.uniform(0.40, 0.50) * bx, -rng.uniform(0.80, 0.90) * by, rng.uniform(10.0, 16.0),
                  rng.uniform(10.5, 12.5), rng.uniform(0.0, 15.0), rng.uniform(70.0, 130.0)),
        "muscle_hu": rng.uniform(40.0, 65.0),
        "streak_hu": rng.uniform(5.0, 55.0), "streak_w": rng.uniform(2.0, 7.0),
        "rays": [(rng.uniform(0, math.pi), float(rng.choice([-1, 1]) * rng.uniform(8.0, 45.0)))
                 for _ in range(int(rng.integers(0, 6)))],
    }
    a["dura"] = {
        "falx_hu": rng.uniform(40.0, 75.0), "falx_t": rng.uniform(0.6, 2.5),
        "tent_hu": rng.uniform(40.0, 72.0), "tent_t": rng.uniform(0.8, 2.2),
        "tent_z": rng.uniform(-22.0, -10.0), "tent_slope": rng.uniform(0.25, 0.6),
        "sinus_hu": rng.uniform(40.0, 62.0), "sinus_r": rng.uniform(2.5, 4.5),
        "basilar_hu": rng.uniform(40.0, 70.0) if _on(rng, force, "dense_artery", 0.5) else None,
        "siphon_hu": rng.uniform(150.0, 700.0) if _on(rng, force, "calcification", 0.35) else None,
    }
    gap = a["csf_gap"]
    pts = []
    for phi in np.linspace(-0.15, math.pi * 1.12, 16):   # superior sagittal sinus under the midline
        r = a["dura"]["sinus_r"]
        pts.append((0.0, -(by + gap - r) * math.cos(phi), (bz + gap - r) * math.sin(phi) + 4.0))
    sinuses = [pts]
    zt = a["dura"]["tent_z"] - a["dura"]["tent_slope"] * 0.9 * by
    for sx in (-1.0, 1.0):   # transverse + sigmoid sinuses from the torcula
        line = []
        for psi in np.linspace(0.0, 1.35, 8):
            line.append((sx * (bx + gap - 3) * math.sin(psi), (by + gap - 3) * math.cos(psi) * 0.92,
                         zt - 14.0 * max(0.0, psi - 0.9) / 0.45))
        sinuses.append(line)
    sinuses.append([(0.0, 22.0, 2.0), (0.0, 0.9 * by - 4, zt + 2)])   # straight sinus
    a["dura"]["sinuses"] = sinuses
    # ageing: atrophy widens every CSF space; old infarcts and lacunes are low density, never blood
    atrophy = rng.uniform(0.3, 1.0) if _on(rng, force, "atrophy", 0.3) else 0.0
    a["atrophy"] = atrophy
    if atrophy:
        a["csf_gap"] += atrophy * rng.uniform(2.0, 6.0)
        ph1, ph2, nf, thr = a["sulci"]
        a["sulci"] = (ph1, ph2, nf, thr - 0.5 * atrophy)
        grow = 1.0 + atrophy * rng.uniform(0.2, 0.7)
        a["ventricles"] = [(c, tuple(v * grow for v in ax), yaw) for c, ax, yaw in a["ventricles"]]
        c3, ax3 = a["third_ventricle"]
        a["third_ventricle"] = (c3, (ax3[0] * grow * 1.5, ax3[1], ax3[2]))
    a["pv_lucency"] = rng.uniform(3.0, 10.0) if (atrophy and rng.random() < 0.7) or \
        _on(rng, force, "pv_lucency", 0.1) else 0.0
    infarcts = []
    if _on(rng, force, "infarct", 0.2):
        for _ in range(int(rng.integers(1, 3))):
            th, zc = rng.uniform(-math.pi, math.pi), rng.uniform(-25.0, 40.0)
            depth = rng.uniform(6.0, 22.0)
            c = (math.cos(th) * (bx - depth), math.sin(th) * (by - depth), zc)
            infarcts.append((c, (depth * rng.uniform(0.8, 1.4), depth * rng.uniform(0.8, 1.4), depth),
                             float(np.degrees(th)), rng.uniform(0.0, 16.0)))
    for _ in range(int(rng.integers(0, 4)) if rng.random() < 0.3 else 0):   # lacunes in the deep grey
        c = (rng.uniform(-22, 22), rng.uniform(-10, 12), rng.uniform(-6, 12))
        infarcts.append((c, (rng.uniform(1.5, 4.0),) * 3, 0.0, rng.uniform(0.0, 10.0)))
    a["infarcts"] = infarcts
    calcs = a["calcifications"]
    if _on(rng, force, "calcification", 0.15):   # more, denser calcifications than the base draw
        calcs.append(((0.0, 22.0, 0.0), rng.uniform(1.5, 5.0), rng.uniform(150.0, 900.0), "pineal"))
        for sx in (-1.0, 1.0):
            calcs.append(((sx * 16.0, 26.0, 7.0), rng.uniform(2.0, 5.0), rng.uniform(100.0, 500.0), "choroid_plexus"))
            calcs.append(((sx * 18.0, -2.0, 0.0), rng.uniform(1.5, 4.0), rng.uniform(90.0, 400.0), "basal_ganglia"))
        calcs.append(((0.0, rng.uniform(-40.0, 40.0), rng.uniform(25.0, 50.0)), rng.uniform(1.5, 4.0),
                      rng.uniform(200.0, 900.0), "falx"))
    if a["dura"]["siphon_hu"] is not None:
        calcs.append(((0.0, 0.0, 0.0), 0.0, 0.0, "arterial_wall"))   # tag only; drawn as tubes
    # scalp haematoma (blood outside the skull: not ICH) or soft-tissue swelling
    a["scalp_haem"] = None
    if _on(rng, force, "scalp_haematoma", 0.15):
        a["scalp_haem"] = {"theta0": rng.uniform(-math.pi, math.pi), "z0": rng.uniform(-10.0, 55.0),
                           "half_theta": rng.uniform(0.25, 0.7), "half_z": rng.uniform(15.0, 40.0),
                           "depth": rng.uniform(4.0, 18.0),
                           "hu": rng.uniform(50.0, 85.0) if rng.random() < 0.75 else rng.uniform(25.0, 45.0)}


def confounders(a: dict) -> list[str]:
    out = []
    if a.get("atrophy"):
        out.append("atrophy")
    if a.get("infarcts"):
        out.append("old_infarct")
    if a.get("pv_lucency"):
        out.append("periventricular_low_density")
    if a.get("scalp_haem"):
        out.append("scalp_haematoma")
    if a["dura"]["basilar_hu"] is not None:
        out.append("dense_basilar")
    return out


# --------------------------------------------------------------------------- skull base


def floor_height(x: np.ndarray, y: np.ndarray, a: dict) -> tuple[np.ndarray, dict]:
    """Height (mm, phantom z) of the cranial-fossa floor at (x, y) and region weights."""
    bx, by, bz = a["brain_axes"]
    b = a["base"]
    ax_ = np.abs(x)
    big = 150.0
    w_ant = _sig((b["y_sph"] + x * x / (4.0 * bx) - y) / 1.5)   # lesser sphenoid wings sweep back laterally
    f_ant = (b["z_or"] + b["dome"] * np.exp(-((ax_ - 0.36 * bx) / (0.2 * bx)) ** 2 - ((y + 0.55 * by) / (0.25 * by)) ** 2)
             - b["crib"] * np.exp(-(x / 6.0) ** 2) + b["tilt"] * (y + 0.5 * by)) - 80.0 * (1 - w_ant)
    central = _sig((14.0 - ax_) / 1.5)
    y_cl = 0.1 * by
    f_c = b["z_sel"] - np.where(y > y_cl, 1.6 * (y - y_cl), 0.0) - 80.0 * (1 - central)
    # petrous ridges: apex (0.18 bx, 0.05 by) to (0.72 bx, 0.38 by)
    a0, a1 = np.array([0.18 * bx, 0.05 * by]), np.array([0.72 * bx, 0.38 * by])
    seg = a1 - a0
    t = np.clip(((ax_ - a0[0]) * seg[0] + (y - a0[1]) * seg[1]) / float(seg @ seg), 0.0, 1.0)
    dr = np.hypot(ax_ - (a0[0] + t * seg[0]), y - (a0[1] + t * seg[1]))
    f_pet = b["z_pet"] + 4.0 * np.sin(np.pi * t) - 1.1 * dr
    side = (y - a0[1]) * seg[0] - (ax_ - a0[0]) * seg[1]    # > 0 behind the ridge
    w_post = _sig(side / float(np.hypot(*seg)) / 4.0)
    f_low = b["z_mid"] * (1 - w_post) + b["z_pf"] * w_post
    f_low = f_low - big * np.exp(-(x / (0.2 * bx)) ** 4 - ((y - 0.3 * by) / (0.15 * by)) ** 4)   # foramen magnum
    f = np.maximum(np.maximum(f_ant, f_c), np.maximum(f_pet, f_low))
    regions = {"ant": w_ant, "central": central * (1 - w_ant), "sinus": _sig((y_cl - y) / 2.0),
               "pet": np.exp(-(dr / 9.0) ** 2) * (t > 0.02), "post": w_post}
    return f.astype(np.float32), regions


def _cells(p, b) -> np.ndarray:
    """Air fraction (0..1) of a cellular bone texture (mastoid / ethmoid air cells), continuous in 3-D."""
    k = 2 * math.pi / b["cell_mm"]
    f = np.ones_like(p[0])
    for (u, ph) in b["cells"]:
        n = u / (np.linalg.norm(u) + 1e-9)
        f = f * np.sin(k * (n[0] * p[0] + n[1] * p[1] + n[2] * p[2]) + ph)
    return np.clip((np.abs(f) ** 0.5 - 0.5 - b["cell_thr"]) * 4.0 + 0.5, 0.0, 1.0)


def skull_base(img: np.ndarray, p, icr: np.ndarray, a: dict, acq: Acquisition) -> np.ndarray:
    """Paint the skull base into ``img`` (in place, inside the inner table ``icr``); returns the share
    of every pixel that is still brain/CSF (1 above the floor)."""
    x, y, zz = p
    b = a["base"]
    t = max(acq.thickness, 0.5)
    zmax = max(b["z_or"] + b["dome"] + abs(b["tilt"]) * 60.0, b["z_pet"] + 4.0, b["z_sel"]) + t
    sel = np.nonzero((icr > 0) & (zz < zmax))
    share = np.ones(img.shape, np.float32)
    if len(sel[0]) == 0:
        return share
    x, y, zz = x[sel], y[sel], zz[sel]
    f, reg = floor_height(x, y, a)
    lo, hi = zz - t / 2, zz + t / 2
    tb = b["plate_orbit"] * reg["ant"] + b["plate"] * (1 - reg["ant"])
    below = np.clip(np.minimum(f - tb, hi) - lo, 0.0, t) / t
    plate = np.clip(np.minimum(f, hi) - np.maximum(f - tb, lo), 0.0, t) / t
    cells = _cells((x, y, zz), b)
    air = -1000.0
    orbit = b["fat_hu"]
    ethmoid = b["bone_hu"] * 0.35 * (1 - cells) + air * cells
    sphen = air * b["pneumatised"] + b["bone_hu"] * 0.3 * (1 - b["pneumatised"])
    mastoid = _sig((np.abs(x) - 0.6 * a["brain_axes"][0]) / 3.0) * reg["post"]
    petrous = b["bone_hu"] * (1 - mastoid * cells) + air * mastoid * cells
    lateral = _sig((np.abs(x) - 11.0) / 2.0)
    content = reg["ant"] * (lateral * orbit + (1 - lateral) * ethmoid) \
        + reg["central"] * (reg["sinus"] * sphen + (1 - reg["sinus"]) * b["bone_hu"] * 0.8) \
        + (1 - reg["ant"] - reg["central"]) * (reg["pet"] * petrous + (1 - reg["pet"]) * (
            mastoid * petrous + (1 - mastoid) * b["soft_hu"]))
    m = icr[sel]
    below *= m
    plate *= m
    v = img[sel]
    img[sel] = v * (1 - below - plate) + below * content + plate * b["bone_hu"]
    share[sel] = 1 - below - plate
    return share


def petrous_points(acq: Acquisition, a: dict, z: float) -> list[tuple[float, float]] | None:
    """Pixel (row, col) of both petrous bones on the slice at ``z``, or None away from them."""
    bx, by, _ = a["brain_axes"]
    out = []
    for sx in (-1.0, 1.0):
        c = np.array([sx * 0.45 * bx, 0.22 * by, a["base"]["z_pet"] - 6.0])
        c = acq.rotation @ c
        if abs(c[2] - z) > 12.0:
            return None
        n = acq.matrix
        out.append(((c[1] + acq.centre[1]) / acq.pixel_spacing + (n - 1) / 2.0,
                    (c[0] + acq.centre[0]) / acq.pixel_spacing + (n - 1) / 2.0))
    return out


def orbits(img: np.ndarray, p, a: dict, acq: Acquisition, z: float) -> None:
    """Globes (vitreous, dense lens) and extra-ocular muscles; outside the cranial cavity."""
    gx, gy, dz, r, vit, lens = a["base"]["globe"]
    gz = a["base"]["z_or"] - dz
    for sx in (-1.0, 1.0):
        for c, ax, hu in (((sx * gx, gy + r + 6.0, gz + 1.0), (2.5, 14.0, 3.0), a["base"]["muscle_hu"]),
                          ((sx * (gx + 9.0), gy + r + 6.0, gz), (2.5, 14.0, 3.0), a["base"]["muscle_hu"]),
                          ((sx * gx, gy, gz), (r, r, r), vit),
                          ((sx * gx, gy - r + 2.0, gz), (4.5, 1.8, 4.5), lens)):
            box = box_of(acq, z, c, max(ax))
            if box is not None:
                paint(img, soft_ellipsoid(sub(p, box), c, ax, acq), hu, box)


# --------------------------------------------------------------------------- dura and vessels


def _tube(img_shape, p, pts, radius: float, acq: Acquisition, z: float) -> np.ndarray | None:
    """Partial-volume membership of a tube of ``radius`` along the polyline ``pts`` (phantom mm)."""
    m = None
    for q0, q1 in zip(pts[:-1], pts[1:]):
        q0, q1 = np.asarray(q0, np.float32), np.asarray(q1, np.float32)
        mid, half = (q0 + q1) / 2, float(np.linalg.norm(q1 - q0)) / 2
        box = box_of(acq, z, tuple(mid), half + radius)
        if box is None:
            continue
        px, py, pz = sub(p, box)
        seg = q1 - q0
        tt = np.clip(((px - q0[0]) * seg[0] + (py - q0[1]) * seg[1] + (pz - q0[2]) * seg[2]) / max(float(seg @ seg), 1e-6),
                     0, 1)
        dx, dy, dzz = px - (q0[0] + tt * seg[0]), py - (q0[1] + tt * seg[1]), pz - (q0[2] + tt * seg[2])
        dist = np.sqrt(dx * dx + dy * dy + dzz * dzz) + 1e-6
        w = np.sqrt(acq.pixel_spacing ** 2 + (acq.thickness * np.abs(dzz) / dist) ** 2)
        mm = np.clip(0.5 - (dist - radius) / w, 0, 1)
        if m is None:
            m = np.zeros(img_shape, np.float32)
        np.maximum(m[box], mm, out=m[box])
    return m


def dura(img: np.ndarray, p, d: np.ndarray, brain: np.ndarray, a: dict, acq: Acquisition, z: float) -> None:
    """Falx, tentorium, venous sinuses, basilar artery and calcified siphons (in place)."""
    x, y, zz = p
    bx, by, bz = a["brain_axes"]
    du = a["dura"]
    t = max(acq.thickness, 0.5)
    falx_region = np.clip((np.abs(y) - 0.3 * by) / 4.0, 0, 1) + _sig((zz - 22.0) / 3.0)
    falx = np.clip((du["falx_t"] / 2 - np.abs(x)) / acq.pixel_spacing + 0.5, 0, 1) * np.clip(falx_region, 0, 1) * brain
    paint(img, falx, du["falx_hu"])
    if float(zz.min()) < du["tent_z"] + 4:   # tentorium: a tent sloping down to the back and the sides
        ht = du["tent_z"] - du["tent_slope"] * np.clip(y - 5.0, 0, None) - x * x / 90.0
        grad = np.sqrt(1.0 + du["tent_slope"] ** 2 + (x / 45.0) ** 2)
        tv = du["tent_t"] * grad
        lo, hi = zz - t / 2, zz + t / 2
        leaf = np.clip(np.minimum(ht + tv / 2, hi) - np.maximum(ht - tv / 2, lo), 0, t) / t
        leaf = np.maximum(leaf, np.clip(1 - np.abs(zz - ht) / (tv / 2 + 0.5 * acq.pixel_spacing * grad), 0, 1)
                          * (acq.thickness < tv))
        notch = np.clip((np.hypot(x / 14.0, (y - 6.0) / 20.0) - 1.0) * 4.0, 0, 1) * (y > 0)
        paint(img, leaf * notch * brain, du["tent_hu"])
    for pts in du["sinuses"]:
        m = _tube(img.shape, p, pts, du["sinus_r"], acq, z)
        if m is not None:
            paint(img, m, du["sinus_hu"])
    z_sel = a["base"]["z_sel"]
    if du["basilar_hu"] is not None:
        m = _tube(img.shape, p, [(0.0, 0.1 * by - 6, z_sel - 22), (0.0, 0.1 * by - 8, z_sel + 14)], 1.8, acq, z)
        if m is not None:
            paint(img, m, du["basilar_hu"])
    if du["siphon_hu"] is not None:
        for sx in (-1.0, 1.0):
            arc = [(sx * (14 + 3 * math.cos(s)), -8 + 8 * math.sin(s), z_sel - 4 + 6 * math.cos(s)) for s in
                   np.linspace(0, math.pi, 6)]
            m = _tube(img.shape, p, arc, 1.0, acq, z)
            if m is not None:
                paint(img, m, du["siphon_hu"])


# --------------------------------------------------------------------------- ageing and scalp


def pv_lucency(img, p, a, acq, z, blob) -> None:
    """Periventricular low density: soft halos around the lateral ventricles (before the ventricles)."""
    if not a["pv_lucency"]:
        return
    for c, ax, yaw in a["ventricles"][:2]:
        blob(c, tuple(v + 7.0 for v in ax), a["white_hu"] - a["pv_lucency"], yaw)


def old_infarcts(img, a, blob, brain) -> None:
    for c, ax, yaw, hu in a["infarcts"]:
        blob(c, ax, hu, yaw)


def scalp_haematoma(img: np.ndarray, d: np.ndarray, w: np.ndarray, theta: np.ndarray, zz: np.ndarray, a: dict) -> None:
    """Blood or swelling between the outer table and the skin (extracranial: not ICH)."""
    h = a["scalp_haem"]
    if h is None:
        return
    dth = np.angle(np.exp(1j * (theta - h["theta0"]))) / h["half_theta"]
    dzz = (zz - h["z0"]) / h["half_z"]
    f = np.clip(1 - dth ** 2 - dzz ** 2, 0, 1)
    outer = a["csf_gap"] + a["skull"]
    depth = h["depth"] * f
    m = np.clip(0.5 + (d - outer - 0.8) / w, 0, 1) * np.clip(0.5 - (d - outer - a["scalp"] * 0.5 - depth) / w, 0, 1)
    paint(img, m * (f > 0), h["hu"])
