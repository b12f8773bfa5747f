"""Chest CT phantom with optional pulmonary nodule (v2: what real chests have).

Anatomy and confounders: :mod:`edge_agent.phantoms.chest_anatomy` (chest wall, ribs and costal
cartilage, spine, diaphragm with liver dome, spleen, stomach and splenic flexure, heart with coronary
calcium, aorta with calcified plaques, pulmonary arteries, SVC, airways, oesophagus, lymph nodes,
fissures, atelectasis, emphysema and bullae, scars, pleural plaques, calcified granulomas, mucus,
metal), vessels and bronchi: :mod:`edge_agent.phantoms.chest_vessels` (3-D trees that branch, taper
and continue across slices), nodules: :mod:`edge_agent.phantoms.chest_nodules`. Scanner:
soft / standard / sharp (lung) kernels, FBP or iterative texture, standard or low dose, 0.625–5 mm
slices, breathing motion near the diaphragm and heart, cardiac pulsation
(:mod:`edge_agent.phantoms._scanner`).

``force`` switches confounders on or off: the keys of
:data:`edge_agent.phantoms.chest_anatomy.CONFOUNDER_P` (``emphysema``, ``bullae``, ``atelectasis``,
``plate_atelectasis``, ``fissures``, ``scar``, ``pleural_thickening``, ``granuloma``, ``mucus``,
``lymph_nodes``, ``coronary_calcium``, ``aortic_calcium``, ``costal_calcification``, ``metal``,
``cardiac_motion``), plus ``motion`` (breathing), ``kernel`` ("soft" | "standard" | "sharp"),
``recon`` ("fbp" | "iterative"), ``low_dose`` (bool), ``nodule_shape`` ("sphere" | "lobulated" |
"spiculated"), ``nodule_location`` ("parenchymal" | "juxtapleural" | "juxtavascular") and ``noise``
(False: no noise, kernel or calibration quirk — for tests).

A calcified granuloma (dense, > 200 HU, ≤ 8 mm) is a benign calcification pattern (Fleischner Society:
no follow-up) and is labelled negative.
"""

from __future__ import annotations

import math

import numpy as np

from edge_agent.phantoms import _scanner, chest_anatomy as ca, chest_vessels as cv
from edge_agent.phantoms._geometry import AIR_HU, Acquisition, apply_scanner, make_headers, sample_acquisition
from edge_agent.phantoms.chest_nodules import NODULE_TYPES, draw_nodule, render_nodule

MIN_LABEL_AREA_MM2 = 8.0
THICKNESSES = (0.625, 1.0, 1.25, 2.0, 2.5, 3.0, 5.0)
THICKNESS_P = (0.08, 0.1, 0.12, 0.12, 0.16, 0.12, 0.30)

__all__ = ["NODULE_TYPES", "MIN_LABEL_AREA_MM2", "generate_chest", "chest_confounders"]


def _seg_cache(a: dict, acq: Acquisition) -> dict:
    R = acq.rotation
    vessels = [(R @ s[0], R @ s[1], s[2], s[3]) for s in a["arteries"] + a["veins"]]
    bronchi = [(R @ b[0], R @ b[1], b[2], b[3], b[4]) for b in a["bronchi"]]
    return {"vessels": vessels, "bronchi": bronchi,
            "vz": np.array([(min(v[0][2], v[1][2]) - v[2], max(v[0][2], v[1][2]) + v[2]) for v in vessels]),
            "bz": np.array([(min(b[0][2], b[1][2]) - b[2] - b[3], max(b[0][2], b[1][2]) + b[2] + b[3]) for b in bronchi])
            if bronchi else np.zeros((0, 2))}


def _near(cache: dict, z: float, half: float) -> dict:
    out = {}
    for key, zk in (("vessels", "vz"), ("bronchi", "bz")):
        zr = cache[zk]
        if len(zr) == 0:
            out[key] = []
            continue
        keep = np.flatnonzero((zr[:, 0] <= z + half) & (zr[:, 1] >= z - half))
        out[key] = [cache[key][i] for i in keep]
    return out


def _motion_weight(a: dict, p, breathing: bool) -> np.ndarray:
    """Where motion shows: near the diaphragm (breathing) and around the heart (pulsation)."""
    x, y, zz = p
    w = np.zeros_like(x)
    if breathing:
        w = np.exp(-np.clip(zz - ca.dome_z(a, x, y), 0.0, None) / 30.0)
    h = a["heart"]
    f = h["frame"]
    dx, dy, dz = x - h["c"][0], y - h["c"][1], zz - h["c"][2]
    q = np.sqrt(sum(((f[0, i] * dx + f[1, i] * dy + f[2, i] * dz) / h["axes"][i]) ** 2 for i in range(3)))
    if a["cardiac_motion"] is not None:
        w = np.maximum(w, np.clip((1.4 - q) / 0.3, 0.0, 1.0))
    return w.astype(np.float32)


def _crop(slab: cv.Slab, a: dict):
    bx, by = a["body"]
    ex, ey = bx * 1.02 + by * 0.12 + 6.0, by * 1.02 + bx * 0.12 + 6.0
    box = slab.box(-ex, ex, -ey, ey)
    rs, cs = box
    X = slab.xs[cs][None, :]
    Y = slab.ys[rs][:, None]
    r = slab.rt
    z = np.float32(slab.z)
    p = tuple((r[i, 0] * X + r[i, 1] * Y + r[i, 2] * z).astype(np.float32) for i in range(3))
    return box, p


def _render_slice(a: dict, nod: dict | None, acq: Acquisition, z: float, seed: int, k: int, cache: dict,
                  clean: bool) -> tuple[np.ndarray, float, np.ndarray, float]:
    """One slice: (image, nodule cross-section area mm², nodule membership, Σ membership × px² mm²)."""
    n = acq.matrix
    img = np.full((n, n), AIR_HU, np.float32)
    slab = cv.Slab(acq, z)
    crop, p = _crop(slab, a)
    view = img[crop]
    masks = ca.render_body(view, p, slab, a)
    lung = np.zeros((n, n), np.float32)
    lung[crop] = masks["lung"]
    ca.render_fissures(view, p, slab, a, masks["lung"])
    near = _near(cache, z, acq.thickness / 2 + 1.0)
    ca.render_lung_detail(img, slab, a, lung, near)
    heart = ca.render_mediastinum(img, slab, a)
    lung_eff = lung * (1.0 - heart)
    area, m, amount = 0.0, np.zeros((n, n), np.float32), 0.0
    if nod is not None:
        area, m, amount = render_nodule(img, slab, nod, lung_eff, a["lung_hu"])
    ca.render_metal(img, slab, a)
    breathing = acq.extras["motion"]
    cardiac = a["cardiac_motion"]
    in_run = breathing is not None and breathing["k0"] <= k < breathing["k1"]
    if (in_run or (cardiac is not None and heart.any())) and not clean:
        wmap = np.zeros((n, n), np.float32)
        wmap[crop] = _motion_weight(a, p, in_run)
        if float(wmap.max()) > 0.01:
            moved = img
            if in_run:
                moved = _scanner.apply_motion(moved, breathing, k)
            if cardiac is not None and heart.any():
                moved = _scanner.apply_motion(moved, cardiac, 0)
            img = img + wmap * (moved - img)
    if clean:
        img = np.where(img > -950, img * acq.hu_scale + acq.hu_offset, img).astype(np.float32)
    else:
        img = apply_scanner(img, acq, seed, k)
    return img.astype(np.float32), area, m, amount


def chest_scan(rng: np.random.Generator, xr: np.random.Generator, *, thickness: float | None, slices: int | None,
               matrix: int, force: dict) -> Acquisition:
    """Field of view 0.6–0.9 mm pixels (512²), 0.625–5 mm slices, kernel, dose, breathing motion."""
    acq = sample_acquisition(
        rng, spacing_range=(0.6, 0.9), thickness=thickness, slices=slices, coverage=(200.0, 320.0),
        z_range=(-110.0, 165.0), matrix=matrix, shift_mm=20.0, yaw=6.0, pitch=3.0, noise=(8.0, 35.0),
        thickness_choices=THICKNESSES, thickness_p=THICKNESS_P,
    )
    recon = _scanner.draw_recon(xr, acq.thickness, force)
    low = xr.random() < 0.3
    low = bool(force.get("low_dose", low))
    dose = xr.uniform(1.8, 3.5) * (xr.uniform(1.8, 2.8) if low else 1.0)
    recon["noise_sd"] = float(np.clip(recon["noise_sd"] * dose, 6.0, 160.0))
    recon["low_dose"] = low
    acq.extras["recon"] = recon
    acq.noise_sd = recon["noise_sd"]
    acq.noise_blur = recon["sigma"]
    on = xr.random()
    mforce = {"motion": force.get("motion", on < 0.2)}
    acq.extras["motion"] = _scanner.draw_motion(xr, len(acq.z_positions), mforce)
    return acq


def generate_chest(seed: int, *, nodule: str | None, diameter_mm: float | None, slices: int | None,
                   thickness_mm: float | None, matrix: int, only=None, force: dict | None = None) -> dict:
    """Everything :func:`edge_agent.phantoms.chest_phantom` needs.

    ``only``: a list of slice indices, or ``(acquisition, nodule_z or None, rng) -> indices``."""
    force = dict(force or {})
    rng = np.random.default_rng([seed, 2])
    a = ca.draw(rng, np.random.default_rng([seed, 31]), np.random.default_rng([seed, 32]), force)
    nr = np.random.default_rng([seed, 33])
    nod = None
    if nodule == "random":
        nodule = NODULE_TYPES[int(nr.integers(len(NODULE_TYPES)))]
    if nodule is not None:
        if diameter_mm is None:
            diameter_mm = float(np.exp(nr.uniform(math.log(4.0), math.log(30.0))))
        nod = draw_nodule(nr, a, nodule, float(diameter_mm), force)
    acq = chest_scan(rng, np.random.default_rng([seed, 34]), thickness=thickness_mm, slices=slices, matrix=matrix,
                     force=force)
    nz = None
    if nod is not None:
        nz = float((acq.rotation @ nod["centre"])[2])
        lo, hi = acq.z_positions[0], acq.z_positions[-1]
        if not lo <= nz <= hi:
            acq.z_positions = acq.z_positions + (nz - (lo + hi) / 2 + rng.uniform(-0.3, 0.3) * (hi - lo))
    if callable(only):   # (acq, nodule_z, rng) or (acq, nodule_z, rng, anatomy): training picks hard slices
        import inspect

        extra = (a,) if len(inspect.signature(only).parameters) >= 4 else ()
        only = only(acq, nz, np.random.default_rng([seed, 3]), *extra)
    indices = list(range(len(acq.z_positions)) if only is None else only)
    cache = _seg_cache(a, acq)
    clean = force.get("noise", True) is False
    images, areas, masks, amounts = [], [], [], []
    for k in indices:
        img, area, m, amount = _render_slice(a, nod, acq, float(acq.z_positions[k]), seed, k, cache, clean)
        images.append(img)
        areas.append(area)
        masks.append(m >= 0.5)
        amounts.append(amount)
    kernel = acq.extras["recon"]["kernel"]
    kname = {"soft": "SOFT", "standard": "STANDARD", "sharp": "LUNG"}[kernel]
    headers = make_headers(
        rng, acq.vendor, body_part="CHEST", study=str(rng.choice(["CT CHEST WO CONTRAST", "CT THORAX",
                                                                   "LOW DOSE CHEST", "CT LUNG SCREENING"])),
        series=f"AXIAL {acq.thickness:g}mm {kname}", window=(-600.0, 1500.0), kvp=float(rng.choice([100.0, 120.0])))
    return {"anatomy": a, "nodule": nod, "acq": acq, "images": images, "areas": np.asarray(areas),
            "amounts": np.asarray(amounts), "indices": indices, "masks": masks, "headers": headers,
            "confounders": chest_confounders(a, acq)}


def chest_confounders(a: dict, acq: Acquisition) -> list[str]:
    """Names of the non-nodule findings and artefacts a generated chest carries."""
    out = list(a["confounders"]) + ["vessels"]
    if acq.extras.get("motion"):
        out.append("motion")
    rec = acq.extras.get("recon", {})
    if rec.get("kernel") == "sharp":
        out.append("sharp_kernel")
    if rec.get("low_dose"):
        out.append("low_dose")
    if acq.thickness <= 1.25:
        out.append("thin_slices")
    return out
