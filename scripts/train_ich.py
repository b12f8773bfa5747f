"""Train the `ich` model (intracranial haemorrhage, non-contrast head CT) on head phantoms.

A dev tool, not part of the package: run with the PyTorch CPU venv,

    /work/torchvenv/bin/python scripts/train_ich.py [--cases 2400] [--steps 700] [--batch 32] [--out engines/ich]

Fixed seeds and a budget in optimizer steps (not wall time), so a rerun gives the same data and the same
schedule; ≈ 35 min on 2 busy shared cores (phantom rendering ~11 min, 700 steps of 32 slices ~19 min,
validation ~5 min); less on an idle machine.
Writes <out>/{model.onnx,manifest.json,README.md}; an existing manifest keeps its keys other than
decision, artefacts, version and description (applies_to is preserved).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from _training import (  # noqa: E402
    existing_applies_to,
    ROOT, TRAIN_SEED0, VAL_SEED0, Task, build_dataset, build_series, choose_decision, export, log, predict, train,
)
from edge_agent.phantoms import head_phantom, qa_phantom
from edge_agent.phantoms.head import MIN_LABEL_AREA_MM2, generate_head
from edge_agent.phantoms.qa import generate_qa
from edge_agent.preprocess import PreprocessSpec
from edge_agent.progress import progress, track

SPEC = PreprocessSpec(windows=((40.0, 80.0), (80.0, 200.0), (600.0, 2800.0)), size=(128, 128),
                      pixel_spacing_mm=1.8, dtype="float32")

APPLIES_TO = {
    "applies_to": {
        "modality": ["CT"],
        "body_part": ["HEAD", "BRAIN", "SKULL"],
        "description_keywords": ["HEAD", "BRAIN", "CRAN", "SKULL"],
        "exclude_keywords": ["CTA", "ANGIO", "PERFUSION"],
        "slice_thickness_mm": [2.0, 5.0],
        "min_slices": 8,
        "min_coverage_mm": 40.0,
        "max_gantry_tilt_deg": 30.0,
        "kernels": {"refuse_kinds": ["bone", "lung", "sharp"], "unknown": "allow"},
        "contrast": "refuse",
        "qa": "refuse",
        "kvp": [80.0, 140.0],
        "patient_age_years": [18.0, None],
    }
}


HARD_FORCES = (("atrophy", 0.2), ("infarct", 0.15), ("pv_lucency", 0.1), ("calcification", 0.2),
               ("dense_artery", 0.2), ("scalp_haematoma", 0.15), ("metal", 0.08), ("motion", 0.08))
# --more-confounders (v3c): the three confounders behind the v3b candidate's false alerts on fresh phantoms
# (scalp haematoma, metal streaks, motion) drawn about twice as often; the validation series keep their mix
MORE_CONFOUNDERS = {"scalp_haematoma": 0.3, "metal": 0.2, "motion": 0.15}


def _pick(acq, bleed_z, rng):
    """Training slices. Positives: around the bleed. Hard negatives in every case: two skull-base slices
    (orbital roofs, sphenoid, petrous ridges, tentorium: z -55..-15 mm), the calcification/pineal level,
    an end of the series (skull base or vertex partial volume) and one random slice."""
    z = acq.z_positions
    ends = [z[0], z[-1]]
    base = [rng.uniform(-55, -15), rng.uniform(-45, -20)]
    if bleed_z is None:
        targets = base + [rng.uniform(-5, 15), rng.choice(ends), None]
    else:
        targets = [bleed_z + rng.normal(0, 3), bleed_z + rng.normal(0, 8), bleed_z + rng.normal(0, 14),
                   base[0], None]
    picked = {int(rng.integers(len(z))) if t is None else int(np.argmin(np.abs(z - t))) for t in targets}
    return sorted(picked)


def _draw_case(seed: int):
    """What a training case is: bleed or not, forced confounders (for positives too, so a confounder never
    means 'negative'), kernel, matrix (384 or 512: pixel 0.53–1.2 or 0.4–0.9 mm), QA phantom."""
    rng = np.random.default_rng([seed, 11])
    qa = rng.random() < 0.05
    bleed = "random" if rng.random() < 0.5 else None
    force = {key: True for key, p in TASK_FORCES[0] if rng.random() < p}
    if rng.random() < 0.2:
        force["kernel"] = "sharp"
    matrix = 512 if rng.random() < 0.4 else 384
    return qa, bleed, force, matrix


def sample(seed: int):
    qa, bleed, force, matrix = _draw_case(seed)
    if qa:
        gen = generate_qa(seed, matrix=matrix)
        acq = gen["acq"]
        keep = np.random.default_rng([seed, 12]).choice(len(gen["images"]), size=min(4, len(gen["images"])),
                                                        replace=False)
        return [(np.where(acq.outside_mask(), -1024.0, np.maximum(gen["images"][k], -1024.0)).astype(np.float32),
                 (acq.pixel_spacing, acq.pixel_spacing), False, {"type": None, "area_mm2": 0.0, "hard": "qa"})
                for k in sorted(keep)]
    gen = generate_head(seed, bleed=bleed, volume_ml=None, slices=None, thickness_mm=None, matrix=matrix,
                        only=_pick, force=force)
    acq = gen["acq"]
    b = gen["bleed"]
    out = []
    for img, area, mask in zip(gen["images"], gen["areas"], gen["masks"]):
        img = np.where(acq.outside_mask(), -1024.0, np.maximum(img, -1024.0)).astype(np.float32)
        meta = {"type": None if b is None else b["type"], "area_mm2": float(area), "hard": sorted(force),
                "mask": mask}
        out.append((img, (acq.pixel_spacing, acq.pixel_spacing), bool(area >= MIN_LABEL_AREA_MM2), meta))
    return out


def series(seed: int, positive: bool):
    """Validation series: bleeds with the generator's own confounder rates; negatives are plain heads (1 in
    2), heads with forced confounders (1 in 3) or QA phantoms (1 in 6)."""
    if positive:
        return head_phantom(seed, bleed="random")
    r = np.random.default_rng([seed, 13])
    u = r.random()
    if u < 1 / 6:
        return qa_phantom(seed)
    if u < 0.5:
        key = HARD_FORCES[int(r.integers(len(HARD_FORCES)))][0]
        force = {key: True} if r.random() < 0.8 else {"kernel": "sharp"}
        return head_phantom(seed, bleed=None, force=force)
    return head_phantom(seed, bleed=None)


TASK_FORCES = [HARD_FORCES]   # the training draw's confounder rates; main() swaps in --more-confounders

TASK = Task(name="ich", finding="ich", label="Intracranial haemorrhage", severity="critical", spec=SPEC,
            sample=sample, series=series, manifest_extra=APPLIES_TO, data_version=4)

DESCRIPTION = ("Intracranial haemorrhage, v2: trained on synthetic phantoms with skull base, ageing, calcification, "
               "scalp, kernel, motion, metal and QA-phantom confounders; a demonstration, not a medical device")

DESCRIPTION_DENSE = ("Intracranial haemorrhage, v3: a finding-map network trained with the bleed masks on synthetic "
                     "phantoms with skull base, ageing, calcification, scalp, kernel, motion, metal and QA-phantom "
                     "confounders; a demonstration, not a medical device")

CARD = """# ich — intracranial haemorrhage on non-contrast head CT (demo model, v2)

**A demonstration trained only on synthetic phantoms (edge_agent.phantoms). Not a medical device. It has
never seen a real scan; do not use it for patient care.**

- Input: `input` (N, 3, 128, 128) float32 — one axial slice resampled to 1.8 mm pixels (230 mm field,
  centre crop/pad), windows [40, 80], [80, 200], [600, 2800] HU scaled to [0, 1]
  (`edge_agent.preprocess.prepare_slices` with the manifest's `preprocessing`).
- Output: `probability` (N, 1) float32, per-slice probability of haemorrhage (sigmoid in the graph).
- Series decision: `{decision}` (chosen on validation seeds 2,000,000+ only).
- Architecture: 9-layer CNN (3×3 conv + BN + ReLU, 4 stride-2 stages, global max+mean pooling), {size_kb} KiB.
- Training: `/work/torchvenv/bin/python scripts/train_ich.py` (PyTorch CPU, fixed seeds, a budget in optimizer
  steps; phantom seeds 1,000,000+). Head phantoms with five bleed types (0.3–60 mL, 50–90 HU) and hard
  negatives: skull base (orbital roofs, sinuses, petrous bones, tentorium), calcifications, scalp
  haematoma, dense falx/sinuses/basilar artery, ageing and old infarcts, motion, metal, sharp kernels,
  thin slices, QA cylinders; online hard-negative mining half way.
- Validation (series level, synthetic): {validation}.
- Evaluation on fresh seeds (3,000,000+): docs/MODELS.md (`scripts/evaluate_models.py --compare`).
- Limits: synthetic anatomy is a caricature; see docs/MODELS.md for what it was never trained on.
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cases", type=int, default=2400)
    ap.add_argument("--val", type=int, default=40, help="validation series of each class")
    ap.add_argument("--steps", type=int, default=700, help="optimizer steps (the budget; reproducible)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--version", default="2.0.0")
    ap.add_argument("--out", type=Path, default=ROOT / "engines" / "ich")
    ap.add_argument("--init", type=Path, help="start from this model.onnx (same architecture), e.g. the v1 model "
                    "(git show 1cd0035:engines/ich/model.onnx > /tmp/old_ich/model.onnx)")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--dense", action="store_true",
                    help="a fully convolutional finding-map network trained with the bleed masks as well as the "
                         "slice labels (_training.make_map_model); without it, the pooled classifier of v1/v2")
    ap.add_argument("--more-confounders", action="store_true",
                    help="draw scalp haematoma, metal and motion about twice as often in training (v3c)")
    ap.add_argument("--rule-k", type=int, nargs="+", default=[1, 2, 3],
                    help="top-k means the validation may choose from (v3c: 2 3)")
    ap.add_argument("--max-threshold", type=float, default=0.9,
                    help="cap on the chosen threshold (a dense network's scores saturate; v3c: 0.97)")
    args = ap.parse_args()
    t0 = time.time()
    if args.more_confounders:
        TASK_FORCES[0] = tuple((key, MORE_CONFOUNDERS.get(key, p)) for key, p in HARD_FORCES)
        TASK.data_version = 5
    TASK.manifest_extra = existing_applies_to(args.out, APPLIES_TO)
    x, y, meta, maps = build_dataset(TASK, args.cases, TRAIN_SEED0, with_maps=True)
    log(f"train slices {len(y)} (positive {int(y.sum())}) in {time.time() - t0:.0f} s")
    with progress(args.steps, "training ich", "step") as bar:
        def step_done(step: int, loss: float) -> None:
            bar.update()
            bar.describe(f"loss {loss:.3f}")

        model = train(TASK, x, y, steps=args.steps, batch=args.batch, width=args.width, min_positive=0.35,
                      mine_at=0.5, init=args.init, lr=args.lr, progress=step_done,
                      maps=maps if args.dense else None)
    log(f"trained {args.steps} steps ({time.time() - t0:.0f} s since start)")
    val = build_series(TASK, args.val, VAL_SEED0)
    probs = [predict(model, xs) for xs, _, _ in track(val, "validating", "series")]
    positive = np.array([d["finding"] is not None for _, _, d in val])
    decision = choose_decision(probs, positive, target_specificity=0.97, ks=tuple(args.rule_k),
                               max_threshold=args.max_threshold, slice_labels=[labels for _, labels, _ in val])
    log(f"decision {decision}")
    card, description = CARD, DESCRIPTION
    if args.dense:
        assert "global max+mean pooling" in CARD and "(demo model, v2)" in CARD, "the v2 card changed: edit both"
        card = CARD.replace("(demo model, v2)", "(demo model, v3)").replace(
            "9-layer CNN (3×3 conv + BN + ReLU, 4 stride-2 stages, global max+mean pooling)",
            "fully convolutional finding map (3×3 conv + BN + ReLU, 3 stride-2 stages, two dilated context "
            "blocks, a 1×1-conv logit per 14.4 mm cell; the slice's logit is the map's maximum), trained with "
            "the bleed masks and the slice labels")
        description = DESCRIPTION_DENSE
    manifest = export(TASK, model, args.out, decision, args.version, card, description=description)
    log(f"wrote {args.out} (sha256 {manifest['artefacts']['onnx']['sha256'][:12]}…) in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
