"""Evidence-present and in-domain rates of edge_agent.evidence on fresh phantoms, and its cost per slice.

    .venv/bin/python scripts/evaluate_evidence.py [--series 10] [--seed 3100000]

Seeds come from the evaluation range (3,000,000+; the default start 3,100,000 was
never looked at while the checks were written — development used 2,500,000+).
No threshold is chosen here: the defaults of EvidenceSpec / DomainSpec are
reported as they are. Groups:

* head bleeds of each type (volume log-uniform 0.3–60 mL, the generator's default);
* normal heads (skull base, vertex, calcifications, streaks, thin/thick slices as drawn);
* normal heads with a 70 HU scalp haematoma drawn outside the skull;
* QA phantoms (edge_agent.phantoms.qa_phantom, when the generator has it);
* chest without nodule, with a solid and with a ground-glass nodule (4–30 mm).

"present" is the evidence-present rate; "in domain" the domain-check pass rate;
"on the finding" (series with a finding, evidence present): how often the region the evidence
frames on its best slice — the key slice it leads, framed in the key image — holds at least a
quarter of the phantom's truth mask on that slice (else it rests on something else);
"ms/slice" the median time of slice_features (both checks together) per slice
on this machine, for the series' native matrix (512×512).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import ndimage


from edge_agent import phantoms  # noqa: E402
from edge_agent.progress import track  # noqa: E402 - a bar on stderr when it is a terminal
from edge_agent.evidence import (  # noqa: E402
    parse_domain, parse_evidence, series_domain, series_evidence, slice_features)

ICH, HEAD = parse_evidence({"kind": "ich_blood"}), parse_domain({"kind": "head"})
LUNG, CHEST = parse_evidence({"kind": "lung_blob"}), parse_domain({"kind": "chest"})


def scalp_haematoma(ph, rng) -> None:
    """Paint a 70 HU lens (12 mm thick, ~50 mm wide) into the scalp, outside the skull, on 5 slices."""
    vol = ph.volume_hu
    k0 = int(rng.integers(len(vol) // 3, max(len(vol) // 3 + 1, 2 * len(vol) // 3 - 5)))
    for k in range(k0, min(k0 + 5, len(vol))):
        img = vol[k]
        bone = img > 300
        if bone.sum() < 500:
            continue
        dist_out = ndimage.distance_transform_edt(~ndimage.binary_fill_holes(bone)) * ph.spacing[1]
        rows, cols = np.nonzero(bone)
        r, c = rows[np.argmin(cols)], cols.min()   # the skull's leftmost point in the image
        yy, xx = np.mgrid[: img.shape[0], : img.shape[1]]
        # strictly lateral to the skull's leftmost column: outside the skull whatever its shape
        lens = (dist_out > 0) & (dist_out < 12.0) & (np.hypot(yy - r, xx - c) * ph.spacing[1] < 25.0) & (xx < c)
        img[lens] = 70.0 + rng.normal(0, 3, int(lens.sum())).astype(np.float32)


def run(ph, ev, dom):
    sp = (ph.spacing[1], ph.spacing[2])
    times, feats = [], []
    for s in ph.volume_hu:
        t = time.perf_counter()
        feats.append(slice_features(s, sp, ev, dom))
        times.append(time.perf_counter() - t)
    e = series_evidence(ev, feats, list(ph.slice_positions), ph.spacing[0], pixel_spacing=sp)
    return e, series_domain(dom, feats), float(np.median(times)) * 1000.0, located(ph, e)


def located(ph, e) -> bool | None:
    """Does the evidence's region on its best slice hold ≥ 1/4 of the truth mask there? None without a finding."""
    if ph.finding_mask is None or not e.present or not e.slices:
        return None
    best = e.slices[0]
    mask, box = ph.finding_mask[best], e.regions.get(best)
    if box is None or not mask.any():
        return False
    rows, cols = np.nonzero(mask)
    hit = (rows >= box[0]) & (rows <= box[2]) & (cols >= box[1]) & (cols <= box[3])
    return bool(hit.sum() >= 0.25 * mask.sum())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--series", type=int, default=10, help="series per group (default 10)")
    ap.add_argument("--seed", type=int, default=3_100_000, help="first seed (evaluation range 3,000,000+)")
    args = ap.parse_args()
    n, seed = args.series, args.seed
    groups: dict[str, list] = {}
    t0 = time.perf_counter()

    def add(name, res, extra=""):
        groups.setdefault(name, []).append((res, extra))

    for i in track(range(n), "evaluate_evidence", "set of groups"):
        for j, bt in enumerate(phantoms.BLEED_TYPES):
            ph = phantoms.head_phantom(seed + 10 * i + j, bleed=bt)
            if ph.finding:
                add(f"head {bt}", run(ph, ICH, HEAD), ph.details.get("volume_ml"))
        ph = phantoms.head_phantom(seed + 10 * i + 5, bleed=None)
        add("head normal", run(ph, ICH, HEAD))
        for c in ph.details.get("confounders", []):
            if c in ("pineal", "choroid_plexus", "falx", "basal_ganglia"):
                add("head normal with calcification", groups["head normal"][-1][0])
                break
        ph = phantoms.head_phantom(seed + 10 * i + 6, bleed=None)
        scalp_haematoma(ph, np.random.default_rng(seed + i))
        add("head normal + scalp haematoma", run(ph, ICH, HEAD))
        if hasattr(phantoms, "qa_phantom"):
            add("QA phantom (head protocol)", run(phantoms.qa_phantom(seed + 10 * i + 7), ICH, HEAD))
        add("chest normal", run(phantoms.chest_phantom(seed + 10 * i + 8, nodule=None), LUNG, CHEST))
        for kind, off in (("solid", 9), ("ground_glass", 1_000_009)):
            ph = phantoms.chest_phantom(seed + 10 * i + off, nodule=kind)
            if ph.finding:
                add(f"chest nodule {kind}", run(ph, LUNG, CHEST), ph.details.get("diameter_mm"))

    print(f"evidence checks on fresh phantoms, seeds {seed}+, {n} series per group "
          f"({time.perf_counter() - t0:.0f} s in all)\n")
    print("| group | series | evidence present | in domain | present among in-domain | on the finding | "
          "ms/slice (median) |")
    print("|---|---|---|---|---|---|---|")
    for name, rows in groups.items():
        pres = np.array([r[0][0].present for r in rows])
        dom = np.array([r[0][1].in_domain for r in rows])
        ms = np.median([r[0][2] for r in rows])
        both = f"{pres[dom].mean():.2f} ({int(pres[dom].sum())}/{int(dom.sum())})" if dom.any() else "–"
        loc = [r[0][3] for r in rows if r[0][3] is not None]
        on = f"{np.mean(loc):.2f} ({int(sum(loc))}/{len(loc)})" if loc else "–"
        print(f"| {name} | {len(rows)} | {pres.mean():.2f} ({int(pres.sum())}/{len(rows)}) | "
              f"{dom.mean():.2f} | {both} | {on} | {ms:.1f} |")
    reasons: dict[str, dict[str, int]] = {}
    for name, rows in groups.items():
        for (e, d, _, _), _x in rows:
            if not d.in_domain:
                key = d.reason.split(":")[0][:60]
                reasons.setdefault(name, {}).setdefault(key, 0)
                reasons[name][key] += 1
    if reasons:
        print("\nout-of-domain reasons:")
        for name, rs in reasons.items():
            print(f"  {name}: " + "; ".join(f"{k} ×{v}" for k, v in rs.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
