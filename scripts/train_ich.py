"""Train the `ich` model (intracranial haemorrhage, non-contrast head CT) on head phantoms.

A dev tool, not part of the package: run with the PyTorch CPU venv,

    /work/torchvenv/bin/python scripts/train_ich.py [--cases 3000] [--epochs 6] [--budget 620]

Fixed seeds; ≤ 15 min on 2 cores (phantom rendering ~4 min, training the rest).
Writes engines/ich/{model.onnx,manifest.json,README.md}.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from _training import (
    ROOT, TRAIN_SEED0, VAL_SEED0, Task, build_dataset, build_series, choose_decision, export, log, predict, train,
)
from edge_agent.phantoms import head_phantom
from edge_agent.phantoms.head import MIN_LABEL_AREA_MM2, generate_head
from edge_agent.preprocess import PreprocessSpec

SPEC = PreprocessSpec(windows=((40.0, 80.0), (80.0, 200.0), (600.0, 2800.0)), size=(128, 128),
                      pixel_spacing_mm=1.8, dtype="float32")

APPLIES_TO = {
    "applies_to": {
        "modality": ["CT"],
        "body_part": ["HEAD", "BRAIN", "SKULL"],
        "description_keywords": ["HEAD", "BRAIN", "CRAN", "SKULL"],
        "exclude_keywords": ["CTA", "ANGIO", "PERFUSION"],
        "slice_thickness_mm": [0.5, 6.0],
        "min_slices": 8,
        "min_coverage_mm": 40.0,
        "max_gantry_tilt_deg": 30.0,
    }
}


def _pick(acq, bleed_z, rng):
    """Training slices: around the bleed (positives and their neighbours) and hard negatives: the first and
    last slices (skull base, vertex partial volume), the beam-hardened skull base, the calcification level."""
    z = acq.z_positions
    ends = [z[0], z[-1]]
    if bleed_z is None:
        targets = [rng.uniform(-50, -25), rng.uniform(-2, 12), rng.choice(ends), rng.uniform(z[0], z[-1]), None]
    else:
        targets = [bleed_z + rng.normal(0, 3), bleed_z + rng.normal(0, 8), bleed_z + rng.normal(0, 14),
                   rng.choice(ends), None]
    picked = {int(rng.integers(len(z))) if t is None else int(np.argmin(np.abs(z - t))) for t in targets}
    return sorted(picked)


def sample(seed: int):
    rng = np.random.default_rng([seed, 11])
    bleed = "random" if rng.random() < 0.5 else None
    gen = generate_head(seed, bleed=bleed, volume_ml=None, slices=None, thickness_mm=None, matrix=512, only=_pick)
    acq = gen["acq"]
    b = gen["bleed"]
    out = []
    for img, area in zip(gen["images"], gen["areas"]):
        img = np.where(acq.outside_mask(), -1024.0, np.maximum(img, -1024.0)).astype(np.float32)
        meta = {"type": None if b is None else b["type"], "area_mm2": float(area)}
        out.append((img, (acq.pixel_spacing, acq.pixel_spacing), bool(area >= MIN_LABEL_AREA_MM2), meta))
    return out


def series(seed: int, positive: bool):
    return head_phantom(seed, bleed="random" if positive else None)


TASK = Task(name="ich", finding="ich", label="Intracranial haemorrhage", severity="critical", spec=SPEC,
            sample=sample, series=series, manifest_extra=APPLIES_TO, data_version=2)

CARD = """# ich — intracranial haemorrhage on non-contrast head CT (demo model)

**Trained only on synthetic phantoms (edge_agent.phantoms). Not a medical device. It has never seen a
real scan; do not use it for patient care.**

- Input: `input` (N, 3, 128, 128) float32 — one axial slice resampled to 1.8 mm pixels (230 mm field,
  centre crop/pad), windows [40, 80], [80, 200], [600, 2800] HU scaled to [0, 1]
  (`edge_agent.preprocess.prepare_slices` with the manifest's `preprocessing`).
- Output: `probability` (N, 1) float32, per-slice probability of haemorrhage (sigmoid in the graph).
- Series decision: `{decision}`.
- Architecture: 9-layer CNN (3×3 conv + BN + ReLU, 4 stride-2 stages, global max+mean pooling), {size_kb} KiB.
- Training: `/work/torchvenv/bin/python scripts/train_ich.py` (PyTorch CPU 2.13, fixed seeds, phantom seeds
  1,000,000+; validation seeds 2,000,000+). Head phantoms with intraparenchymal, subdural, epidural,
  subarachnoid and intraventricular bleeds of 0.3–60 mL at 50–90 HU, and confounders (calcifications,
  skull-base beam hardening, streaks, vertex partial volume); FOV, position, rotation, slice thickness,
  noise, vendor HU offsets and padding vary.
- Validation (series level, synthetic): {validation}.
- Evaluation on fresh seeds: see docs/MODELS.md (`scripts/evaluate_models.py`).
- Limits: synthetic anatomy is a caricature; real scanners' noise texture, beam hardening, motion, metal,
  post-operative change, chronic/isodense blood, tumours and children are absent from training.
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cases", type=int, default=3000)
    ap.add_argument("--val", type=int, default=50, help="validation series of each class")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--budget", type=float, default=620.0, help="seconds of training wall time at most")
    ap.add_argument("--version", default="1.0.0")
    args = ap.parse_args()
    t0 = time.time()
    x, y, _ = build_dataset(TASK, args.cases, TRAIN_SEED0)
    log(f"train slices {len(y)} (positive {int(y.sum())})")
    model = train(TASK, x, y, epochs=args.epochs, width=args.width, budget_s=args.budget)
    val = build_series(TASK, args.val, VAL_SEED0)
    probs = [predict(model, xs) for xs, _, _ in val]
    positive = np.array([d["finding"] is not None for _, _, d in val])
    decision = choose_decision(probs, positive)
    log(f"decision {decision}")
    manifest = export(TASK, model, ROOT / "engines" / "ich", decision, args.version, CARD)
    log(f"wrote engines/ich (sha256 {manifest['artefacts']['onnx']['sha256'][:12]}…) in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
