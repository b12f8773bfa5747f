"""What the ICH model's guards cost and buy on fresh head phantoms: model alone vs model + evidence + domain.

    .venv/bin/python scripts/evaluate_guards.py [--seed0 3200000] [--pairs 20]

For each pair one bleed phantom (random type and volume) and one normal head, slice thickness drawn from
2.5 / 3 / 5 mm; the shipped model (engines/ich) scores every slice, its manifest's decision rule decides,
and the manifest's own ``evidence`` and ``domain`` blocks are checked on the same slices (what the series
decider does). Evaluation seeds (3,000,000+) only: nothing here chooses a threshold. Prints one JSON line per
series and a summary table.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from edge_agent.decision import decide
from edge_agent.evidence import series_domain, series_evidence, slice_features
from edge_agent.inference.models import ModelSet
from edge_agent.phantoms import head_phantom


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed0", type=int, default=3_200_000)
    ap.add_argument("--pairs", type=int, default=20)
    args = ap.parse_args()
    model = ModelSet.load(None, backend="onnxrt", names=["ich"])["ich"]
    man = model.manifest
    rows = []
    for i in range(args.pairs):
        for normal in (False, True):
            seed = args.seed0 + 2 * i + normal
            thickness = float(np.random.default_rng(seed).choice([2.5, 3.0, 5.0]))
            ph = head_phantom(seed, bleed=None if normal else "random", thickness_mm=thickness)
            order = np.argsort(ph.slice_positions)
            hu, pos, spacing = ph.volume_hu[order], ph.slice_positions[order], (ph.spacing[1], ph.spacing[2])
            d = decide(model.score_slices(hu, spacing)[:, 0], man.decision)
            feats = [slice_features(hu[k], spacing, man.evidence, man.domain) for k in range(len(hu))]
            ev = series_evidence(man.evidence, feats, list(pos), ph.spacing[0])
            dom = series_domain(man.domain, feats)
            rows.append({"seed": seed, "bleed": ph.finding is not None, "type": ph.details.get("bleed_type"),
                         "volume_ml": ph.details.get("volume_ml"), "thickness_mm": thickness,
                         "p": round(d.probability, 3), "model": d.positive, "evidence": ev.present,
                         "in_domain": dom.in_domain})
            print(json.dumps(rows[-1]), flush=True)
    bleeds = [r for r in rows if r["bleed"]]
    normals = [r for r in rows if not r["bleed"]]
    big = [r for r in bleeds if (r["volume_ml"] or 0) >= 1.0]

    def count(xs, guarded):
        hits = sum(r["model"] and (not guarded or (r["evidence"] and r["in_domain"])) for r in xs)
        return f"{hits}/{len(xs)}"

    print(f"\n| | model alone | model + evidence + domain |\n|---|---|---|")
    print(f"| bleeds positive | {count(bleeds, False)} | {count(bleeds, True)} |")
    print(f"| bleeds ≥ 1 mL positive | {count(big, False)} | {count(big, True)} |")
    print(f"| normal heads positive (false alerts) | {count(normals, False)} | {count(normals, True)} |")
    print(f"| normal heads with evidence present | {sum(r['evidence'] for r in normals)}/{len(normals)} | |")
    print(f"| series out of domain | {sum(not r['in_domain'] for r in rows)}/{len(rows)} | |")


if __name__ == "__main__":
    main()
