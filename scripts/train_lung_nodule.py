"""Train the `lung_nodule` model (pulmonary nodule, chest CT) on chest phantoms.

A dev tool, not part of the package: run with the PyTorch CPU venv,

    /work/torchvenv/bin/python scripts/train_lung_nodule.py [--cases 2200] [--steps 500]

Fixed seeds; ≤ 15 min on 2 cores. Writes engines/lung_nodule/{model.onnx,manifest.json,README.md}.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from _training import (
    ROOT, TRAIN_SEED0, VAL_SEED0, Task, build_dataset, build_series, choose_decision, export, log, predict, train,
)
from edge_agent.phantoms import chest_phantom
from edge_agent.phantoms.chest import MIN_LABEL_AREA_MM2, generate_chest
from edge_agent.preprocess import PreprocessSpec

SPEC = PreprocessSpec(windows=((-600.0, 1500.0), (40.0, 400.0), (-500.0, 700.0)), size=(160, 160),
                      pixel_spacing_mm=2.2, dtype="float32")

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


def _pick(acq, nodule_z, rng):
    z = acq.z_positions
    if nodule_z is None:
        targets = [rng.uniform(-40, 40), rng.uniform(-120, 120), None, None]
    else:
        targets = [nodule_z + rng.normal(0, 1.5), nodule_z + rng.normal(0, 6), nodule_z + rng.normal(0, 15), None]
    picked = {int(rng.integers(len(z))) if t is None else int(np.argmin(np.abs(z - t))) for t in targets}
    return sorted(picked)


def sample(seed: int):
    rng = np.random.default_rng([seed, 12])
    nodule = "random" if rng.random() < 0.6 else None
    gen = generate_chest(seed, nodule=nodule, diameter_mm=None, slices=None, thickness_mm=None, matrix=512,
                         only=_pick)
    acq = gen["acq"]
    nod = gen["nodule"]
    out = []
    for img, area in zip(gen["images"], gen["areas"]):
        img = np.where(acq.outside_mask(), -1024.0, np.maximum(img, -1024.0)).astype(np.float32)
        meta = {"type": None if nod is None else nod["type"], "area_mm2": float(area)}
        out.append((img, (acq.pixel_spacing, acq.pixel_spacing), bool(area >= MIN_LABEL_AREA_MM2), meta))
    return out


def series(seed: int, positive: bool):
    return chest_phantom(seed, nodule="random" if positive else None)


TASK = Task(name="lung_nodule", finding="lung_nodule", label="Pulmonary nodule", severity="urgent", spec=SPEC,
            sample=sample, series=series, manifest_extra=APPLIES_TO)

CARD = """# lung_nodule — pulmonary nodule on chest CT (demo model)

**Trained only on synthetic phantoms (edge_agent.phantoms). Not a medical device. It has never seen a
real scan; do not use it for patient care or screening.**

- Input: `input` (N, 3, 160, 160) float32 — one axial slice resampled to 2.2 mm pixels (352 mm field,
  centre crop/pad), windows [-600, 1500], [40, 400], [-500, 700] HU scaled to [0, 1]
  (`edge_agent.preprocess.prepare_slices` with the manifest's `preprocessing`).
- Output: `probability` (N, 1) float32, per-slice probability of a nodule (sigmoid in the graph).
- Series decision: `{decision}`.
- Architecture: 9-layer CNN (3×3 conv + BN + ReLU, 4 stride-2 stages, global max+mean pooling), {size_kb} KiB.
- Training: `/work/torchvenv/bin/python scripts/train_lung_nodule.py` (PyTorch CPU 2.13, fixed seeds, phantom
  seeds 1,000,000+; validation seeds 2,000,000+). Chest phantoms with solid and ground-glass nodules of
  4–30 mm; confounders: vessel cross-sections, airways, scars; FOV, position, slice thickness, noise
  (8–35 HU), vendor HU offsets and padding vary.
- Validation (series level, synthetic): {validation}.
- Evaluation on fresh seeds: see docs/MODELS.md (`scripts/evaluate_models.py`).
- Limits: 2.2 mm input pixels make nodules under ~6 mm hard to see; a per-slice model cannot follow a
  vessel across slices, so round vessel cross-sections are its main confounder; real emphysema,
  fibrosis, consolidation, motion and calcified granulomas are absent from training.
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cases", type=int, default=2200)
    ap.add_argument("--val", type=int, default=30, help="validation series of each class")
    ap.add_argument("--steps", type=int, default=500, help="optimizer steps (the budget; reproducible)")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--version", default="1.0.0")
    args = ap.parse_args()
    t0 = time.time()
    x, y, _ = build_dataset(TASK, args.cases, TRAIN_SEED0)
    log(f"train slices {len(y)} (positive {int(y.sum())})")
    model = train(TASK, x, y, steps=args.steps, width=args.width, min_positive=0.4)
    val = build_series(TASK, args.val, VAL_SEED0)
    probs = [predict(model, xs) for xs, _, _ in val]
    positive = np.array([d["finding"] is not None for _, _, d in val])
    decision = choose_decision(probs, positive)
    log(f"decision {decision}")
    manifest = export(TASK, model, ROOT / "engines" / "lung_nodule", decision, args.version, CARD)
    log(f"wrote engines/lung_nodule (sha256 {manifest['artefacts']['onnx']['sha256'][:12]}…) in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
