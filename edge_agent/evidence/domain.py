"""Series domain verdicts: is this the anatomy (and the calibration) the model was made for?

Head: a non-contrast adult head CT on a water-calibrated scanner shows a skull
ring around brain whose soft tissue sits at 20–45 HU (grey 35–45, white 20–30);
its outline is an irregular oval whose size changes a lot from the skull base to
the vertex. A QA phantom is a cylinder (a circle of constant size along z) of
water (≈ 0 HU) or acrylic (≈ 120 HU) with no skull; a contrast or perfusion scan,
a derived map or a mis-calibrated scanner moves the brain median out of range.

Chest: air-like lung inside the body on most slices, and body soft tissue at
sane values (fat -100, muscle/blood 40 HU → median of body soft tissue
about -100…+60 HU). A field of view that cuts through the body (cardiac
reconstructions at 200–250 mm, targeted small FOV) shows little of the lungs
and is out of domain for a whole-lung model.
"""

from __future__ import annotations

import numpy as np


def head_domain(spec, features):
    from edge_agent.evidence import DomainVerdict

    rows = [f.get("head") for f in features if f.get("head") is not None]
    rows = [r for r in rows if r.get("body_mm2", 0.0) > 0]
    n = len(rows)
    if n == 0:
        return DomainVerdict(False, "no object in the field of view on any slice", {"slices": len(features)})
    skull = [r for r in rows if r["skull"]]
    skull_frac = len(skull) / n
    refs = [r["ref_hu"] for r in skull if r.get("ref_hu") is not None and r.get("ic_mm2", 0) >= 2000]
    enc = [r["enc_median"] for r in rows if r.get("enc_median") is not None]
    areas = np.array([r["body_mm2"] for r in rows])
    cv = float(areas.std() / areas.mean()) if areas.mean() > 0 else 0.0
    roundish = float(np.mean([(r["axis_ratio"] >= spec.cylinder_axis_ratio) and (r["fill"] >= spec.cylinder_fill)
                              for r in rows]))
    water = float(np.median([r["water_frac"] for r in rows]))
    stats = {"slices": len(features), "skull_fraction": round(skull_frac, 3),
             "brain_median_hu": round(float(np.median(refs)), 1) if refs else None,
             "enclosed_median_hu": round(float(np.median(enc)), 1) if enc else None,
             "circular_fraction": round(roundish, 3), "area_cv": round(cv, 3), "water_fraction": round(water, 3)}
    lo, hi = spec.brain_median_hu
    if roundish >= 0.8 and (cv <= spec.cylinder_area_cv or n < 3):
        return DomainVerdict(False, "the object is a cylinder of constant circular cross-section "
                             f"({roundish:.0%} of slices circular): a QA or water phantom, not a head", stats)
    if skull_frac < spec.min_skull_fraction:
        return DomainVerdict(False, f"no skull around the field on {1 - skull_frac:.0%} of slices: "
                             "not a head CT the model can assess", stats)
    if not refs:
        med = stats["enclosed_median_hu"]
        return DomainVerdict(False, "no brain-density tissue (10–60 HU) inside the skull"
                             + (f" (median {med:.0f} HU)" if med is not None else "")
                             + ": a phantom, a contrast or derived image, or a mis-calibrated scanner", stats)
    med = stats["brain_median_hu"]
    if not lo <= med <= hi:
        return DomainVerdict(False, f"brain tissue median {med:.0f} HU lies outside {lo:g}–{hi:g} HU: a "
                             "mis-calibrated scanner, contrast or an unusual reconstruction", stats)
    if water >= spec.max_water_fraction:
        return DomainVerdict(False, f"{water:.0%} of the object is water-like (-15…15 HU): a water phantom "
                             "rather than a head", stats)
    return DomainVerdict(True, f"head CT: skull on {skull_frac:.0%} of slices, brain median {med:.0f} HU", stats)


def chest_domain(spec, features):
    from edge_agent.evidence import DomainVerdict

    rows = [f.get("chest") for f in features if f.get("chest") is not None]
    rows = [r for r in rows if r.get("body_mm2", 0.0) > 0]
    if not rows:
        return DomainVerdict(False, "no body in the field of view on any slice", {"slices": len(features)})
    frac = np.array([r["lung_mm2"] / r["body_mm2"] for r in rows])
    with_lung = float((frac >= spec.min_lung_fraction).mean())
    edge = float(np.median([r["edge"] for r in rows]))
    soft = [r["soft_median"] for r in rows if r.get("soft_median") is not None]
    lung_med = [r["lung_median"] for r in rows if r.get("lung_median") is not None]
    stats = {"slices": len(features), "lung_slice_fraction": round(with_lung, 3),
             "median_lung_fraction": round(float(np.median(frac)), 3), "field_edge_cut": round(edge, 3),
             "soft_median_hu": round(float(np.median(soft)), 1) if soft else None,
             "lung_median_hu": round(float(np.median(lung_med)), 1) if lung_med else None}
    if edge >= spec.max_edge_cut:
        return DomainVerdict(False, f"the field of view cuts through the body on {edge:.0%} of its edge: a small "
                             "(cardiac or targeted) reconstruction that shows only part of the lungs", stats)
    if with_lung < spec.min_lung_slices:
        return DomainVerdict(False, f"lungs on only {with_lung:.0%} of slices: not a chest CT that covers the "
                             "lungs", stats)
    lo, hi = spec.soft_median_hu
    if soft and not lo <= stats["soft_median_hu"] <= hi:
        return DomainVerdict(False, f"body soft tissue median {stats['soft_median_hu']:.0f} HU outside "
                             f"{lo:g}–{hi:g} HU: a mis-calibrated scanner or not a CT in HU", stats)
    return DomainVerdict(True, f"chest CT: lungs on {with_lung:.0%} of slices", stats)
