"""What the ICH model's guards cost and buy on fresh head phantoms: model alone vs model + evidence + domain.

    .venv/bin/python scripts/evaluate_guards.py [--seed0 3200000] [--pairs 20] [--engines /tmp/candidate_ich]
    .venv/bin/python scripts/evaluate_guards.py --model lung_nodule [--seed0 3600000] [--pairs 20]

With ``--model lung_nodule`` the pairs are a chest with a nodule (random type and size) and a clear chest,
slices 1.25 / 2.5 / 5 mm; the lung manifest declares only a ``domain`` block, so the guarded column is model +
domain, and the ``lung_blob`` evidence (not shipped as a gate) is reported for information.

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
from edge_agent.decision.series import evidence_lead
from edge_agent.evidence import parse_evidence, series_domain, series_evidence, slice_features
from edge_agent.inference.models import ModelSet
from edge_agent.phantoms import chest_phantom, head_phantom
from edge_agent.progress import echo, progress


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed0", type=int, default=None, help="default 3200000 (ich) / 3600000 (lung_nodule)")
    ap.add_argument("--pairs", type=int, default=20)
    ap.add_argument("--model", choices=["ich", "lung_nodule"], default="ich")
    ap.add_argument("--engines", default=None,
                    help="a model folder (manifest.json + model.onnx) to measure instead of the shipped one, e.g. "
                         "a candidate; its manifest's evidence and domain blocks are the guards")
    args = ap.parse_args()
    if args.model == "lung_nodule":
        return lung(args)
    if args.seed0 is None:
        args.seed0 = 3_200_000
    model = ModelSet.load(args.engines, backend="onnxrt", names=["ich"])["ich"]
    man = model.manifest
    rows = []
    bar = progress(2 * args.pairs, "evaluate_guards", "series")
    for i in range(args.pairs):
        for normal in (False, True):
            seed = args.seed0 + 2 * i + normal
            thickness = float(np.random.default_rng(seed).choice([2.5, 3.0, 5.0]))
            ph = head_phantom(seed, bleed=None if normal else "random", thickness_mm=thickness)
            order = np.argsort(ph.slice_positions)
            hu, pos, spacing = ph.volume_hu[order], ph.slice_positions[order], (ph.spacing[1], ph.spacing[2])
            probabilities = model.score_slices(hu, spacing, positions=pos)[:, 0]
            d = decide(probabilities, man.decision)
            feats = [slice_features(hu[k], spacing, man.evidence, man.domain) for k in range(len(hu))]
            anywhere = series_evidence(man.evidence, feats, list(pos), ph.spacing[0])
            # as the agent decides: only evidence on or beside the slices the model scores ≥ its threshold
            ev = series_evidence(man.evidence, feats, list(pos), ph.spacing[0], support=probabilities,
                                 support_threshold=man.decision.threshold)
            dom = series_domain(man.domain, feats)
            truth = ph.slice_labels[order]
            lead = evidence_lead(ev, probabilities)
            rows.append({"seed": seed, "bleed": ph.finding is not None, "type": ph.details.get("bleed_type"),
                         "volume_ml": ph.details.get("volume_ml"), "thickness_mm": thickness,
                         "kernel": ph.details.get("kernel"),
                         "p": round(d.probability, 3), "model": d.positive, "evidence": ev.present,
                         "evidence_anywhere": anywhere.present, "in_domain": dom.in_domain,
                         # where the first key slice lies: the evidence's largest slice (A), the model's top
                         # slice (B), the evidence slice the model scores highest (C: evidence_lead)
                         "lead_on_bleed": bool(truth[ev.slices[0]]) if ev.present and ev.slices else None,
                         "top_on_bleed": bool(truth[d.key_slices[0]["index"]]) if d.key_slices else None,
                         "lead_c_on_bleed": None if lead is None else bool(truth[lead])})
            echo(json.dumps(rows[-1]))
            bar.update()
    bar.close()
    bleeds = [r for r in rows if r["bleed"]]
    normals = [r for r in rows if not r["bleed"]]
    big = [r for r in bleeds if (r["volume_ml"] or 0) >= 1.0]

    def count(xs, guarded, key="evidence"):
        hits = sum(r["model"] and (not guarded or (r[key] and r["in_domain"])) for r in xs)
        return f"{hits}/{len(xs)}"

    print("\n| | model alone | model + evidence anywhere + domain | model + evidence beside the model's slices "
          "+ domain (shipped) |\n|---|---|---|---|")
    for name, xs in (("bleeds positive", bleeds), ("bleeds ≥ 1 mL positive", big),
                     ("normal heads positive (false alerts)", normals)):
        print(f"| {name} | {count(xs, False)} | {count(xs, True, 'evidence_anywhere')} | {count(xs, True)} |")
    print(f"| normal heads with evidence present | | {sum(r['evidence_anywhere'] for r in normals)}/{len(normals)} | "
          f"{sum(r['evidence'] for r in normals)}/{len(normals)} |")
    alerted = [r for r in bleeds if r["model"] and r["evidence"] and r["in_domain"]]
    for key, what in (("lead_on_bleed", "the evidence's largest slice (A)"), ("top_on_bleed", "the model's top slice (B)"),
                      ("lead_c_on_bleed", "the evidence slice the model scores highest (C)")):
        print(f"| alerted bleeds: {what} on a bleed slice | | | {sum(bool(r[key]) for r in alerted)}/{len(alerted)} |")
    print(f"| series out of domain | {sum(not r['in_domain'] for r in rows)}/{len(rows)} | | |")


def lung(args) -> None:
    seed0 = 3_600_000 if args.seed0 is None else args.seed0
    model = ModelSet.load(args.engines, backend="onnxrt", names=["lung_nodule"])["lung_nodule"]
    man = model.manifest
    blob = man.evidence or parse_evidence({"kind": "lung_blob"})
    rows = []
    for i in range(args.pairs):
        for normal in (False, True):
            seed = seed0 + 2 * i + normal
            thickness = float(np.random.default_rng(seed).choice([1.25, 2.5, 5.0]))
            ph = chest_phantom(seed, nodule=None if normal else "random", thickness_mm=thickness)
            order = np.argsort(ph.slice_positions)
            hu, pos, spacing = ph.volume_hu[order], ph.slice_positions[order], (ph.spacing[1], ph.spacing[2])
            probabilities = model.score_slices(hu, spacing, positions=pos)[:, 0]
            d = decide(probabilities, man.decision)
            feats = [slice_features(hu[k], spacing, blob, man.domain) for k in range(len(hu))]
            ev = series_evidence(blob, feats, list(pos), ph.spacing[0])
            # as a gate would decide: only a blob on or beside the slices the model scores ≥ its threshold
            beside = series_evidence(blob, feats, list(pos), ph.spacing[0], support=probabilities,
                                     support_threshold=man.decision.threshold)
            dom = series_domain(man.domain, feats)
            on_nodule = ph.slice_labels[order]
            ev_best = int(ev.slices[0]) if ev.present and ev.slices else None
            beside_best = int(beside.slices[0]) if beside.present and beside.slices else None
            rows.append({"seed": seed, "nodule": ph.finding is not None, "type": ph.details.get("nodule_type"),
                         "diameter_mm": ph.details.get("diameter_mm"), "thickness_mm": thickness,
                         "p": round(d.probability, 3), "model": d.positive, "evidence": ev.present,
                         "in_domain": dom.in_domain, "domain_reason": None if dom.in_domain else dom.reason,
                         # localisation: is the model's top slice / the evidence's best slice a nodule slice?
                         "top_on_nodule": bool(on_nodule[int(np.argmax(probabilities))]),
                         "evidence_on_nodule": None if ev_best is None else bool(on_nodule[ev_best]),
                         "beside": beside.present,
                         "beside_on_nodule": None if beside_best is None else bool(on_nodule[beside_best])})
            print(json.dumps(rows[-1]), flush=True)
    pos_ = [r for r in rows if r["nodule"]]
    neg = [r for r in rows if not r["nodule"]]
    big = [r for r in pos_ if (r["diameter_mm"] or 0) >= 6.0]

    def count(xs, guarded):
        return f"{sum(r['model'] and (not guarded or r['in_domain']) for r in xs)}/{len(xs)}"

    print("\n| | model alone | model + domain (shipped) |\n|---|---|---|")
    print(f"| nodules positive | {count(pos_, False)} | {count(pos_, True)} |")
    print(f"| nodules ≥ 6 mm positive | {count(big, False)} | {count(big, True)} |")
    print(f"| clear chests positive (false alerts) | {count(neg, False)} | {count(neg, True)} |")
    print(f"| lung_blob evidence present (not a gate): nodules / clear | {sum(r['evidence'] for r in pos_)}/{len(pos_)} "
          f"/ {sum(r['evidence'] for r in neg)}/{len(neg)} | |")
    print(f"| series out of domain | {sum(not r['in_domain'] for r in rows)}/{len(rows)} | |")
    print(f"| nodules: model's top slice on a nodule slice | {sum(r['top_on_nodule'] for r in pos_)}/{len(pos_)} | |")
    print(f"| nodules: evidence's best slice on a nodule slice | "
          f"{sum(bool(r['evidence_on_nodule']) for r in pos_)}/{len(pos_)} | |")
    gated = [r for r in pos_ if r["model"] and r["in_domain"] and r["beside"]]
    print(f"| if lung_blob were a gate beside the model's slices: nodules / clear positive | "
          f"{len(gated)}/{len(pos_)} / {sum(r['model'] and r['in_domain'] and r['beside'] for r in neg)}/{len(neg)} | |")
    print(f"| ... its first key slice (the blob's best) on a nodule slice | "
          f"{sum(bool(r['beside_on_nodule']) for r in gated)}/{len(gated)} | |")


if __name__ == "__main__":
    main()
