"""Evaluate the shipped models on freshly generated phantoms (seeds never used in training).

Runs what ships: engines/<name>/manifest.json + model.onnx through ONNX Runtime
(CPU), preprocessing with edge_agent.preprocess.prepare_slices and the
manifest's spec, series decision with the manifest's rule. Prints per-slice and
per-series AUC, sensitivity and specificity at the shipped thresholds, broken
down by finding type and size, and the preprocessing + inference time of a
32-slice series. Run with the project venv:

    .venv/bin/python scripts/evaluate_models.py [--model ich|lung_nodule|all] [--series 60]

``--dicom`` routes every series through DICOM files on disk and
edge_agent.dicom.read_series (slower; checks the reader too).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import numpy as np  # noqa: E402

from _training import EVAL_SEED0, VAL_SEED0, auc, choose_decision, top_k_mean  # noqa: E402
from edge_agent.phantoms import BLEED_TYPES, NODULE_TYPES, chest_phantom, head_phantom, write_phantom  # noqa: E402
from edge_agent.preprocess import PreprocessSpec, prepare_slices  # noqa: E402

VOLUME_BUCKETS = ((0.0, 1.0, "<1 mL"), (1.0, 5.0, "1-5 mL"), (5.0, 20.0, "5-20 mL"), (20.0, 1e9, ">=20 mL"))
DIAMETER_BUCKETS = ((0.0, 6.0, "4-6 mm"), (6.0, 10.0, "6-10 mm"), (10.0, 20.0, "10-20 mm"), (20.0, 99.0, "20-30 mm"))


def _load(name: str):
    import onnxruntime as ort

    folder = ROOT / "engines" / name
    manifest = json.loads((folder / "manifest.json").read_text())
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    session = ort.InferenceSession(str(folder / manifest["artefacts"]["onnx"]["path"]), opts,
                                   providers=["CPUExecutionProvider"])
    return manifest, session


def _phantom(args):
    name, seed, positive, i, via_dicom = args
    if name == "ich":
        ph = head_phantom(seed, bleed=BLEED_TYPES[i % len(BLEED_TYPES)] if positive else None)
    else:
        ph = chest_phantom(seed, nodule=NODULE_TYPES[i % len(NODULE_TYPES)] if positive else None)
    hu, spacing = ph.volume_hu, ph.spacing
    if via_dicom:
        from edge_agent.dicom import read_series

        with tempfile.TemporaryDirectory() as tmp:
            write_phantom(ph, tmp)
            s = read_series([tmp])[0]
            hu, spacing = s.hu, s.spacing
    return hu, spacing, ph.slice_labels, ph.finding, ph.details


def _score(session, spec: PreprocessSpec, hu: np.ndarray, spacing) -> np.ndarray:
    x = prepare_slices(hu, spacing[1:], spec)
    return session.run(["probability"], {"input": x})[0][:, 0]


def _rates(scores, labels, thr) -> tuple[float, float]:
    scores, labels = np.asarray(scores), np.asarray(labels, bool)
    sens = float((scores[labels] >= thr).mean()) if labels.any() else float("nan")
    spec = float((scores[~labels] < thr).mean()) if (~labels).any() else float("nan")
    return sens, spec


def _fmt(v) -> str:
    return "  n/a" if v != v else f"{v:5.3f}"


def evaluate(name: str, n_series: int, via_dicom: bool, workers: int) -> str:
    manifest, session = _load(name)
    spec = PreprocessSpec.from_dict(manifest["preprocessing"])
    dec = manifest["decision"]
    k, thr = int(dec.get("k", 1)), float(dec["threshold"])
    pre = dec.get("preliminary")
    seed0 = EVAL_SEED0 + (0 if name == "ich" else 500_000)
    jobs = [(name, seed0 + i, i % 2 == 0, i // 2, via_dicom) for i in range(2 * n_series)]
    t0 = time.time()
    rows = []
    with mp.get_context("fork").Pool(workers) as pool:
        for hu, spacing, labels, finding, details in pool.imap(_phantom, jobs, chunksize=2):
            probs = _score(session, spec, hu, spacing)
            rows.append((probs, labels, finding, details))
    gen_s = time.time() - t0
    slice_p = np.concatenate([r[0] for r in rows])
    slice_y = np.concatenate([r[1] for r in rows])
    series_s = np.array([top_k_mean(r[0], k) if dec["rule"] == "top_k_mean" else float(r[0].max()) for r in rows])
    series_y = np.array([r[2] is not None for r in rows])
    early = np.array([pre is not None and int((r[0] >= pre["threshold"]).sum()) >= pre["min_slices"] for r in rows])
    out = [f"### {name} — {len(rows)} series ({int(series_y.sum())} with the finding), {len(slice_y)} slices",
           f"decision: {dec['rule']} k={k} threshold={thr}"
           + (f"; preliminary: {pre['min_slices']} slices >= {pre['threshold']}" if pre else ""), "",
           "| level | group | n+ | n- | AUC | sensitivity | specificity |", "|---|---|---|---|---|---|---|"]
    s_sens, s_spec = _rates(slice_p, slice_y, thr)
    out.append(f"| slice | all | {int(slice_y.sum())} | {int((~slice_y).sum())} | {_fmt(auc(slice_p, slice_y))} "
               f"| {_fmt(s_sens)} | {_fmt(s_spec)} |")
    sens, spec_ = _rates(series_s, series_y, thr)
    out.append(f"| series | all | {int(series_y.sum())} | {int((~series_y).sum())} | {_fmt(auc(series_s, series_y))} "
               f"| {_fmt(sens)} | {_fmt(spec_)} |")
    negatives = ~series_y
    groups: list[tuple[str, np.ndarray]] = []
    type_key = "bleed_type" if name == "ich" else "nodule_type"
    for t in (BLEED_TYPES if name == "ich" else NODULE_TYPES):
        groups.append((f"type {t}", np.array([r[2] is not None and r[3].get(type_key) == t for r in rows])))
    size_key, buckets = ("volume_ml", VOLUME_BUCKETS) if name == "ich" else ("diameter_mm", DIAMETER_BUCKETS)
    for lo, hi, label in buckets:
        groups.append((label, np.array([r[2] is not None and lo <= r[3].get(size_key, -1) < hi for r in rows])))
    if name == "ich":
        groups.append((">=1 mL", np.array([r[2] is not None and r[3].get("volume_ml", 0) >= 1.0 for r in rows])))
    for label, mask in groups:
        if not mask.any():
            continue
        sel = mask | negatives
        sens, spec_ = _rates(series_s[sel], series_y[sel], thr)
        out.append(f"| series | {label} | {int(mask.sum())} | {int(negatives.sum())} "
                   f"| {_fmt(auc(series_s[sel], series_y[sel]))} | {_fmt(sens)} | {_fmt(spec_)} |")
        sl_mask = np.concatenate([np.full(len(r[1]), m) for r, m in zip(rows, mask)])
        sl_sel = sl_mask & slice_y | ~slice_y & np.concatenate([np.full(len(r[1]), n) for r, n in zip(rows, negatives)])
        s_sens, s_spec = _rates(slice_p[sl_sel], slice_y[sl_sel], thr)
        out.append(f"| slice | {label} | {int((sl_mask & slice_y).sum())} | {int((~slice_y & sl_sel).sum())} "
                   f"| {_fmt(auc(slice_p[sl_sel], slice_y[sl_sel]))} | {_fmt(s_sens)} | {_fmt(s_spec)} |")
    if pre:
        out.append("")
        out.append(f"preliminary warning raised: {int(early[series_y].sum())}/{int(series_y.sum())} positive series, "
                   f"{int(early[negatives].sum())}/{int(negatives.sum())} negative series")
    # latency of a 32-slice series: preprocessing + inference (one batch), median of 5
    ph = head_phantom(EVAL_SEED0 + 999_999, bleed=None, slices=32) if name == "ich" else \
        chest_phantom(EVAL_SEED0 + 999_999, nodule=None, slices=32)
    times = []
    for _ in range(6):
        t = time.perf_counter()
        _score(session, spec, ph.volume_hu, ph.spacing)
        times.append(time.perf_counter() - t)
    out.append(f"32-slice series, preprocessing + inference (ONNX Runtime CPU, 2 threads): "
               f"median {np.median(times[1:]) * 1000:.0f} ms (first call {times[0] * 1000:.0f} ms)")
    out.append(f"(phantom generation and scoring took {gen_s:.0f} s{'; via DICOM files' if via_dicom else ''})")
    return "\n".join(out)


def choose(name: str, n_neg: int, n_pos: int, workers: int, target: float) -> dict:
    """Re-choose the manifest's decision rule on validation seeds (never the evaluation ones) with the
    shipped ONNX model, and write it into the manifest (the model file and its sha256 are unchanged)."""
    manifest, session = _load(name)
    spec = PreprocessSpec.from_dict(manifest["preprocessing"])
    seed0 = VAL_SEED0 + 100_000 + (0 if name == "ich" else 500_000)
    jobs = [(name, seed0 + i, i < n_pos, i, False) for i in range(n_pos + n_neg)]
    probs, positive = [], []
    with mp.get_context("fork").Pool(workers) as pool:
        for hu, spacing, _labels, finding, _details in pool.imap(_phantom, jobs, chunksize=2):
            probs.append(_score(session, spec, hu, spacing))
            positive.append(finding is not None)
    decision = choose_decision(probs, np.array(positive), target_specificity=target)
    validation = decision.pop("_validation")
    manifest["decision"] = decision
    (ROOT / "engines" / name / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"{name}: decision {decision} (validation {validation}, {n_pos} + {n_neg} series, seeds {seed0}+)")
    return decision


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["ich", "lung_nodule", "all"], default="all")
    ap.add_argument("--series", type=int, default=60, help="series of each class (with / without the finding)")
    ap.add_argument("--dicom", action="store_true", help="write and read every series as DICOM files")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--choose-decision", action="store_true",
                    help="re-choose k/thresholds on validation seeds and write them into the manifest, then stop")
    ap.add_argument("--target-specificity", type=float, default=0.98)
    args = ap.parse_args()
    names = ["ich", "lung_nodule"] if args.model == "all" else [args.model]
    if args.choose_decision:
        for name in names:
            choose(name, 3 * args.series, args.series, args.workers, args.target_specificity)
        return
    print(f"# Evaluation on synthetic phantoms (not a medical device) — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"{platform.machine()} {os.cpu_count()} CPUs, seeds {EVAL_SEED0}+\n")
    for name in names:
        print(evaluate(name, args.series, args.dicom, args.workers))
        print()


if __name__ == "__main__":
    main()
