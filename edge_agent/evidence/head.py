"""Head CT: the intracranial space, acute-blood evidence and the head domain statistics of one slice.

Physics (typical values on a water-calibrated scanner, 120 kVp; e.g. Parizel et
al., Eur Radiol 2001; Osborn's Brain; the CT number scale of PS3.3 C.11.1):

* bone: cortical > 1000 HU, diploë 400–800 HU; a pixel > 300 HU is bone (or
  bone partial volume), far above any soft tissue or blood;
* calcification (pineal, choroid plexus, basal ganglia, falx, vessel walls):
  > ~100–130 HU (Agatston's 130 HU; 100 HU is the conservative edge);
* acute clotted blood 50–90 HU (haematocrit-dependent; ~ 56 HU for fresh
  blood at Hct 45 %, up to 80–90 HU after clot retraction);
* grey matter 35–45 HU, white matter 20–30 HU, CSF 0–15 HU, fat -100…-50 HU,
  air ≈ -1000 HU.

The cranial cavity holds no fat and (outside surgery) no air: that, plus being
enclosed by bone, is what tells it from the orbits, sinuses, nasal cavity,
temporal fossae and scalp on a skull-base slice. Partial volume: a 1500 HU
table blurred by the in-plane point-spread function (σ ≈ 0.5–1 mm) and by our
block averaging and smoothing falls below 50 HU within ~2.5 mm of its edge; in
a thick slice that cuts a bone surface obliquely (skull base, orbital roof,
vertex) the ramp is much broader, so the exclusion starts not at the bone but
at the edge of everything > 90 HU connected to bone or calcification
(geodesic reconstruction), and ``bone_margin_mm`` is measured from there.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from edge_agent.evidence._grid import Grid, axis_ratio, disc, enclosed, reconstruct, smooth

FAT_AIR_HU = -50.0        # below: fat or air — not found in the cranial cavity
PARENCHYMA_HU = (0.0, 65.0)   # brain ± calibration tolerance; fat, air and bone fall outside
NOMINAL_PARENCHYMA_HU = 32.0
"""Median of grey + white matter on a water-calibrated scanner (GM 35–45, WM 20–30 HU)."""
ANATOMY_TOLERANCE_HU = 8.0
MAX_COMPONENTS = 4


def _compartments(g: Grid, spec) -> tuple[np.ndarray, np.ndarray, float | None, dict]:
    """Bone mask, intracranial mask and the parenchyma reference HU of one slice."""
    x = g.hu
    bone = x > spec.bone_hu
    bone_mm2 = float(bone.sum()) * g.pixel_mm2
    info = {"bone_mm2": round(bone_mm2, 1)}
    if bone_mm2 < 50.0:
        return bone, np.zeros(x.shape, bool), None, info
    closed = ndimage.binary_closing(bone, disc(2.0 / min(g.spacing)), border_value=0)
    inside = enclosed(closed)
    # split the enclosure at fat and air (orbits, sinuses, mastoid cells, nasal cavity): the cranial
    # cavity is what is left in large soft-tissue pieces
    fat_air_near = ndimage.binary_dilation(x < FAT_AIR_HU, disc(2.0 / min(g.spacing)))
    labels, n = ndimage.label(inside & ~fat_air_near)
    if n == 0:
        return bone, np.zeros(x.shape, bool), None, info
    idx = np.arange(1, n + 1)
    area = ndimage.sum_labels(np.ones_like(x), labels, idx) * g.pixel_mm2
    fat_air = ndimage.sum_labels(x < FAT_AIR_HU, labels, idx) / np.maximum(area / g.pixel_mm2, 1)
    lo, hi = PARENCHYMA_HU
    brainlike = ndimage.sum_labels((x >= lo) & (x <= hi), labels, idx) / np.maximum(area / g.pixel_mm2, 1)
    ok = (area >= spec.min_compartment_mm2) & (fat_air <= spec.max_fat_air_fraction) & (brainlike >= 0.5)
    keep = np.zeros(n + 1, bool)
    keep[1:] = ok
    ic = keep[labels]
    ref = None
    if ic.any():
        vals = x[ic & (x >= lo - 20) & (x <= hi + 20)]
        if vals.size > 200:
            m = float(np.median(vals))
            vals = vals[np.abs(vals - m) <= 20.0]    # second pass: parenchyma only, not CSF or blood
            ref = float(np.median(vals)) if vals.size else m
    info.update(_enclosed=inside, ic_mm2=round(float(ic.sum()) * g.pixel_mm2, 1), compartments=int(ok.sum()),
                enclosed_mm2=round(float(inside.sum()) * g.pixel_mm2, 1))
    return bone, ic, ref, info


def _straight_lines(labels: np.ndarray, idx: np.ndarray, counts: np.ndarray, g: Grid) -> np.ndarray:
    """Which components are straight thin bands: streaks (metal, beam hardening) or a dural sheet.

    From second moments: elongated (minor/major axis < 0.3), thin (width ≤ 4 mm) and
    straight — the spread across the long axis is what its own width explains, as for a
    rectangle (σ_minor·√12 ≤ 1.3 × width, width = area / length, length = √12·σ_major). A curved
    band (a crescent along the inner table, blood around the midbrain) spreads across
    its chord far more than its width and is kept.
    """
    if idx.size == 0:
        return np.zeros(0, bool)
    rows, cols = np.indices(labels.shape, dtype=np.float32)
    rows *= g.spacing[0]
    cols *= g.spacing[1]
    n = np.maximum(counts, 1)
    mr = ndimage.sum_labels(rows, labels, idx) / n
    mc = ndimage.sum_labels(cols, labels, idx) / n
    vrr = ndimage.sum_labels(rows * rows, labels, idx) / n - mr * mr + g.spacing[0] ** 2 / 12
    vcc = ndimage.sum_labels(cols * cols, labels, idx) / n - mc * mc + g.spacing[1] ** 2 / 12
    vrc = ndimage.sum_labels(rows * cols, labels, idx) / n - mr * mc
    tr, det = vrr + vcc, vrr * vcc - vrc * vrc
    half = np.sqrt(np.maximum(tr * tr / 4 - det, 0))
    s_max = np.sqrt(np.maximum(tr / 2 + half, 1e-9))
    s_min = np.sqrt(np.maximum(tr / 2 - half, 1e-9))
    width = counts * g.pixel_mm2 / (np.sqrt(12.0) * s_max)
    return (s_min / s_max < 0.3) & (s_min * np.sqrt(12.0) <= 1.3 * width) & (width <= 4.0)


def _denoise(x: np.ndarray, ic: np.ndarray, ref: float | None, g: Grid, spec, soft_max: float) -> tuple:
    """Smooth soft tissue just enough that parenchyma noise falls to about ``noise_hu`` (SD, HU).

    Grey matter (35–45 HU) and acute blood (≥ 50 HU) are only 5–15 HU apart, so a
    threshold means something only once the noise SD is a few HU: a 5 mm soft-kernel
    slice has 3–5 HU per 0.5 mm pixel, a 0.6–1 mm slice 10–20 HU. The pixel noise is
    measured (robust MAD of the residual against a 3×3 mean, in parenchyma) and the
    Gaussian width chosen for white noise, σ_out = σ_px · p / (2√π σ_g), between
    ``smoothing_mm`` and 2.5 mm (a 0.3 mL bleed is ~8 mm across). The smoothing is
    normalised over soft tissue only (-50 HU … calcification), so bone does not
    bleed into the brain next to it and a collection on the inner table keeps its HU.
    """
    par = ic if ref is None else ic & (np.abs(x - ref) <= 25.0)
    sd_px = 0.0
    if par.sum() > 100:
        r = (x - ndimage.uniform_filter(x, 3))[par]
        sd_px = float(1.4826 * np.median(np.abs(r - np.median(r))) * 1.0607)   # sqrt(9/8): 3×3 mean bias
    p = float(np.sqrt(g.pixel_mm2))
    sigma = float(np.clip(sd_px * p / (2.0 * np.sqrt(np.pi) * spec.noise_hu), spec.smoothing_mm, 2.5))
    w = ((x > FAT_AIR_HU) & (x < soft_max)).astype(np.float32)
    num = smooth(x * w, sigma, g.spacing)
    den = smooth(w, sigma, g.spacing)
    s = np.where(den > 0.2, num / np.maximum(den, 1e-3), x).astype(np.float32)
    return s, sd_px, sigma


def _blood(g: Grid, ic: np.ndarray, ref: float | None, spec, debug: dict | None = None) -> dict:
    """Compact regions of acute-blood density inside the intracranial mask, away from bone partial volume."""
    x = g.hu
    out = {"area_mm2": 0.0, "comps": []}
    if not ic.any():
        return out
    # calibration: within ±8 HU of the nominal parenchyma median, normal anatomy (atrophy, white-matter
    # disease, age) explains the difference and the literature thresholds apply as they are; beyond it the
    # scanner's calibration is suspect and the window moves with the excess (up to max_shift_hu)
    shift = 0.0
    if ref is not None:
        d = ref - NOMINAL_PARENCHYMA_HU
        shift = float(np.clip(np.sign(d) * max(abs(d) - ANATOMY_TOLERANCE_HU, 0.0), -spec.max_shift_hu,
                              spec.max_shift_hu))
    out["shift_hu"] = round(shift, 1)
    lo, hi = spec.blood_hu[0] + shift, spec.blood_hu[1] + shift
    if ref is not None:
        # blood is a candidate wherever it is hyperacute_contrast_hu denser than this brain's own parenchyma,
        # even below the (shifted) literature window: the dead band above leaves up to 8 HU of a calibration
        # error unshifted, and blood mixed with CSF (IVH) or unclotted reads lower. Below the window only a
        # large, clearly denser component counts (the unclotted-blood rule below); a small one needs a core.
        lo = min(lo, ref + spec.hyperacute_contrast_hu)
    # 90–100 HU is retracted clot as often as anything else; > calcification_hu is never blood
    hi = max(hi, spec.calcification_hu + shift - 0.5)
    s, sd_px, sigma = _denoise(x, ic, ref, g, spec, spec.calcification_hu + shift)
    out.update(noise_hu=round(sd_px, 1), smooth_mm=round(sigma, 2))
    # everything denser than blood that is connected to bone or a calcification: bone, its
    # partial-volume ramp (broad where a thick slice cuts bone obliquely) and calcifications
    seeds = x > spec.calcification_hu + shift
    dense = reconstruct(seeds, x > hi) | seeds
    # at least bone_margin_mm from anything outside the intracranial mask or dense (a dilation by a disc)
    near = ndimage.binary_dilation(~ic | dense, disc(spec.bone_margin_mm / min(g.spacing)))
    cand = ic & ~near & (s >= lo) & (s <= hi)
    if debug is not None:
        debug.update(s=s, dense=dense, cand=cand, raw=ic & (s >= lo) & (s <= hi))
    if not cand.any():
        return out
    cand = ndimage.binary_opening(cand, ndimage.generate_binary_structure(2, 1))   # drops 1-pixel lines
    labels, n = ndimage.label(cand, ndimage.generate_binary_structure(2, 2))
    if n == 0:
        return out
    idx = np.arange(1, n + 1)
    counts = ndimage.sum_labels(np.ones_like(x), labels, idx)
    areas = counts * g.pixel_mm2
    means = ndimage.mean(s, labels, idx)
    core = ndimage.sum_labels(s >= spec.core_hu + shift, labels, idx) * g.pixel_mm2
    objs = ndimage.find_objects(labels)
    # hysteresis: a region counts only with a core of clotted-blood density (≥ core_hu), which
    # normal dural venous sinuses (40–60 HU) and grey matter with noise do not have — or, for
    # hyperacute or anaemic blood that has not clotted (≈ 40–60 HU: ~56 HU at haematocrit 45 %), when it
    # is large (≥ min_hyperacute_mm2: 150 mm², a 14 mm disc, far more than a sinus cut obliquely, ~60 mm²)
    # and clearly denser than this brain's own parenchyma (mean ≥ reference + hyperacute_contrast_hu:
    # deep grey nuclei sit 5–12 HU above the grey/white median, unclotted blood 20–30 HU)
    clotted = core >= spec.min_core_mm2
    if ref is not None:
        clotted |= (areas >= spec.min_hyperacute_mm2) & (means >= ref + spec.hyperacute_contrast_hu)
    keep = np.flatnonzero((areas >= spec.min_component_mm2) & clotted)
    keep = keep[~_straight_lines(labels, idx[keep], counts[keep], g)]
    keep = keep[np.argsort(-areas[keep])]
    out["area_mm2"] = round(float(areas[keep].sum()), 2)
    out["largest_mm2"] = round(float(areas.max()), 2)
    comps = []
    for i in keep[:MAX_COMPONENTS]:
        sl = objs[i]
        r0, c0 = g.to_original(sl[0].start - 0.5, sl[1].start - 0.5)
        r1, c1 = g.to_original(sl[0].stop - 0.5, sl[1].stop - 0.5)
        comps.append([round(float(areas[i]), 2), round(float(means[i]), 1),
                      round(r0, 1), round(c0, 1), round(r1, 1), round(c1, 1)])
    out["comps"] = comps
    return out


def head_features(g: Grid | None, evidence, domain) -> dict:
    """Per-slice numbers for ``ich_blood`` evidence and the ``head`` domain (JSON-serialisable)."""
    from edge_agent.evidence import EvidenceSpec

    spec = evidence if evidence is not None and evidence.kind == "ich_blood" else EvidenceSpec("ich_blood")
    out: dict = {}
    if g is None:
        if evidence is not None:
            out["ich"] = {"area_mm2": 0.0, "comps": []}
        if domain is not None:
            out["head"] = {"skull": False, "body_mm2": 0.0}
        return out
    bone, ic, ref, info = _compartments(g, spec)
    if evidence is not None:
        # a slice whose skull outweighs its brain cuts the skull tangentially (vertex, cranial floor):
        # through-plane bone partial volume raises the whole small brain section; no evidence there
        tangential = info.get("ic_mm2", 0.0) < spec.min_brain_to_bone * info.get("bone_mm2", 0.0)
        out["ich"] = dict(_blood(g, ic if not tangential else np.zeros_like(ic), ref, spec),
                         tangential=bool(tangential), ic_mm2=info.get("ic_mm2", 0.0),
                         mm=[round(g.spacing[0] / g.factor, 4), round(g.spacing[1] / g.factor, 4)])
    if domain is not None:
        out["head"] = _domain_stats(g, bone, ic, ref, info, domain)
    return out


def _domain_stats(g: Grid, bone: np.ndarray, ic: np.ndarray, ref: float | None, info: dict, domain) -> dict:
    """What the slice looks like: skull, brain histogram, and the shape of the object (a cylinder?)."""
    x = g.hu
    body = ndimage.binary_fill_holes(x > -300)
    labels, n = ndimage.label(body)
    if n > 1:   # the largest object is the head (or phantom); drop the table and cables
        sizes = ndimage.sum_labels(np.ones_like(x), labels, np.arange(1, n + 1))
        body = labels == (1 + int(np.argmax(sizes)))
    body_px = max(int(body.sum()), 1)
    inner = body & ~ndimage.binary_dilation(bone, disc(1.5))
    vals = x[inner]
    d = {
        "skull": bool(info.get("bone_mm2", 0.0) >= domain.min_bone_mm2 and info.get("enclosed_mm2", 0.0)
                      >= domain.min_enclosed_mm2),
        "bone_mm2": info.get("bone_mm2", 0.0),
        "ic_mm2": info.get("ic_mm2", 0.0),
        "body_mm2": round(body_px * g.pixel_mm2, 1),
        "axis_ratio": round(axis_ratio(body), 3),
        # a cylinder's cross-section fills its circumscribed circle; a head does not
        "fill": round(_disc_fill(body), 3),
        "water_frac": round(float(((vals > -15) & (vals < 15)).mean()) if vals.size else 0.0, 3),
        "dense_frac": round(float(((vals > 80) & (vals < 300)).mean()) if vals.size else 0.0, 3),
        "ref_hu": None if ref is None else round(ref, 1),
    }
    enc = info.get("_enclosed", np.zeros(x.shape, bool))
    ev = x[enc & (x > -200) & (x < 200)]
    d["enc_median"] = round(float(np.median(ev)), 1) if ev.size > 50 else None
    d["enc_frac_0_60"] = round(float(((ev >= 0) & (ev <= 60)).mean()), 3) if ev.size > 50 else None
    return d


def _disc_fill(mask: np.ndarray) -> float:
    """Area of the region over the area of the circle through its farthest point from the centroid."""
    rr, cc = np.nonzero(mask)
    if rr.size < 20:
        return 0.0
    r2 = (rr - rr.mean()) ** 2 + (cc - cc.mean()) ** 2
    return float(rr.size / (np.pi * (np.sqrt(r2.max()) + 0.5) ** 2))
