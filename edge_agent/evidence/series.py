"""Series step: per-slice feature dicts (in order along the slice normal) → evidence and domain verdicts."""

from __future__ import annotations

import math

import numpy as np

from edge_agent.evidence._grid import lps_box, series_spacing
from edge_agent.evidence.chest import in_lung

#: Where the evidence is looked for when the decider passes ``near`` (the slices the model calls, ± a gap).
NEAR_MODEL = "on or beside the slices the model scores at or above its threshold"


def _away(near: set[int] | None, slices) -> bool:
    """Does a candidate on ``slices`` lie away from every slice in ``near`` (None: look everywhere)?"""
    return near is not None and not near.intersection(slices)


# --------------------------------------------------------------------------- ICH blood


def _boxes_touch(a: list, b: list, margin_px: float) -> bool:
    """Do two per-slice component boxes [.., .., r0, c0, r1, c1] overlap (within a margin, in pixels)?"""
    return not (a[4] + margin_px < b[2] or b[4] + margin_px < a[2] or a[5] + margin_px < b[3]
                or b[5] + margin_px < a[3])


def ich_series(spec, features, positions_mm, thickness, image_positions, orientation, pixel_spacing, near=None):
    """Link blood components across adjacent slices into 3-D clusters; present when one is big enough.

    Volume = Σ component area × slice spacing (each slice stands for one spacing of tissue).
    A cluster counts when its volume ≥ ``min_volume_ml`` and it spans at least
    ``ceil(min_extent_mm / spacing)`` consecutive slices (one 5 mm slice, two 2.5 mm slices,
    four 1 mm slices): a bleed is a 3-D object, noise and partial-volume specks are not.
    """
    from edge_agent.evidence import Evidence

    spacing = series_spacing(positions_mm, thickness)
    mm = next(((f.get("ich") or {}).get("mm") for f in features if (f.get("ich") or {}).get("mm")), None)
    pixel_spacing = pixel_spacing or mm
    px = float(pixel_spacing[0]) if pixel_spacing else 0.5
    margin_px = 1.0 / px   # components on adjacent slices must overlap (within 1 mm)
    comps = []   # (slice, comp)
    for k, f in enumerate(features):
        for c in (f.get("ich") or {}).get("comps", []):
            comps.append((k, c))
    if not comps:
        return Evidence(False, "no compact region of acute-blood density "
                        f"({spec.blood_hu[0]:g}–{spec.blood_hu[1]:g} HU) inside the skull, away from bone",
                        [], 0.0, None, None)
    parent = list(range(len(comps)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    by_slice: dict[int, list[int]] = {}
    for i, (k, _) in enumerate(comps):
        by_slice.setdefault(k, []).append(i)
    for i, (k, c) in enumerate(comps):
        for j in by_slice.get(k + 1, []):
            if _boxes_touch(c, comps[j][1], margin_px):
                parent[find(i)] = find(j)
    clusters: dict[int, list[int]] = {}
    for i in range(len(comps)):
        clusters.setdefault(find(i), []).append(i)
    need = max(1, math.ceil(spec.min_extent_mm / spacing - 1e-6))
    best, elsewhere = None, 0.0
    for members in clusters.values():
        ks = sorted({comps[i][0] for i in members})
        vol = sum(comps[i][1][0] for i in members) * spacing / 1000.0
        if _away(near, ks):
            elsewhere = max(elsewhere, vol)   # blood-dense, but not where the model finds anything
            continue
        if best is None or vol > best[0]:
            best = (vol, members, len(ks))
    if best is None:
        where = ("the model scores no slice at or above its threshold" if not near else
                 f"none of it {NEAR_MODEL}")
        return Evidence(False, f"{elsewhere:.2f} mL of acute-blood density inside the skull at most, {where}",
                        [], 0.0, None, None)
    vol, members, nslices = best
    per_slice: dict[int, float] = {}
    for i in members:
        per_slice[comps[i][0]] = per_slice.get(comps[i][0], 0.0) + comps[i][1][0]
    slices = sorted(per_slice, key=lambda k: -per_slice[k])
    mean_hu = float(np.average([comps[i][1][1] for i in members], weights=[comps[i][1][0] for i in members]))
    points = []
    for i in members:
        k, c = comps[i]
        points += [(k, c[2], c[3]), (k, c[4], c[5])]
    bbox = lps_box(points, image_positions, orientation, pixel_spacing)
    rows = [p[1] for p in points]
    cols = [p[2] for p in points]
    diameter = None
    if pixel_spacing:
        diameter = round(max((max(rows) - min(rows)) * float(pixel_spacing[0]),
                             (max(cols) - min(cols)) * float(pixel_spacing[1]), nslices * spacing), 1)
    regions: dict[int, list[float]] = {}
    for i in members:
        k, c = comps[i]
        box = regions.get(k)
        regions[k] = [round(float(v), 1) for v in (c[2:6] if box is None else
                      (min(box[0], c[2]), min(box[1], c[3]), max(box[2], c[4]), max(box[3], c[5])))]
    present = vol >= spec.min_volume_ml and nslices >= need
    what = f"{vol:.2f} mL of acute-blood density (mean {mean_hu:.0f} HU) inside the skull on {nslices} " \
           f"adjacent slice{'s' if nslices > 1 else ''}"
    if present:
        reason = what
    elif vol < spec.min_volume_ml:
        reason = f"no region of acute-blood density inside the skull reaches {spec.min_volume_ml:g} mL; " \
                 f"largest {vol:.2f} mL"
    else:
        reason = f"{what}, fewer than the {need} adjacent slices ({spec.min_extent_mm:g} mm) a real bleed spans"
    return Evidence(present, reason, slices, round(vol, 3), diameter, bbox, regions)


# --------------------------------------------------------------------------- lung blobs


def _chains(features, spec):
    """Link candidates on adjacent slices by centroid distance into chains (greedy, largest first)."""
    cands = []
    for k, f in enumerate(features):
        lung = f.get("lung") or {}
        mm = lung.get("mm") or [1.0, 1.0]
        for c in lung.get("cands", []):
            cands.append({"k": k, "y": c[0] * mm[0], "x": c[1] * mm[1], "r": c[0], "c": c[1], "d": c[2],
                          "hu": c[3], "kind": c[5], "area": c[6], "mm": mm, "next": None, "prev": None})
    by_slice: dict[int, list[dict]] = {}
    for c in cands:
        by_slice.setdefault(c["k"], []).append(c)
    for k in sorted(by_slice):
        pairs = []
        for a in by_slice[k]:
            for b in by_slice.get(k + 1, []):
                dist = math.hypot(a["x"] - b["x"], a["y"] - b["y"])
                if dist <= max(spec.link_mm, 0.75 * max(a["d"], b["d"])):
                    pairs.append((dist, id(a), a, b))
        for dist, _, a, b in sorted(pairs, key=lambda p: p[:2]):
            if a["next"] is None and b["prev"] is None:
                a["next"], b["prev"] = b, a
    chains = []
    for c in cands:
        if c["prev"] is None:
            chain = [c]
            while chain[-1]["next"] is not None:
                chain.append(chain[-1]["next"])
            chains.append(chain)
    return chains


def _continues(by_slice: dict, end: dict, k: int, radius_mm: float) -> bool:
    """Is there a candidate on slice ``k`` within ``radius_mm`` of the chain end ``end``?"""
    return any(math.hypot(c["x"] - end["x"], c["y"] - end["y"]) <= radius_mm for c in by_slice.get(k, []))


def lung_series(spec, features, positions_mm, thickness, image_positions, orientation, pixel_spacing, near=None):
    """A nodule is a chain that ends on both sides within ~its own diameter and does not drift.

    extent along the normal (slices × spacing) ≤ ``max_extent_ratio`` × largest diameter
    + one spacing (partial-volume end slices), and ≥ half that diameter; in-plane drift of the centroid between its
    ends ≤ half its diameter + ``link_mm``; not cut by the ends of the series (a chain
    that reaches the first or last slice may continue outside it: its shape is unknown).
    """
    from edge_agent.evidence import Evidence

    spacing = series_spacing(positions_mm, thickness)
    n = len(features)
    best, seen = None, []
    chains = _chains(features, spec)
    by_slice: dict[int, list[dict]] = {}
    for chain in chains:
        for c in chain:
            by_slice.setdefault(c["k"], []).append(c)
    for chain in chains:
        dmax = max(c["d"] for c in chain)
        if dmax < spec.min_diameter_mm:
            continue
        if _away(near, [c["k"] for c in chain]):
            continue   # not where the model finds anything
        extent = len(chain) * spacing
        drift = math.hypot(chain[0]["x"] - chain[-1]["x"], chain[0]["y"] - chain[-1]["y"])
        closed = chain[0]["k"] > 0 and chain[-1]["k"] < n - 1
        if dmax > spec.max_diameter_mm:   # > 30 mm is a mass (Fleischner), or the diaphragm / heart
            seen.append((dmax, True, False, closed))
            continue
        if closed:   # beyond each end the chain's position must be aerated lung, not diaphragm or heart
            ends = [in_lung((features[chain[0]["k"] - 1].get("lung") or {}).get("map"), chain[0]["r"], chain[0]["c"]),
                    in_lung((features[chain[-1]["k"] + 1].get("lung") or {}).get("map"), chain[-1]["r"],
                            chain[-1]["c"])]
            if any(e is False for e in ends):
                seen.append((dmax, True, False, closed))
                continue
            # beyond each end nothing dense may lie within 1.5 diameters: a vessel that runs obliquely
            # moves sideways from slice to slice (too far to link) but does not stop
            if _continues(by_slice, chain[0], chain[0]["k"] - 1, 1.5 * dmax) or \
                    _continues(by_slice, chain[-1], chain[-1]["k"] + 1, 1.5 * dmax):
                seen.append((dmax, True, False, closed))
                continue
        tube = extent > spec.max_extent_ratio * dmax + spacing
        # a sphere of diameter d is seen on about d / spacing slices: a blob on fewer is a cut through
        # something thin along the normal (an oblique vessel passing through the slice)
        thin = len(chain) < max(1, math.ceil(0.5 * dmax / spacing - 1e-6))
        tube = tube or thin
        drifts = drift > 0.5 * dmax + spec.link_mm
        seen.append((dmax, tube, drifts, closed))
        if closed and not tube and not drifts:
            score = dmax
            if best is None or score > best[0]:
                best = (score, chain, extent)
    if best is None:
        if not seen:
            why = f"no compact solid or ground-glass blob of ≥ {spec.min_diameter_mm:g} mm inside the lungs" + (
                "" if near is None else f" {NEAR_MODEL}")
        else:
            tubes = sum(1 for s in seen if s[1] or s[2])
            open_ = sum(1 for s in seen if not s[3] and not (s[1] or s[2]))
            why = (f"{len(seen)} round opacit{'y' if len(seen) == 1 else 'ies'} of ≥ {spec.min_diameter_mm:g} mm "
                   f"in the lungs, none nodule-shaped: {tubes} continue as tubes (vessels) through neighbouring "
                   f"slices, run into the mediastinum or diaphragm, or exceed {spec.max_diameter_mm:g} mm"
                   + (f", {open_} reach the end of the series" if open_ else ""))
        return Evidence(False, why, [], None, max((s[0] for s in seen), default=None), None)
    dmax, chain, extent = best
    order = sorted(chain, key=lambda c: -c["area"])
    kinds = {c["kind"] for c in chain}
    kind = "solid" if "solid" in kinds else "ground-glass"
    vol = sum(c["area"] for c in chain) * spacing / 1000.0
    points, regions = [], {}
    for c in chain:
        rad = c["d"] / 2.0 / (float(pixel_spacing[0]) if pixel_spacing else c["mm"][0])
        points += [(c["k"], c["r"] - rad, c["c"] - rad), (c["k"], c["r"] + rad, c["c"] + rad)]
        regions[c["k"]] = [round(float(v), 1) for v in (c["r"] - rad, c["c"] - rad, c["r"] + rad, c["c"] + rad)]
    bbox = lps_box(points, image_positions, orientation, pixel_spacing)
    reason = (f"a {kind} nodule-like blob of {dmax:.1f} mm in the lung, seen on {len(chain)} slice"
              f"{'s' if len(chain) > 1 else ''} ({extent:.0f} mm along the slice normal) and ending on both sides")
    return Evidence(True, reason, [c["k"] for c in order], round(vol, 3), round(dmax, 1), bbox, regions)
