"""Choose a shipped model's slice operating point (``decision.slice_threshold``) on validation series.

The series decision stays as it is; this picks the probability from which a *slice* is called positive
(each key slice says ``positive``, each finding counts ``slices_positive``, ``validate`` measures slice
sensitivity and specificity there). It runs what ships — engines/<name>/model.onnx on ONNX Runtime, CPU —
on the training script's own validation series (seeds 2,000,000+, never the evaluation seeds), and picks
the lowest threshold at which at most ``--max-false-slices`` per 100 slices of the normal validation series
are called (scripts/_training.choose_slice_threshold). It prints what that costs and gains there, next to
the series threshold; ``--write`` puts it into the manifest (the model file and its sha256 are unchanged).
Report its effect on fresh seeds (scripts/evaluate_models.py), never on these.

    .venv/bin/python scripts/choose_slice_threshold.py --model ich [--val 40] [--write] [--folder DIR]

``--folder``: a candidate's model folder instead of engines/<name> (a 2.5-D lung candidate's validation
series are rendered with its neighbour context, as its training script renders them).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import numpy as np  # noqa: E402

from _training import (  # noqa: E402
    MAX_FALSE_SLICES_PER_100, VAL_SEED0, build_series, choose_slice_threshold, slice_rate,
)
from edge_agent.progress import track  # noqa: E402


def _task(name: str, manifest: dict):
    if name == "ich":
        from train_ich import TASK
    else:
        from train_lung_nodule import TASK, _use_spec, spec_for

        context = manifest.get("preprocessing", {}).get("context") or {}
        _use_spec(spec_for(float(context.get("offset_mm", 0.0))))
    return TASK


def _score(session, x: np.ndarray, batch: int = 64) -> np.ndarray:
    name = session.get_inputs()[0].name
    out = [session.run(None, {name: x[i:i + batch].astype(np.float32) / 255.0})[0][:, 0]
           for i in range(0, len(x), batch)]
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=("ich", "lung_nodule"), default="ich")
    ap.add_argument("--val", type=int, default=40, help="validation series of each class (as the training script)")
    ap.add_argument("--max-false-slices", type=float, default=MAX_FALSE_SLICES_PER_100,
                    help="slices of normal validation series allowed at or above it, per 100")
    ap.add_argument("--write", action="store_true", help="write decision.slice_threshold into the manifest")
    ap.add_argument("--folder", type=Path, help="the model folder (default: engines/<model>)")
    args = ap.parse_args()

    import onnxruntime as ort

    folder = args.folder or ROOT / "engines" / args.model
    manifest = json.loads((folder / "manifest.json").read_text())
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    session = ort.InferenceSession(str(folder / manifest["artefacts"]["onnx"]["path"]), opts,
                                   providers=["CPUExecutionProvider"])
    t0 = time.time()
    val = build_series(_task(args.model, manifest), args.val, VAL_SEED0)
    probs = [_score(session, x) for x, _, _ in track(val, "scoring validation series", "series")]
    labels = [np.asarray(y, bool) for _, y, _ in val]
    positive = np.array([d["finding"] is not None for _, _, d in val])
    series_threshold = float(manifest["decision"]["threshold"])
    cut = choose_slice_threshold(probs, labels, positive, series_threshold, args.max_false_slices)

    print(f"{args.model} {manifest['version']}: {int(positive.sum())} + {int((~positive).sum())} validation series "
          f"(seeds {VAL_SEED0}+), {sum(len(p) for p in probs)} slices, {time.time() - t0:.0f} s")
    print(f"{'threshold':>22} | {'finding slices called':>30} | {'slices of normal series called':>30} | "
          f"{'other slices of finding series called':>37}")
    for what, t in (("series " + f"{series_threshold:g}", series_threshold), ("slice " + f"{cut:g}", cut)):
        found = [p[y] >= t for p, y, pos in zip(probs, labels, positive) if pos]
        normal = [p >= t for p, pos in zip(probs, positive) if not pos]
        other = [p[~y] >= t for p, y, pos in zip(probs, labels, positive) if pos]
        print(f"{what:>22} | {slice_rate(found):>30} | {slice_rate(normal):>30} | {slice_rate(other):>37}")
    print("(rates with 95 % CIs that resample whole series)")
    if args.write:
        manifest["decision"]["slice_threshold"] = cut
        (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        print(f"wrote decision.slice_threshold {cut:g} into {folder / 'manifest.json'}")


if __name__ == "__main__":
    main()
