"""Coronary artery calcium: the Agatston score with a rule-based heart localisation (plug-in ``agatston``).

Method (docs/MODELS.md, "coronary_calcium"):

* **Lesions** (Agatston et al., *J Am Coll Cardiol* 1990;15:827): in each axial
  slice, pixels ≥ ``threshold_hu`` (130 HU), grouped into 8-connected in-plane
  components; a component counts when its area is ≥ ``min_area_mm2`` (1 mm²).
  Its weight follows its peak HU: 130–199 → 1, 200–299 → 2, 300–399 → 3,
  ≥ 400 → 4; its score is area (mm²) × weight.
* **Slice thickness**: the score is defined on contiguous 3 mm slices. Each
  slice stands for its slice increment (the median distance between slice
  centres), so the sum is multiplied by increment / ``reference_thickness_mm``
  (3 mm) — the usual ``thickness / 3`` correction on contiguous series, and no
  double counting on overlapping ones.
* **Where** (only coronary calcium counts), per slice from HU alone: the body
  (> -500 HU, largest component, holes filled); the lungs (< -400 HU inside it,
  components ≥ 10 cm², on both sides of the body's centre); the mediastinum
  (inside the convex hull of the lungs, outside the lungs); the spine (the
  largest ≥ 130 HU structure near the midline in the posterior half). A lesion
  is dropped when its ≥ 130 HU component is large (≥ ``max_lesion_mm2``: bone)
  or leaves the mediastinum (ribs, sternum, costal cartilage, spine), when it
  lies behind the front of the spine, or inside the descending aorta (the
  roundest soft-tissue disc beside the spine: distance-transform maximum) or
  within ``aortic_margin_mm`` of its wall. Round soft-tissue cross-sections in
  fat, anterior to the spine (the ascending aorta, pulmonary trunk, SVC), are
  recorded for the series step. Each kept lesion records the fraction of fat
  (-190…-30 HU) in a ring 2–5 mm around it: coronary arteries run in
  epicardial fat, valve and annulus calcium sits in blood and myocardium.
* **Series step**: the heart's levels are the slices whose mediastinal soft
  tissue in front of the spine is ≥ ``heart_min_cm2``; the aortic root is the
  lowest slice in which the ascending aorta is still a separate round
  cross-section (a circle of 10–22 mm radius right of the body's centre, in
  front of the spine), traced down from the top of the heart. Lesions count
  when they lie at the heart's levels and not above the root, outside the root
  and valve cylinder (root radius + ``aortic_margin_mm``, down to 30 mm below
  it), with at least ``min_fat_fraction`` fat around them. Arteries are
  assigned relative to the root centre: LM (within the root radius + 15 mm,
  patient-left, at the root's levels), RCA (patient-right of the root), LAD
  (patient-left, anterior), LCX (patient-left, posterior). Without a root the
  total is reported and the arteries are not.

Every default is a literature value or a round anatomical number chosen before
any phantom was scored. Synthetic phantoms are the only test here: this is a
method, not a validated medical device.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Sequence

import numpy as np

from edge_agent.plugins import Fail, Measurement

GRADES = ("0", "1-99", "100-399", ">=400")
ARTERIES = ("LM", "LAD", "LCX", "RCA")
FAT_HU = (-190.0, -30.0)


@dataclass(frozen=True)
class Params:
    """The manifest's ``plugin`` keys for ``agatston`` (all optional)."""

    threshold_hu: float = 130.0
    min_area_mm2: float = 1.0
    reference_thickness_mm: float = 3.0
    max_lesion_mm2: float = 150.0        # a larger ≥ threshold component in one slice is bone, not plaque
    min_fat_fraction: float = 0.2        # epicardial fat around a coronary lesion
    aortic_margin_mm: float = 3.0        # around the descending aorta (its wall plaques)
    root_margin_mm: float = 1.0          # around the aortic root (ostial LM and RCA plaques sit just outside)
    heart_min_cm2: float = 30.0
    max_lesions_per_slice: int = 64

    def to_dict(self) -> dict:
        return asdict(self)


def category(score: float) -> str:
    """The contract's category of an Agatston score: "0", "1-99", "100-399", ">=400"."""
    if score <= 0:
        return "0"
    if score < 100:
        return "1-99"
    if score < 400:
        return "100-399"
    return ">=400"


def weight(peak_hu: float) -> int:
    """Agatston's density weight of a lesion's peak HU (130–199: 1, 200–299: 2, 300–399: 3, ≥ 400: 4)."""
    if peak_hu >= 400:
        return 4
    if peak_hu >= 300:
        return 3
    if peak_hu >= 200:
        return 2
    return 1


# ----------------------------------------------------------------------------------- geometry helpers

def _disk(radius_px: float) -> np.ndarray:
    r = max(int(math.ceil(radius_px)), 1)
    y, x = np.mgrid[-r:r + 1, -r:r + 1]
    return (x * x + y * y) <= radius_px * radius_px + 1e-9


def _canonical(hu: np.ndarray, spacing: tuple[float, float], geometry: dict | None):
    """The slice with columns going patient-left and rows posterior, its spacing and the LPS (x, y) of
    pixel (0, 0); None when the slice is not axial."""
    img = np.asarray(hu, dtype=np.float32)
    dr, dc = float(spacing[0]), float(spacing[1])
    orientation = (geometry or {}).get("orientation")
    ipp = (geometry or {}).get("ipp")
    if orientation is None:
        return img, (dr, dc), (0.0, 0.0)
    f = np.asarray(orientation, dtype=np.float64)
    along_row, along_col = f[:3], f[3:]          # +column direction, +row direction
    if abs(along_row[1]) > 0.9 and abs(along_col[0]) > 0.9:  # transposed axial
        img = img.T
        along_row, along_col = along_col, along_row
        dr, dc = dc, dr
    elif not (abs(along_row[0]) > 0.9 and abs(along_col[1]) > 0.9):
        return None
    origin = np.zeros(3) if ipp is None else np.asarray(ipp, dtype=np.float64)
    x0, y0 = float(origin[0]), float(origin[1])
    if along_row[0] < 0:
        img = img[:, ::-1]
        x0 += along_row[0] * dc * (img.shape[1] - 1)
    if along_col[1] < 0:
        img = img[::-1, :]
        y0 += along_col[1] * dr * (img.shape[0] - 1)
    return np.ascontiguousarray(img), (dr, dc), (x0, y0)


def _hull_mask(points_rc: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Pixels inside the convex hull of ``points_rc`` (row, col)."""
    from scipy.spatial import ConvexHull, QhullError  # noqa: PLC0415

    try:
        hull = ConvexHull(points_rc.astype(np.float64))
    except (QhullError, ValueError):
        return np.zeros(shape, bool)
    rr, cc = np.mgrid[0:shape[0], 0:shape[1]]
    inside = np.ones(shape, bool)
    for a, b, c in hull.equations:
        inside &= (a * rr + b * cc + c) <= 0.5
    return inside


# ----------------------------------------------------------------------------------- per slice

def _empty(reason: str, zp: float | None) -> dict:
    return {"thorax": False, "why": reason, "zp": zp, "lesions": [], "circles": [], "heart_mm2": 0.0}


def analyse_slice(hu: np.ndarray, pixel_spacing: tuple[float, float], params: Params,
                  geometry: dict | None = None) -> dict:
    """One slice's numbers (JSON-ready, no pixels): anatomy found and candidate coronary lesions.

    ``geometry``: ``{"ipp": ImagePositionPatient, "orientation": ImageOrientationPatient}`` when known;
    coordinates in the result are LPS mm (x patient-left, y posterior).
    """
    from scipy import ndimage  # noqa: PLC0415

    ipp = (geometry or {}).get("ipp")
    zp = None if ipp is None else float(ipp[2])
    canon = _canonical(hu, pixel_spacing, geometry)
    if canon is None:
        return dict(_empty("not an axial slice", zp), axial=False)
    img, (dr, dc), (x0, y0) = canon
    px = dr * dc
    step = 0.5 * (dr + dc)

    body = img > -500.0
    lab, n = ndimage.label(body)
    if n == 0:
        return _empty("no body in the field", zp)
    sizes = ndimage.sum_labels(body, lab, index=np.arange(1, n + 1))
    body = ndimage.binary_fill_holes(lab == (int(np.argmax(sizes)) + 1))
    rows, cols = np.nonzero(body)
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    img, body = img[r0:r1, c0:c1], body[r0:r1, c0:c1]
    x0, y0 = x0 + c0 * dc, y0 + r0 * dr

    def to_mm(r, c):
        return x0 + float(c) * dc, y0 + float(r) * dr

    mid_c = float(np.mean(np.nonzero(body)[1]))
    dense = img >= params.threshold_hu
    dlab, dn = ndimage.label(dense, structure=np.ones((3, 3), bool))
    index = np.arange(1, dn + 1)
    areas = ndimage.sum_labels(dense, dlab, index=index) * px if dn else np.zeros(0)
    peaks = ndimage.maximum(img, dlab, index=index) if dn else np.zeros(0)
    centres = ndimage.center_of_mass(dense, dlab, index) if dn else []

    # the spine: the largest dense structure near the middle, in the posterior half of the body
    spine = None
    body_rows = np.nonzero(body)[0]
    mid_r = 0.5 * (body_rows.min() + body_rows.max())
    best = 0.0
    for i in range(dn):
        r, c = centres[i]
        if areas[i] >= 300.0 and r > mid_r and abs(c - mid_c) * dc < 50.0 and areas[i] > best:
            best = areas[i]
            spine = i + 1
    if spine is not None:
        mid_c = float(centres[spine - 1][1])  # the patient's midline (a heart-centred field is off-centre)

    # lungs: -990..-400 HU components ≥ 10 cm² bordered mostly by tissue (outside air and the padding
    # outside the field of view, ≤ -990 HU, are not lung; a heart-centred field cuts the lungs at its edge)
    lungs_raw = (img > -990.0) & (img < -400.0)
    lab, n = ndimage.label(lungs_raw)
    lungs = np.zeros_like(body)
    if n:
        sizes = ndimage.sum_labels(lungs_raw, lab, index=np.arange(1, n + 1)) * px
        keep = []
        for i in np.flatnonzero(sizes >= 1000.0):
            sl = ndimage.find_objects((lab == i + 1).astype(np.int8))[0]
            a0, a1 = max(sl[0].start - 3, 0), min(sl[0].stop + 3, img.shape[0])
            b0, b1 = max(sl[1].start - 3, 0), min(sl[1].stop + 3, img.shape[1])
            m = lab[a0:a1, b0:b1] == i + 1
            ring = ndimage.binary_dilation(m, iterations=2) & ~m
            if np.mean(img[a0:a1, b0:b1][ring] <= -990.0) < 0.5:
                keep.append(i + 1)
        lungs = np.isin(lab, keep)
    lc = np.nonzero(lungs)[1]
    right, left = np.count_nonzero(lc < mid_c) * px, np.count_nonzero(lc >= mid_c) * px
    if right < 1000.0 or left < 1000.0:
        return _empty("no lungs on both sides", zp)
    edge = lungs & ~ndimage.binary_erosion(lungs)
    pts = np.argwhere(edge)
    if len(pts) > 4000:
        pts = pts[:: len(pts) // 4000 + 1]
    hull = _hull_mask(pts, img.shape)
    med = hull & (img > -990.0) & ~ndimage.binary_dilation(lungs, _disk(1.0 / step))
    inside = ndimage.sum_labels(med, dlab, index=index) * px if dn else np.zeros(0)
    spine_front_r = None
    spine_mm = None
    if spine is not None:
        sr = np.nonzero(dlab == spine)[0]
        spine_front_r = int(sr.min())
        sx, _ = to_mm(0, centres[spine - 1][1])
        spine_mm = [round(sx, 1), round(to_mm(spine_front_r, 0)[1], 1)]

    # soft tissue of the mediastinum (≥ -30 HU, calcium included, bone components excluded)
    bone = np.zeros(dn + 1, bool)
    bone[1:] = (areas >= params.max_lesion_mm2) | (inside < areas - 1e-6)
    tissue = (img > -30.0) & med & ~bone[dlab]
    front_limit = spine_front_r if spine_front_r is not None else img.shape[0]

    # round soft-tissue cross-sections in fat: in front of the spine (ascending aorta, pulmonary trunk, SVC)
    # and, beside the spine on the patient's left, the descending aorta
    opened = ndimage.binary_opening(tissue, _disk(2.0 / step))
    olab, on = ndimage.label(opened)
    circles, heart, desc = [], 0.0, None
    if on:
        oareas = ndimage.sum_labels(opened, olab, index=np.arange(1, on + 1)) * px
        odist = ndimage.distance_transform_edt(opened, sampling=(dr, dc))
        orad = ndimage.maximum(odist, olab, index=np.arange(1, on + 1))
        ocent = ndimage.center_of_mass(opened, olab, np.arange(1, on + 1))
        sc = centres[spine - 1][1] if spine is not None else None
        best_desc = None
        for j in range(on):
            r, c = ocent[j]
            rad = float(orad[j])
            roundish = 7.0 <= rad <= 24.0 and oareas[j] <= 1.6 * math.pi * rad * rad
            if roundish and sc is not None and -10.0 <= (c - sc) * dc <= 50.0 and \
                    -40.0 <= (r - spine_front_r) * dr <= 20.0 and rad <= 20.0:
                gap = math.hypot((c - sc) * dc - 25.0, (r - spine_front_r) * dr)
                if best_desc is None or gap < best_desc[0]:
                    best_desc = (gap, r, c, rad)
                continue
            if r >= front_limit - 20.0 / dr:
                continue
            if roundish and rad >= 8.0:
                x, y = to_mm(r, c)
                circles.append([round(x, 1), round(y, 1), round(rad, 1)])
            elif oareas[j] > heart:
                heart = float(oareas[j])
        if best_desc is not None:
            desc = best_desc[1:]

    lesions, excluded = [], {"bone_or_chest_wall": 0}
    ring_out, ring_in = _disk(5.0 / step), _disk(2.0 / step)
    order = np.argsort(-areas) if dn else []
    for i in order:
        label = i + 1
        if areas[i] < params.min_area_mm2 - 1e-9 or label == spine:
            continue
        if bone[label]:
            excluded["bone_or_chest_wall"] += 1
            continue
        r, c = centres[i]
        if len(lesions) >= params.max_lesions_per_slice:
            continue
        sl = ndimage.find_objects((dlab == label).astype(np.int8))[0]
        pad = ring_out.shape[0]
        a0, a1 = max(sl[0].start - pad, 0), min(sl[0].stop + pad, img.shape[0])
        b0, b1 = max(sl[1].start - pad, 0), min(sl[1].stop + pad, img.shape[1])
        m = dlab[a0:a1, b0:b1] == label
        ring = ndimage.binary_dilation(m, ring_out) & ~ndimage.binary_dilation(m, ring_in) & body[a0:a1, b0:b1]
        vals = img[a0:a1, b0:b1][ring]
        fat = float(np.mean((vals >= FAT_HU[0]) & (vals <= FAT_HU[1]))) if vals.size else 0.0
        x, y = to_mm(r, c)
        lesions.append([round(x, 2), round(y, 2), round(float(areas[i]), 3), round(float(peaks[i]), 1),
                        round(fat, 3)])
    out = {"thorax": True, "zp": zp, "px_mm2": round(px, 5), "mid_x": round(to_mm(0, mid_c)[0], 1),
           "spine": spine_mm, "heart_mm2": round(heart, 1), "circles": circles, "lesions": lesions,
           "excluded": excluded}
    if desc is not None:
        x, y = to_mm(desc[0], desc[1])
        out["desc"] = [round(x, 1), round(y, 1), round(desc[2], 1)]
    return out


# ----------------------------------------------------------------------------------- series

def _z(features: Sequence[dict], positions_mm: Sequence[float | None]) -> np.ndarray:
    zp = [f.get("zp") for f in features]
    if all(v is not None for v in zp):
        return np.asarray(zp, dtype=np.float64)
    return np.asarray([0.0 if p is None else p for p in positions_mm], dtype=np.float64)


def _root(features: Sequence[dict], z: np.ndarray, top: float) -> tuple[float, float, float, float] | None:
    """(x, y, radius, z) of the aortic root: the lowest separate ascending-aorta circle above the heart."""
    picks = []
    for f, zk in zip(features, z):
        if not f.get("thorax") or zk < top - 20.0 or zk > top + 60.0:
            continue
        spine = f.get("spine")
        mid = f.get("mid_x", 0.0)
        cands = [c for c in f.get("circles", []) if 10.0 <= c[2] <= 22.0 and c[0] <= mid + 10.0
                 and (spine is None or c[1] <= spine[1] - 25.0)]
        if cands:
            picks.append((zk, max(cands, key=lambda c: c[2])))
    if not picks:
        return None
    picks.sort(key=lambda p: p[0])
    low = picks[:3]
    x = float(np.median([p[1][0] for p in low]))
    y = float(np.median([p[1][1] for p in low]))
    r = float(np.median([p[1][2] for p in low]))
    return x, y, r, float(picks[0][0])


def _posterior(features: Sequence[dict], z: np.ndarray) -> tuple[float | None, list]:
    """The front of the spine (median over the slices: a disc level shows only the posterior elements) and,
    per slice, the descending aorta (the slice's own disc beside the spine, else the nearest slice's)."""
    fronts = [f["spine"][1] for f in features if f.get("thorax") and f.get("spine")]
    if not fronts:
        return None, [None] * len(features)
    front = float(np.median(fronts))
    valid = [(zk, f["desc"]) for f, zk in zip(features, z)
             if f.get("desc") and f.get("spine") and abs(f["spine"][1] - front) <= 10.0]
    descs = []
    for zk in z:
        if not valid:
            descs.append(None)
            continue
        zz, d = min(valid, key=lambda v: abs(v[0] - zk))
        descs.append(d if abs(zz - zk) <= 20.0 else None)
    return front, descs


def _increment(z: np.ndarray, thickness_mm: float | None) -> float:
    if z.size > 1:
        d = np.diff(np.sort(z))
        d = d[d > 1e-3]
        if d.size:
            return float(np.median(d))
    return float(thickness_mm) if thickness_mm else 3.0


def domain_problem(features: Sequence[dict], params: Params) -> str | None:
    """Why the series cannot be scored (None when it can): no axial slices, or no heart between the lungs."""
    if not features:
        return "no slices to score"
    if sum(1 for f in features if f.get("axial", True) is False) > len(features) / 2:
        return "the slices are not axial; the calcium score is measured on axial slices"
    if not any(f.get("thorax") and f.get("heart_mm2", 0.0) >= params.heart_min_cm2 * 100.0 for f in features):
        return (f"no slice shows a heart of at least {params.heart_min_cm2:g} cm² between the lungs; "
                "the series is not a chest or heart CT this method can score")
    return None


def measure(features: Sequence[dict], positions_mm: Sequence[float | None], thickness_mm: float | None,
            params: Params) -> list[Measurement]:
    """The Agatston measurement of a series from its slices' features (ordered along the normal)."""
    z = _z(features, positions_mm)
    heart = [k for k, f in enumerate(features) if f.get("thorax")
             and f.get("heart_mm2", 0.0) >= params.heart_min_cm2 * 100.0]
    if not heart:
        return [Measurement(False, "0", 0.0, {"agatston": 0.0, "category": "0"})]
    z_lo, z_hi = float(min(z[heart])), float(max(z[heart]))
    root = _root(features, z, z_hi)
    top = root[3] if root is not None else z_hi
    factor = _increment(z, thickness_mm) / params.reference_thickness_mm
    per_artery = {a: 0.0 for a in ARTERIES}
    excluded = {"bone_or_chest_wall": 0, "behind_spine_front": 0, "descending_aorta": 0,
                "above_the_heart": 0, "aortic_root_or_valve": 0, "not_in_epicardial_fat": 0}
    per_slice = np.zeros(len(features))
    counted: list[tuple[int, float, float]] = []
    found: list[dict] = []
    front, descs = _posterior(features, z)
    for k, f in enumerate(features):
        for key, n in (f.get("excluded") or {}).items():
            excluded[key] = excluded.get(key, 0) + int(n)
        for x, y, area, peak, fat in f.get("lesions", []):
            if front is not None and y >= front:
                excluded["behind_spine_front"] += 1
                continue
            if descs[k] is not None and math.hypot(x - descs[k][0], y - descs[k][1]) <= \
                    descs[k][2] + params.aortic_margin_mm:
                excluded["descending_aorta"] += 1
                continue
            if z[k] > top + 10.0 or z[k] < z_lo - 10.0:
                excluded["above_the_heart"] += 1
                continue
            if root is not None and root[3] - 30.0 <= z[k] and math.hypot(x - root[0], y - root[1]) < \
                    root[2] + params.root_margin_mm:
                excluded["aortic_root_or_valve"] += 1
                continue
            if fat < params.min_fat_fraction:
                excluded["not_in_epicardial_fat"] += 1
                continue
            score = area * weight(peak) * factor
            per_slice[k] += score
            counted.append((k, x, y))
            artery = None
            if root is not None:
                dx, dy = x - root[0], y - root[1]
                if dx > 0 and math.hypot(dx, dy) <= root[2] + 15.0 and z[k] >= root[3] - 25.0:
                    artery = "LM"
                elif dx < 0:
                    artery = "RCA"
                elif dy < 10.0:
                    artery = "LAD"
                else:
                    artery = "LCX"
                per_artery[artery] += score
            found.append({"slice": k, "x_mm": round(x, 1), "y_mm": round(y, 1), "z_mm": round(float(z[k]), 1),
                          "area_mm2": round(area, 2), "peak_hu": peak, "score": round(score, 2), "artery": artery})
    total = round(float(per_slice.sum()), 1)
    grade = category(total)
    fields: dict[str, Any] = {
        "agatston": total, "category": grade, "lesions": _lesions_3d(counted, z),
        "lesion_sections": len(counted),
        "per_artery": {a: round(v, 1) for a, v in per_artery.items()} if root is not None else None,
        "artery_assignment": ("by position relative to the aortic root" if root is not None else
                              "not assigned: the aortic root was not found, the total only is reported"),
        "thickness_factor": round(factor, 4), "excluded": excluded,
        "heart_levels_mm": [round(z_lo, 1), round(top, 1)],
        "lesion_list": sorted(found, key=lambda d: -d["score"])[:32],
    }
    keys = [int(k) for k in np.argsort(-per_slice, kind="stable") if per_slice[k] > 0]
    return [Measurement(total > 0, grade, 1.0 if total > 0 else 0.0, fields, keys)]


def _lesions_3d(counted: list[tuple[int, float, float]], z: np.ndarray) -> int:
    """Lesion sections joined across neighbouring slices (centres ≤ 5 mm apart in-plane): 3-D lesions."""
    parent = list(range(len(counted)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    step = _increment(z, None)
    for i, (ki, xi, yi) in enumerate(counted):
        for j in range(i):
            kj, xj, yj = counted[j]
            if 0 < abs(z[ki] - z[kj]) <= 1.5 * step and math.hypot(xi - xj, yi - yj) <= 5.0:
                parent[find(i)] = find(j)
    return len({find(i) for i in range(len(counted))})


class Agatston:
    """The ``agatston`` plug-in (see the module docstring)."""

    name = "agatston"
    findings = 1
    grades = GRADES

    def parse(self, params: dict, fail: Fail) -> Params:
        known = {f.name: f.type for f in fields(Params)}
        values = {}
        for key, value in params.items():
            if key not in known:
                raise fail(f"plugin.{key}", "is not a known key of the agatston plug-in")
            integer = key == "max_lesions_per_slice"
            ok = isinstance(value, int) if integer else isinstance(value, (int, float))
            if isinstance(value, bool) or not ok or not math.isfinite(value) or value < 0:
                raise fail(f"plugin.{key}", f"must be a {'whole' if integer else 'non-negative'} number, "
                                            f"not {value!r}")
            values[key] = int(value) if integer else float(value)
        if values.get("reference_thickness_mm", 3.0) <= 0:
            raise fail("plugin.reference_thickness_mm", "must be > 0")
        if not 0.0 <= values.get("min_fat_fraction", 0.2) <= 1.0:
            raise fail("plugin.min_fat_fraction", "must lie in [0, 1]")
        return Params(**values)

    def slice_features(self, hu: np.ndarray, pixel_spacing, params: Params, geometry: dict | None = None) -> dict:
        return analyse_slice(hu, pixel_spacing, params, geometry)

    def slice_scores(self, features: dict, params: Params) -> tuple[float, ...]:
        kept = [les for les in features.get("lesions", []) if les[4] >= params.min_fat_fraction]
        return (1.0 if kept else 0.0,)

    def domain_problem(self, features: Sequence[dict], params: Params) -> str | None:
        return domain_problem(features, params)

    def measure(self, features, positions_mm, thickness_mm, params: Params) -> list[Measurement]:
        return measure(features, positions_mm, thickness_mm, params)


PLUGIN = Agatston()
