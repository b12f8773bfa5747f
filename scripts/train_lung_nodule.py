"""Train the `lung_nodule` model (pulmonary nodule, chest CT) on chest phantoms (v2 recipe; 2.5-D options).

A dev tool, not part of the package: run with the PyTorch CPU venv,

    EDGE_TRAIN_CACHE=/tmp/lung_train /work/torchvenv/bin/python scripts/train_lung_nodule.py \
        --init /tmp/lung_v1/model.onnx --steps 300 --batch 16 --lr 1e-3 --out /tmp/lung_v2
    EDGE_TRAIN_CACHE=/tmp/lung_train /work/torchvenv/bin/python scripts/train_lung_nodule.py \
        --init /tmp/lung_v2/model.onnx --steps 400 --batch 16 --lr 1e-3 --out /tmp/lung_v2b

(the 2026-12-02 v2 candidate: two fine-tuning stages from v1, each ~10 min on 2 busy shared cores after a
~20 min rendering of 500 cases and 24 validation series; ``cp engines/lung_nodule/model.onnx
/tmp/lung_v1/model.onnx`` while v1 ships; copy engines/lung_nodule/manifest.json into --out first so the
domain block and applies_to are kept. Without ``--init`` the network starts from random weights.)

2.5-D experiments of 2026-12-02 (none shipped, docs/MODELS.md "2.5-D candidates"):

    ... train_lung_nodule.py --context-mm 5 --init /tmp/lung_v1/model.onnx --cases 600 --steps 1000 \
        --batch 16 --lr 1e-3 --out /tmp/lung_v3          # v1 grown to 5 channels (neighbours start at zero)
    ... train_lung_nodule.py --context-mm 5 --cases 600 --steps 1500 --batch 32 --lr 2e-3 --out /tmp/lung_v3s
    ... train_lung_nodule.py --context-mm 5 --dense --cases 1500 --steps 3000 --batch 16 --lr 2e-3 --val 30 \
        --out /tmp/lung_v4                               # finding-map network, dense supervision

v2.3.0, shipped and withdrawn on 2026-12-07 (docs/MODELS.md, "lung_nodule v2.3.0"): 2.5-D, the v2.2 1-slice
network grown to 5 channels (neighbour weights start at zero, and stayed near it); 13 min on an idle 2-core
VM (2026-12-07: rendering 800 cases 353 s, 2000 steps 377 s; 35 min on a busy one on 2026-12-04). The same seeds and
schedule on another machine give a slightly different network (PyTorch CPU kernels are not bit-identical
across CPUs), so a file's sha256 is not reproduced exactly:

    mkdir -p /tmp/lung_220 /tmp/lung25
    git show ddb63f4:engines/lung_nodule/model.onnx > /tmp/lung_220/model.onnx      # v2.2.0 (sha256 6ebf378d…)
    git show ddb63f4:engines/lung_nodule/manifest.json > /tmp/lung_220/manifest.json
    cp /tmp/lung_220/manifest.json /tmp/lung25/
    EDGE_TRAIN_CACHE=/tmp/lung_train /work/torchvenv/bin/python scripts/train_lung_nodule.py --context-mm 5 \
        --init /tmp/lung_220/model.onnx --cases 800 --steps 2000 --batch 16 --lr 5e-4 --val 20 \
        --version 2.3.0 --out /tmp/lung25
    .venv/bin/python scripts/choose_slice_threshold.py --model lung_nodule --folder /tmp/lung25 --write

v2.4.0, shipped 2026-12-08 (docs/MODELS.md, "lung_nodule v2.4.0"; the contrast-init candidate): the same with
each neighbour channel started at -0.5 × the slice's own lung-window weights (the first layer starts out
seeing the slice minus its neighbours), 7 min with the rendered cases cached (sha256 7ae69998… here):

    mkdir -p /tmp/lung25c; cp /tmp/lung_220/manifest.json /tmp/lung25c/
    EDGE_TRAIN_CACHE=/tmp/lung_train /work/torchvenv/bin/python scripts/train_lung_nodule.py --context-mm 5 \
        --contrast-init 0.5 --init /tmp/lung_220/model.onnx --cases 800 --steps 2000 --batch 16 --lr 5e-4 \
        --val 20 --version 2.4.0 --out /tmp/lung25c
    .venv/bin/python scripts/choose_slice_threshold.py --model lung_nodule --folder /tmp/lung25c --write

Fixed seeds and a budget in optimizer steps (not wall time), so
a rerun draws the same phantoms and follows the same schedule. Training cases: seeds 1,000,000+;
validation series (where the decision rule is chosen): seeds 2,000,000+; evaluation
(scripts/evaluate_models.py): 3,500,000+. Writes <out>/{model.onnx,manifest.json,README.md}; an existing
manifest keeps its keys other than decision, artefacts, version and description.

Hard negatives: every case renders, besides slices around the nodule, slices through the hila (large
vessels seen end-on and branching), the top of a diaphragm dome (a round hazy density in thick slices),
and the levels of calcified granulomas, mucus-filled bronchi, pleural plaques and bullae when the case
has them. A calcified granuloma (dense, benign calcification) is labelled negative: the finding is a
nodule that needs follow-up, and the Fleischner Society guidelines exclude benign calcified nodules.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from _training import (  # noqa: E402
    existing_applies_to,
    ROOT, TRAIN_SEED0, VAL_SEED0, Task, build_dataset, build_series, choose_decision, export, log, predict, train,
)
from edge_agent.phantoms import chest_phantom
from edge_agent.phantoms.chest import MIN_LABEL_AREA_MM2, generate_chest
from edge_agent.preprocess import ContextSpec, PreprocessSpec, neighbour_of

#: One slice in three windows (v1, v2): the default recipe.
SPEC = PreprocessSpec(windows=((-600.0, 1500.0), (40.0, 400.0), (-500.0, 700.0)), size=(160, 160),
                      pixel_spacing_mm=2.2, dtype="float32")
#: ``--context-mm 5``: 2.5-D, the slice in three windows plus, in the lung window, the slices 5 mm below and
#: above it along the normal (docs/MANIFEST.md "context"): a vessel seen end-on continues into them, a
#: nodule ends within its own size. 5 mm: one slice of the thickest series the model accepts.
CONTEXT_MM = 5.0


def spec_for(context_mm: float) -> PreprocessSpec:
    if context_mm <= 0:
        return SPEC
    return PreprocessSpec(SPEC.windows, SPEC.size, SPEC.pixel_spacing_mm, SPEC.dtype,
                          context=ContextSpec(offset_mm=context_mm, windows=((-600.0, 1500.0),)))

APPLIES_TO = {
    "applies_to": {
        "modality": ["CT"],
        "body_part": ["CHEST", "THORAX", "LUNG"],
        "description_keywords": ["CHEST", "THORAX", "LUNG", "THORAC"],
        "exclude_keywords": ["CTA", "ANGIO", "CARDIAC", "CORONARY"],
        "slice_thickness_mm": [0.5, 6.0],
        "min_slices": 8,
        "min_coverage_mm": 40.0,
        "max_gantry_tilt_deg": 30.0,
        "kernels": {"refuse_kinds": ["bone"], "unknown": "allow"},
        "cardiac_gating": "refuse",
        "qa": "refuse",
        "kvp": [70.0, 140.0],
        "patient_age_years": [18.0, None],
    }
}

# forced on per case (positives too, so that no confounder means "negative"), on top of the generator's rates
HARD_FORCES = (("emphysema", 0.2), ("bullae", 0.12), ("atelectasis", 0.2), ("plate_atelectasis", 0.15),
               ("granuloma", 0.25), ("mucus", 0.2), ("pleural_thickening", 0.2), ("coronary_calcium", 0.15),
               ("aortic_calcium", 0.15), ("costal_calcification", 0.2), ("lymph_nodes", 0.15), ("metal", 0.05),
               ("motion", 0.12), ("scar", 0.15))


def _hard_z(a: dict) -> list[float]:
    """Heights of the likeliest nodule mimics of this chest."""
    zs = [float(z) + 3.0 for z in a["dome"]["z"]] + [float(h[2]) for h in a["hila"]]
    zs += [float(p[2]) for p, _r, _hu in a["granulomas"]]
    zs += [float((b[0][2] + b[1][2]) / 2) for b in a["bronchi"] if b[4] is not False]
    zs += [float(p[2]) for p, _ax, _hu in a["plaques"]] + [float(p[2]) for p, _r, _w in a["bullae"]]
    return zs


def _pick(acq, nodule_z, rng, a):
    """Positives: around the nodule (three). Hard negatives: a hilum, a diaphragm dome, one mimic of the
    case (granuloma, mucus, plaque, bulla) when it has one, one random slice."""
    z = acq.z_positions
    hard = _hard_z(a)
    base = [hard[int(rng.integers(2))], hard[2 + int(rng.integers(2))]]
    mimic = hard[4:]
    targets = base + ([mimic[int(rng.integers(len(mimic)))]] if mimic else []) + [None]
    if nodule_z is not None:
        r = 2.0
        targets = [nodule_z + rng.normal(0, r), nodule_z + rng.normal(0, 3 * r), nodule_z + rng.normal(0, 6 * r)] \
            + targets[1:]
    picked = {int(rng.integers(len(z))) if t is None else int(np.argmin(np.abs(z - t))) for t in targets}
    return sorted(picked)


def _draw_case(seed: int):
    rng = np.random.default_rng([seed, 11])
    nodule = "random" if rng.random() < 0.5 else None
    force = {key: True for key, p in HARD_FORCES if rng.random() < p}
    u = rng.random()
    if u < 0.25:
        force["kernel"] = "sharp"
    elif u < 0.35:
        force["kernel"] = "soft"
    if rng.random() < 0.2:
        force["low_dose"] = True
    matrix = 512 if rng.random() < 0.2 else 384   # 384²: 0.8–1.2 mm pixels (the model sees 2.2 mm)
    return nodule, force, matrix


def sample(seed: int):
    """The picked slices of one case in HU: each alone, or for a 2.5-D spec as (the slice, its neighbour
    below, above); the nodule's mask in ``meta["mask"]`` (dense supervision)."""
    context = TASK.spec.context
    offset = context.offset_mm if context is not None else 0.0
    nodule, force, matrix = _draw_case(seed)
    picked: list[int] = []

    def with_neighbours(acq, nodule_z, rng, a):
        picked.extend(_pick(acq, nodule_z, rng, a))
        z = np.asarray(acq.z_positions, float)
        need = set(picked)
        for i in picked if offset else ():
            need.add(neighbour_of(z, i, offset, -1))
            need.add(neighbour_of(z, i, offset, +1))
        return sorted(need)

    gen = generate_chest(seed, nodule=nodule, diameter_mm=None, slices=None, thickness_mm=None, matrix=matrix,
                         only=with_neighbours, force=force)
    acq = gen["acq"]
    nod = gen["nodule"]
    z = np.asarray(acq.z_positions, float)
    at = {k: j for j, k in enumerate(gen["indices"])}
    outside = acq.outside_mask()

    def hu(k):
        return np.where(outside, -1024.0, np.maximum(gen["images"][at[k]], -1024.0)).astype(np.float32)

    out = []
    for i in picked:
        area = float(gen["areas"][at[i]])
        stack = hu(i) if not offset else np.stack([hu(i), hu(neighbour_of(z, i, offset, -1)),
                                                   hu(neighbour_of(z, i, offset, +1))])
        meta = {"type": None if nod is None else nod["type"], "area_mm2": area, "hard": sorted(force),
                "mask": gen["masks"][at[i]]}
        out.append((stack, (acq.pixel_spacing, acq.pixel_spacing), bool(area >= MIN_LABEL_AREA_MM2), meta))
    return out


VAL_SERIES = {"slices": 30, "matrix": 384}   # 30-slice series at 384² (0.8–1.2 mm pixels): what 2 shared cores allow


def series(seed: int, positive: bool):
    """Validation series: nodules with the generator's own confounder rates; negatives are plain chests (1 in
    2) or chests with one forced confounder or a sharp (lung) kernel."""
    if positive:
        return chest_phantom(seed, nodule="random", **VAL_SERIES)
    r = np.random.default_rng([seed, 13])
    if r.random() < 0.5:
        key = HARD_FORCES[int(r.integers(len(HARD_FORCES)))][0]
        force = {key: True} if r.random() < 0.8 else {"kernel": "sharp"}
        return chest_phantom(seed, nodule=None, force=force, **VAL_SERIES)
    return chest_phantom(seed, nodule=None, **VAL_SERIES)


TASK = Task(name="lung_nodule", finding="lung_nodule", label="Pulmonary nodule", severity="urgent", spec=SPEC,
            sample=sample, series=series, manifest_extra=APPLIES_TO, data_version=7)


def _use_spec(spec: PreprocessSpec) -> None:
    """The task's preprocessing; the cache key follows it (v3 chest phantoms: 1-slice data 6, 2.5-D data 7;
    5 and 4 were the v2 phantoms, whose vessels were not bounded by their depth in the lung)."""
    TASK.spec = spec
    TASK.data_version = 7 if spec.context is not None else 6

DESCRIPTION = ("Pulmonary nodule: trained on synthetic chest phantoms with 3-D vessel trees, fissures, "
               "atelectasis, emphysema, diaphragm, heart and calcium, ribs and cartilage, motion and kernel "
               "confounders; a demonstration, not a medical device")

CARD = """# lung_nodule — pulmonary nodule on chest CT (demo model, v2)

**A demonstration trained only on synthetic phantoms (edge_agent.phantoms). Not a medical device. It has
never seen a real scan; do not use it for patient care or screening.**

- Input: `input` (N, 3, 160, 160) float32 — one axial slice resampled to 2.2 mm pixels (352 mm field,
  centre crop/pad), windows [-600, 1500], [40, 400], [-500, 700] HU scaled to [0, 1]
  (`edge_agent.preprocess.prepare_slices` with the manifest's `preprocessing`). Unchanged from v1.
- Output: `probability` (N, 1) float32, per-slice probability of a nodule (sigmoid in the graph).
- Series decision: `{decision}` (chosen on validation seeds 2,000,000+ only, specificity target 0.97).
- Architecture: 9-layer CNN (3×3 conv + BN + ReLU, 4 stride-2 stages, global max+mean pooling), {size_kb} KiB.
- Training: `/work/torchvenv/bin/python scripts/train_lung_nodule.py` (PyTorch CPU, fixed seeds, a budget in
  optimizer steps, fine-tuned from v1; phantom seeds 1,000,000+). Chest phantoms v3 (docs/MODELS.md):
  solid, part-solid and ground-glass nodules of 4–30 mm (spherical, lobulated, spiculated; parenchymal,
  juxtapleural, juxtavascular) and hard negatives: hila and 3-D vessel trees seen end-on and branching,
  diaphragm domes, fissures, atelectasis, emphysema and bullae, calcified granulomas (benign: labelled
  negative), mucus-filled bronchi, pleural plaques, coronary/aortic/costal calcification, metal,
  breathing and cardiac motion, soft/standard/lung kernels, low dose, 0.625–5 mm slices.
- Validation (series level, synthetic): {validation}.
- Evaluation on fresh seeds (3,500,000+): docs/MODELS.md.
- Limits: a per-slice model (a vessel seen end-on looks like a nodule on one slice; 2.5-D input is the
  known next step); 2.2 mm input pixels make nodules under ~6 mm hard to see; synthetic anatomy only.
"""


def card_for(spec: PreprocessSpec) -> str:
    """The model card: :data:`CARD`, with the input and the limits of a 2.5-D model when ``spec`` has context."""
    if spec.context is None:
        return CARD
    one = ("- Input: `input` (N, 3, 160, 160) float32 — one axial slice resampled to 2.2 mm pixels (352 mm field,\n"
           "  centre crop/pad), windows [-600, 1500], [40, 400], [-500, 700] HU scaled to [0, 1]\n"
           "  (`edge_agent.preprocess.prepare_slices` with the manifest's `preprocessing`). Unchanged from v1.")
    limits = ("- Limits: a per-slice model (a vessel seen end-on looks like a nodule on one slice; 2.5-D input is the\n"
              "  known next step)")
    assert one in CARD and limits in CARD, "the 1-slice card changed: edit card_for too"
    offset = f"{spec.context.offset_mm:g}"
    return CARD.replace(one, (
        f"- Input: `input` (N, 5, 160, 160) float32 — 2.5-D: the axial slice resampled to 2.2 mm pixels (352 mm\n"
        f"  field, centre crop/pad) in windows [-600, 1500], [40, 400], [-500, 700] HU, then the slices {offset} mm\n"
        f"  below and above it along the slice normal in the lung window [-600, 1500], all scaled to [0, 1]\n"
        f"  (`preprocessing.context`, docs/MANIFEST.md: the daemon scores a slice once its neighbours are in)."
    )).replace(limits, (
        f"- Limits: 2.5-D over ±{offset} mm only (a vessel that runs obliquely through several slices can still\n"
        f"  look like a nodule)"
    )).replace("(demo model, v2)", "(demo model, v2, 2.5-D)")


class _Progress:
    """A tqdm bar over the optimizer steps on a terminal; silent (the log lines remain) when not a TTY."""

    def __init__(self, total: int):
        self.bar = None
        if sys.stderr.isatty():
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit="step", dynamic_ncols=True)
            except ImportError:
                self.bar = None

    def __call__(self, step: int, loss: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=500)
    ap.add_argument("--val", type=int, default=12, help="validation series of each class")
    ap.add_argument("--steps", type=int, default=300, help="optimizer steps (the budget; reproducible)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--version", default="2.0.0")
    ap.add_argument("--out", type=Path, default=ROOT / "engines" / "lung_nodule")
    ap.add_argument("--init", type=Path, help="start from this model.onnx (same architecture), e.g. v1")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--context-mm", type=float, default=0.0,
                    help="2.5-D: also show the model the slices this far below and above (0 = one slice, as v1/v2)")
    ap.add_argument("--contrast-init", type=float, default=0.0,
                    help="with --context-mm and --init: start each neighbour channel at -this × the weights of "
                         "the slice's own channel of the same window (0: at zero, the v2.3.0 recipe)")
    ap.add_argument("--dense", action="store_true",
                    help="a fully convolutional finding-map network trained with the nodule masks as well as the "
                         "slice labels (_training.make_map_model); without it, the pooled classifier of v1/v2")
    args = ap.parse_args()
    _use_spec(spec_for(args.context_mm))
    t0 = time.time()
    TASK.manifest_extra = existing_applies_to(args.out, APPLIES_TO)
    x, y, meta, maps = build_dataset(TASK, args.cases, TRAIN_SEED0, workers=args.workers, with_maps=True)
    log(f"train slices {len(y)} (positive {int(y.sum())}) in {time.time() - t0:.0f} s")
    progress = _Progress(args.steps)
    model = train(TASK, x, y, steps=args.steps, batch=args.batch, width=args.width, min_positive=0.35,
                  mine_at=0.5, init=args.init, init_contrast=args.contrast_init, lr=args.lr, progress=progress,
                  maps=maps if args.dense else None)
    progress.close()
    log(f"trained {args.steps} steps ({time.time() - t0:.0f} s since start)")
    val = build_series(TASK, args.val, VAL_SEED0, workers=args.workers)
    probs = [predict(model, xs) for xs, _, _ in val]
    positive = np.array([d["finding"] is not None for _, _, d in val])
    decision = choose_decision(probs, positive, target_specificity=0.97, slice_labels=[labels for _, labels, _ in val])
    log(f"decision {decision}")
    manifest = export(TASK, model, args.out, decision, args.version, card_for(TASK.spec), description=DESCRIPTION)
    log(f"wrote {args.out} (sha256 {manifest['artefacts']['onnx']['sha256'][:12]}…) in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
