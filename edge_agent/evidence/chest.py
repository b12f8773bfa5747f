"""Chest CT: the lungs, compact solid / ground-glass blobs in them, and the chest domain statistics.

Physics (Fleischner Society glossary, Hansell et al., Radiology 2008; typical HU):

* aerated lung -950…-700 HU (≈ -850 HU; denser in dependent parts), air
  ≈ -1000 HU, fat -120…-50 HU, muscle and blood 30–60 HU;
* a solid nodule is soft-tissue dense (> ~ -100 HU at its core; its partial-
  volume edge is lower), a ground-glass opacity is hazy increased attenuation
  that does not hide vessels, about -750…-300 HU, and always denser than the
  lung around it;
* a vessel seen end-on is also a round soft-tissue disc on one slice: what
  tells it from a nodule is 3-D shape (series step), since a vessel continues
  as a tube through neighbouring slices, while a nodule ends within about its
  own diameter along the slice normal.

The lung mask is air-like tissue (< -400 HU) inside the body and not connected to
the air outside it; air touching the edge of the field counts as outside (so a
small field of view that cuts through the lungs shows little lung).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from edge_agent.evidence._grid import Grid, disc, reconstruct, smooth

LUNG_HU = -400.0
AIRWAY_HU = -950.0
MAX_CANDIDATES = 8


def _lungs(g: Grid) -> tuple[np.ndarray, np.ndarray, dict]:
    """Body mask, lung region (air spaces inside the body, holes filled) and their statistics."""
    x = g.hu
    air = (x < LUNG_HU) & g.field
    outside = ~g.field
    seeds = np.zeros(x.shape, bool)
    seeds[0, :] = seeds[-1, :] = seeds[:, 0] = seeds[:, -1] = True
    seeds |= outside
    outside_air = reconstruct(seeds, air | outside)
    body = ~outside_air & g.field
    lung_air = air & ~outside_air
    labels, n = ndimage.label(lung_air)
    stats = {"body_mm2": round(float(body.sum()) * g.pixel_mm2, 1)}
    if n:
        sizes = ndimage.sum_labels(np.ones_like(x), labels, np.arange(1, n + 1)) * g.pixel_mm2
        keep = np.zeros(n + 1, bool)
        medians = ndimage.sum_labels(x, labels, np.arange(1, n + 1)) / np.maximum(sizes / g.pixel_mm2, 1)
        # a lung (≥ 400 mm², aerated tissue denser than pure gas), not bowel gas or the trachea alone
        keep[1:] = (sizes >= 400.0) & (medians > -960.0)   # mean HU
        lung_air = keep[labels]
    lung = ndimage.binary_fill_holes(ndimage.binary_closing(lung_air, disc(3.0 / min(g.spacing)))) & body \
        if lung_air.any() else lung_air
    stats["lung_mm2"] = round(float(lung.sum()) * g.pixel_mm2, 1)
    soft = x[body & ~lung & (x > -200) & (x < 200)]
    stats["soft_median"] = round(float(np.median(soft)), 1) if soft.size > 50 else None
    la = x[lung_air]
    stats["lung_median"] = round(float(np.median(la)), 1) if la.size > 50 else None
    return body, lung, stats


def _blobs(g: Grid, lung: np.ndarray, lung_median: float | None, spec) -> list[list]:
    """Compact solid or ground-glass components inside (or at the edge of) the lung region."""
    x = g.hu
    if not lung.any():
        return []
    s = smooth(x, spec.smoothing_mm, g.spacing)
    ggo_lo = spec.ggo_hu[0] if lung_median is None else max(spec.ggo_hu[0], lung_median + spec.ggo_contrast_hu)
    cand = lung & (s > ggo_lo)
    cand = ndimage.binary_opening(cand, ndimage.generate_binary_structure(2, 1))
    labels, n = ndimage.label(cand)
    if n == 0:
        return []
    idx = np.arange(1, n + 1)
    counts = ndimage.sum_labels(np.ones_like(x), labels, idx)
    areas = counts * g.pixel_mm2
    min_area = math.pi * (spec.min_diameter_mm / 2.0) ** 2
    ok = np.flatnonzero(areas >= min_area)
    if ok.size == 0:
        return []
    # roundness from second moments of every component at once (minor / major axis, 1 = disc)
    rows, cols = np.indices(x.shape, dtype=np.float32)
    rows *= g.spacing[0]
    cols *= g.spacing[1]
    cnt = np.maximum(counts, 1)
    mr = ndimage.sum_labels(rows, labels, idx) / cnt
    mc = ndimage.sum_labels(cols, labels, idx) / cnt
    vrr = ndimage.sum_labels(rows * rows, labels, idx) / cnt - mr * mr + g.spacing[0] ** 2 / 12
    vcc = ndimage.sum_labels(cols * cols, labels, idx) / cnt - mc * mc + g.spacing[1] ** 2 / 12
    vrc = ndimage.sum_labels(rows * cols, labels, idx) / cnt - mr * mc
    tr, det = vrr + vcc, vrr * vcc - vrc * vrc
    disc_ = np.sqrt(np.maximum(tr * tr / 4 - det, 0))
    roundness_all = np.sqrt(np.maximum(tr / 2 - disc_, 1e-9) / np.maximum(tr / 2 + disc_, 1e-9))
    ok = ok[roundness_all[ok] >= spec.min_roundness]
    ok = ok[np.argsort(-areas[ok])][: 2 * MAX_CANDIDATES]
    means = ndimage.mean(s, labels, idx)
    peaks = ndimage.maximum(s, labels, idx)
    objs = ndimage.find_objects(labels)
    edge = ~lung
    out = []
    for i in ok:
        sl = objs[i]
        m = labels[sl] == (i + 1)
        # an airway seen end-on is a soft-tissue ring around air: a nodule has no lumen
        if ndimage.binary_fill_holes(m).sum() > 1.15 * m.sum():
            continue
        roundness = float(roundness_all[i])
        # juxtapleural: part of the blob's outline lies on the lung's edge (chest wall, mediastinum)
        ring = ndimage.binary_dilation(np.pad(m, 1), ndimage.generate_binary_structure(2, 1))[1:-1, 1:-1] & ~m
        pleura = float(edge[sl][ring].mean()) if ring.any() else 0.0
        # an airway wall borders gas (< -950 HU, purer than aerated lung at -850): a nodule borders lung
        if ring.any() and float((s[sl][ring] < AIRWAY_HU).mean()) > 0.15:
            continue
        if pleura > spec.max_pleural_contact:
            continue
        cr, ccol = g.to_original(float(mr[i]) / g.spacing[0], float(mc[i]) / g.spacing[1])
        diameter = 2.0 * math.sqrt(areas[i] / math.pi)
        kind = "solid" if peaks[i] > spec.solid_hu else "ground_glass"
        out.append([round(cr, 1), round(ccol, 1), round(diameter, 2), round(float(means[i]), 1),
                    round(roundness, 2), kind, round(float(areas[i]), 1)])
    out.sort(key=lambda c: -c[6])
    return out[:MAX_CANDIDATES]


def chest_features(g: Grid | None, evidence, domain, pixel_spacing) -> dict:
    """Per-slice numbers for ``lung_blob`` evidence and the ``chest`` domain (JSON-serialisable)."""
    out: dict = {}
    if g is None:
        if evidence is not None:
            out["lung"] = {"cands": [], "lung_mm2": 0.0}
        if domain is not None:
            out["chest"] = {"body_mm2": 0.0, "lung_mm2": 0.0, "edge": 0.0}
        return out
    body, lung, stats = _lungs(g)
    if evidence is not None:
        out["lung"] = {"cands": _blobs(g, lung, stats["lung_median"], evidence), "lung_mm2": stats["lung_mm2"],
                       "mm": [float(pixel_spacing[0]), float(pixel_spacing[1])], "map": lung_map(g, lung)}
    if domain is not None:
        out["chest"] = dict(stats, edge=round(g.touches_edge, 3))
    return out


MAP_CELLS = 32


def lung_map(g: Grid, lung: np.ndarray) -> dict:
    """A 32×32 bitmap of where the lung is (cell ≥ half lung), over the crop, in original pixels.

    The series step asks it whether the slice beyond each end of a chain is aerated lung at the
    chain's position: a nodule ends in lung; the dome of the diaphragm, the apex of the heart or a
    vessel entering the hilum end in soft tissue. 1024 bits = 256 hex characters.
    """
    h, w = lung.shape
    rs = np.linspace(0, h, MAP_CELLS + 1).astype(int)
    cs = np.linspace(0, w, MAP_CELLS + 1).astype(int)
    frac = np.add.reduceat(np.add.reduceat(lung.astype(np.float32), rs[:-1], axis=0), cs[:-1], axis=1)
    area = np.outer(np.maximum(np.diff(rs), 1), np.maximum(np.diff(cs), 1))
    bits = np.packbits((frac / area) >= 0.5)
    r0, c0 = g.to_original(-0.5, -0.5)
    r1, c1 = g.to_original(h - 0.5, w - 0.5)
    return {"box": [round(r0, 1), round(c0, 1), round(r1, 1), round(c1, 1)], "bits": bits.tobytes().hex()}


def in_lung(m: dict | None, r: float, c: float) -> bool | None:
    """Is original pixel (r, c) lung on the slice whose :func:`lung_map` is ``m``? None when unknown."""
    if not m:
        return None
    r0, c0, r1, c1 = m["box"]
    if not (r0 <= r < r1 and c0 <= c < c1):
        return False
    bits = np.unpackbits(np.frombuffer(bytes.fromhex(m["bits"]), np.uint8))[: MAP_CELLS * MAP_CELLS]
    i = min(int((r - r0) / (r1 - r0) * MAP_CELLS), MAP_CELLS - 1)
    j = min(int((c - c0) / (c1 - c0) * MAP_CELLS), MAP_CELLS - 1)
    return bool(bits[i * MAP_CELLS + j])
