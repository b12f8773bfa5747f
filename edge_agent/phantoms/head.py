"""Non-contrast head CT phantom with optional intracranial haemorrhage.

Anatomy (phantom frame, mm; x to the patient's left, y posterior, z superior,
origin at the centre of the brain): scalp, skull with inner/outer tables and
diploë, a CSF layer, cortex with sulci and a midline fissure, white matter,
deep grey nuclei, lateral/third/fourth ventricles; a skull base drawn as the
floor of the cranial fossae (orbital roofs, sphenoid, clivus, petrous ridges
with mastoid air cells, ethmoid cells, orbits with globes), dense falx and
tentorium, dural venous sinuses, posterior-fossa streaks between the petrous
bones (:mod:`edge_agent.phantoms.head_anatomy`). Confounders that are not
bleeds: calcifications (pineal, choroid plexus, basal ganglia, falx, arterial
walls), ageing (atrophy, periventricular low density, old infarcts, lacunes),
scalp haematoma, motion, metal streaks, soft/sharp kernels, FBP/iterative
textures and 0.6–5 mm slices (:mod:`edge_agent.phantoms._scanner`).
Haemorrhages (:mod:`edge_agent.phantoms.head_bleeds`): ``iph``, ``sdh``,
``edh``, ``sah``, ``ivh``, 50–90 HU.

Typical values follow standard CT teaching (grey matter 35–45 HU, white
matter 20–30 HU, CSF 0–10 HU, acute blood 50–90 HU, cortical bone
> 1000 HU); tissue values, geometry and textures are randomised widely
(domain randomisation). ``force`` switches individual confounders on or off
(keys: atrophy, infarct, pv_lucency, calcification, dense_artery,
scalp_haematoma, motion, metal, kernel, recon).
"""

from __future__ import annotations

import math

import numpy as np

from edge_agent.phantoms import _scanner, head_anatomy as ha
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
from edge_agent.phantoms.head_bleeds import _bleed, _paint_bleed, bleed_centre

from edge_agent.phantoms.head_bleeds import BLEED_TYPES  # noqa: E402  (re-exported)
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
        "grey_hu": rng.uniform(32.0, 46.0),
        "white_hu": rng.uniform(5.0, 15.0),    # grey-white contrast; made absolute below
        "csf_hu": rng.uniform(-3.0, 12.0),
        "scalp_hu": rng.uniform(15.0, 45.0),
        "table_hu": rng.uniform(1300.0, 1900.0),
        "diploe_hu": rng.uniform(450.0, 800.0),
        "cortex": rng.uniform(2.5, 4.0),
        "sulci": (rng.uniform(0, 6.28), rng.uniform(0, 6.28), int(rng.integers(9, 15)), rng.uniform(0.85, 1.15)),
        "cupping_hu": rng.uniform(0.0, 12.0),
        "cupping_mm": rng.uniform(3.0, 9.0),
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
        "calcifications": [],
    }
    a["white_hu"] = max(a["grey_hu"] - a["white_hu"], 22.0)
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
    icr = inside(gap)
    paint(img, icr, a["csf_hu"])
    brain = inside(0.0)
    theta = np.arctan2(y, x)
    paint(img, brain, a["grey_hu"])
    # White matter below the cortical ribbon; sulci cut into the ribbon; a midline fissure.
    paint(img, inside(-a["cortex"]), a["white_hu"])
    ph1, ph2, nf, thr = a["sulci"]
    pattern = np.cos(nf * theta + 0.09 * zz + ph1) + 0.6 * np.cos(1.7 * nf * theta - 0.07 * zz + ph2)
    sulcal = np.clip((pattern - thr) * 3.0, 0.0, 1.0) * np.clip((d + 9.0 + 6.0 * a["atrophy"]) / 3.0, 0.0, 1.0) * brain
    fissure = np.clip(1.0 - np.abs(x) / (1.2 + 3.0 * a["atrophy"]), 0.0, 1.0) \
        * np.clip((np.abs(y) - 0.35 * by) / 4.0, 0.0, 1.0) * brain
    csf = np.maximum(sulcal, fissure)
    paint(img, csf, a["csf_hu"])
    img += (a["cupping_hu"] * np.exp(-np.abs(d) / a["cupping_mm"]) * brain).astype(np.float32)

    def blob(centre, axes, value, yaw=0.0):
        box = box_of(acq, z, centre, max(axes))
        if box is not None:
            m = soft_ellipsoid(sub(p, box), centre, axes, acq, yaw_deg=yaw)
            paint(img, m, value, box)
            return m, box
        return None, None

    for c, ax, yaw in a["deep_grey"]:
        blob(c, ax, a["grey_hu"] - 3.0, yaw)
    ha.pv_lucency(img, p, a, acq, z, blob)
    vent_m = []
    for c, ax, yaw in a["ventricles"]:
        vent_m.append(blob(c, ax, a["csf_hu"], yaw))
    blob(*a["third_ventricle"], a["csf_hu"])
    blob(*a["fourth_ventricle"], a["csf_hu"])
    ha.old_infarcts(img, a, blob, brain)
    ha.dura(img, p, d, brain, a, acq, z)
    allow = ha.skull_base(img, p, icr, a, acq)

    area, mask = 0.0, None
    if bleed is not None:
        area, mask = _paint_bleed(img, p, d, w, theta, sulcal, vent_m, bleed, a, acq, z, allow=allow)
    for c, radius, hu, _name in a["calcifications"]:
        if radius > 0:
            blob(c, (radius, radius, radius), hu)
    ha.orbits(img, p, a, acq, z)
    ha.scalp_haematoma(img, d, w, theta, zz, a)

    pet = ha.petrous_points(acq, a, z)
    if pet is not None:   # beam hardening between the petrous bones: a dark band and radial streaks
        tissue = img > -500
        img += streak(img.shape, pet[0], pet[1], a["base"]["streak_w"] / acq.pixel_spacing,
                      -float(acq.extras["bh_hu"])) * tissue
        for pt in pet:
            img += _scanner.streaks_from(img, pt, a["base"]["rays"], 1.2 / acq.pixel_spacing,
                                         60.0 / acq.pixel_spacing) * tissue
    for kk, p0, p1, amp, width in acq.extras["streaks"]:
        if kk == k:
            img += streak(img.shape, p0, p1, width, amp, infinite=True) * (img > -500)
    for metal in acq.extras["metal"]:
        c = metal["centre"]
        box = box_of(acq, z, c, metal["radius"])
        if box is not None:
            m = soft_ellipsoid(sub(p, box), c, (metal["radius"],) * 3, acq)
            if float(m.max()) > 0.05:
                paint(img, m, 3071.0, box)
                rc = (acq.rotation @ np.asarray(c))
                pix = ((rc[1] + acq.centre[1]) / acq.pixel_spacing + (n - 1) / 2.0,
                       (rc[0] + acq.centre[0]) / acq.pixel_spacing + (n - 1) / 2.0)
                img += _scanner.streaks_from(img, pix, metal["rays"], 1.5 / acq.pixel_spacing,
                                             metal["decay_mm"] / acq.pixel_spacing) * float(m.max()) * (img > -500)
    img = _scanner.apply_motion(img, acq.extras["motion"], k)
    img = apply_scanner(img, acq, seed, k)
    return img, area, mask


def head_scan(rng: np.random.Generator, *, thickness: float | None, slices: int | None, matrix: int,
              bleed_point: np.ndarray | None, force: dict | None = None) -> Acquisition:
    """Draw the acquisition for a head series (FOV 0.4–0.9 mm pixels, 0.6–5 mm slices, tilted head)."""
    force = force or {}
    acq = sample_acquisition(
        rng, spacing_range=(0.4, 0.9), thickness=thickness, slices=slices, coverage=(120.0, 165.0),
        z_range=(-70.0, 80.0), matrix=matrix, shift_mm=18.0, yaw=15.0, pitch=12.0, noise=(2.0, 7.0),
        thickness_choices=THICKNESSES, thickness_p=THICKNESS_P,
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
    xr = np.random.default_rng(rng.integers(2 ** 32))   # a separate stream for the newer effects
    recon = _scanner.draw_recon(xr, acq.thickness, force)
    acq.extras["recon"] = recon
    acq.noise_sd = recon["noise_sd"]
    acq.noise_blur = recon["sigma"]
    acq.extras["motion"] = _scanner.draw_motion(xr, len(acq.z_positions), force)
    return acq


THICKNESSES = (0.625, 1.0, 1.25, 2.0, 2.5, 3.0, 4.0, 5.0)
THICKNESS_P = (0.06, 0.06, 0.04, 0.1, 0.14, 0.14, 0.16, 0.30)


def generate_head(seed: int, *, bleed: str | None, volume_ml: float | None, slices: int | None,
                  thickness_mm: float | None, matrix: int, only=None, force: dict | None = None) -> dict:
    """Everything :func:`edge_agent.phantoms.head_phantom` needs.

    ``only`` renders a subset of slices: a list of indices, or a callable
    ``(acquisition, bleed_z or None, rng) -> indices`` (training picks slices around the bleed).
    ``force`` switches confounders on/off (see the module docstring).
    """
    force = dict(force or {})
    rng = np.random.default_rng([seed, 1])
    a = _anatomy(rng)
    ha.draw_extras(np.random.default_rng([seed, 21]), a, force)
    b = None
    if bleed == "random":
        bleed = BLEED_TYPES[int(rng.integers(len(BLEED_TYPES)))]
    if bleed is not None:
        if volume_ml is None:
            volume_ml = float(np.exp(rng.uniform(math.log(0.3), math.log(60.0))))
        b = _bleed(rng, a, bleed, float(volume_ml))
    acq = head_scan(rng, thickness=thickness_mm, slices=slices, matrix=matrix,
                    bleed_point=None if b is None else bleed_centre(b, a), force=force)
    acq.extras["metal"] = _scanner.draw_metal(np.random.default_rng([seed, 22]), a, force)
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
    sharp = acq.extras["recon"]["kernel"] == "sharp"
    headers = make_headers(
        rng, acq.vendor, body_part="HEAD", study=str(rng.choice(["CT HEAD WO CONTRAST", "CT BRAIN NON CON",
                                                                  "HEAD ROUTINE", "CT CRANE SANS IV"])),
        series=f"AXIAL {acq.thickness:g}mm {acq.vendor.kernel}" + (" BONE" if sharp else ""),
        window=(40.0, 80.0), kvp=120.0)
    # the kernel named as a scanner names it, so that a model's kernel rule (applies_to.kernels) sees it
    headers.extra["ConvolutionKernel"] = acq.vendor.sharp_kernel if sharp else acq.vendor.kernel
    return {"anatomy": a, "bleed": b, "acq": acq, "images": images, "areas": np.asarray(areas),
            "amounts": np.asarray(amounts),
            "indices": list(indices), "masks": masks,
            "headers": headers}


def head_confounders(gen: dict) -> list[str]:
    """Names of the non-bleed findings and artefacts a generated head carries."""
    a, acq = gen["anatomy"], gen["acq"]
    out = sorted({c[3] for c in a["calcifications"]}) + ha.confounders(a)
    out += ["streaks"] * bool(acq.extras["streaks"]) + ["motion"] * bool(acq.extras["motion"])
    out += ["metal"] * bool(acq.extras["metal"])
    if acq.extras["recon"]["kernel"] == "sharp":
        out.append("sharp_kernel")
    return out
