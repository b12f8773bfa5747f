"""Evaluate the shipped models on freshly generated phantoms (seeds never used in training).

Runs what ships: engines/<name>/manifest.json + model.onnx through ONNX Runtime
(CPU), preprocessing with edge_agent.preprocess.prepare_slices and the
manifest's spec, series decision with the manifest's rule. Prints per-slice and
per-series AUC, sensitivity and specificity at the shipped thresholds, broken
down by finding type and size, and the preprocessing + inference time of a
32-slice series. Run with the project venv:

    .venv/bin/python scripts/evaluate_models.py [--model ich|lung_nodule|all] [--series 60]
    .venv/bin/python scripts/evaluate_models.py --compare /tmp/old_ich engines/ich --labels old new \
        --series 50 --confounders 20     # same fresh phantoms, old vs new, per-confounder FP rates

``--dicom`` routes every series through DICOM files on disk and
edge_agent.dicom.read_series (slower; checks the reader too).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import numpy as np  # noqa: E402

from _training import EVAL_SEED0, VAL_SEED0, auc, choose_decision, slice_rate, top_k_mean  # noqa: E402
from edge_agent.phantoms import BLEED_TYPES, NODULE_TYPES, chest_phantom, head_phantom, write_phantom  # noqa: E402
from edge_agent.preprocess import PreprocessSpec, prepare_volume  # noqa: E402
from edge_agent.progress import track  # noqa: E402 - a bar on stderr when it is a terminal

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


def _input(hu: np.ndarray, spacing, spec: PreprocessSpec) -> np.ndarray:
    """The model input of a phantom series (equally spaced slices, ``spacing`` = (z, y, x) mm), 2.5-D or not."""
    return prepare_volume(hu, spacing[1:], spec, np.arange(len(hu)) * float(spacing[0]))


def _shared_spec(models) -> str:
    """One preprocessing that feeds every compared model: equal windows, size and spacing; at most one
    neighbour ``context`` — the 1-slice models then take the first channels of the 2.5-D input."""
    specs = [PreprocessSpec.from_dict(m["preprocessing"]) for m, _ in models]
    own = {(sp.windows, sp.size, sp.pixel_spacing_mm, sp.dtype) for sp in specs}
    contexts = {sp.context for sp in specs if sp.context is not None}
    if len(own) != 1 or len(contexts) > 1:
        raise SystemExit("--compare needs models with the same preprocessing (neighbour context aside)")
    widest = max(specs, key=lambda sp: sp.channels)
    return json.dumps(widest.to_dict(), sort_keys=True)


def _channels(manifest: dict) -> int:
    return PreprocessSpec.from_dict(manifest["preprocessing"]).channels


def _score(session, spec: PreprocessSpec, hu: np.ndarray, spacing) -> np.ndarray:
    x = _input(hu, spacing, spec)
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
        for hu, spacing, labels, finding, details in track(pool.imap(_phantom, jobs, chunksize=2),
                                                           f"evaluating {name}", "series", total=len(jobs)):
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
        for hu, spacing, _labels, finding, _details in track(pool.imap(_phantom, jobs, chunksize=2),
                                                             f"choosing {name}'s decision", "series",
                                                             total=len(jobs)):
            probs.append(_score(session, spec, hu, spacing))
            positive.append(finding is not None)
    decision = choose_decision(probs, np.array(positive), target_specificity=target)
    validation = decision.pop("_validation")
    manifest["decision"] = decision
    (ROOT / "engines" / name / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"{name}: decision {decision} (validation {validation}, {n_pos} + {n_neg} series, seeds {seed0}+)")
    return decision


# --------------------------------------------------------------------------- ich: old vs new, confounders

CONFOUNDER_GROUPS = (
    # name, how the fresh negative series is made
    ("skull base only", {"base_only": True}),
    ("calcification", {"force": {"calcification": True, "dense_artery": True}}),
    ("scalp haematoma", {"force": {"scalp_haematoma": True}}),
    ("atrophy / old infarct", {"force": {"atrophy": True, "infarct": True, "pv_lucency": True}}),
    ("QA cylinder", {"qa": True}),
    ("metal streaks", {"force": {"metal": True}}),
    ("motion", {"force": {"motion": True}}),
    ("sharp kernel", {"force": {"kernel": "sharp"}}),
    ("thin slices (0.625-1.25 mm)", {"thin": True}),
)


class _cached:
    """Cache a phantom job's model input (float16, one preprocessing spec) in $EVAL_CACHE, so that a later
    run scores new models on exactly the same phantoms without rendering them again."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, args):
        cache = os.environ.get("EVAL_CACHE")
        spec = PreprocessSpec.from_dict(json.loads(os.environ["EVAL_SPEC"]))
        name = self.fn.__name__ + "_" + "_".join(str(int(a)) for a in args) + ".npz"
        path = Path(cache) / name if cache else None
        if path is not None and path.exists():
            d = np.load(path, allow_pickle=True)
            return (d["x"].astype(np.float32), d["labels"], *d["rest"].tolist())
        hu, spacing, labels, *rest = self.fn(args)
        x = _input(hu, spacing, spec).astype(np.float16)
        if path is not None:
            rest_arr = np.empty(len(rest), dtype=object)
            rest_arr[:] = rest
            np.savez(path, x=x, labels=labels, rest=rest_arr)
        return (x.astype(np.float32), labels, *rest)


def _conf_phantom(args):
    """A fresh negative series of one confounder group: (hu, spacing, labels, details)."""
    gi, seed = args
    name, how = CONFOUNDER_GROUPS[gi]
    if how.get("qa"):
        from edge_agent.phantoms import qa_phantom

        ph = qa_phantom(seed)
        return ph.volume_hu, ph.spacing, ph.slice_labels, ph.details
    if how.get("base_only"):
        from edge_agent.phantoms.head import generate_head

        gen = generate_head(seed, bleed=None, volume_ml=None, slices=None, thickness_mm=None, matrix=512,
                            only=lambda acq, bz, rng: [k for k, z in enumerate(acq.z_positions) if z < -15.0]
                            or [0])
        acq = gen["acq"]
        hu = np.stack(gen["images"]).astype(np.float32)
        hu[:, acq.outside_mask()] = -1024.0
        np.maximum(hu, -1024.0, out=hu)
        return hu, (acq.thickness, acq.pixel_spacing, acq.pixel_spacing), np.zeros(len(hu), bool), {}
    thickness = None
    if how.get("thin"):
        thickness = float(np.random.default_rng([seed, 5]).choice([0.625, 1.0, 1.25]))
    ph = head_phantom(seed, bleed=None, thickness_mm=thickness, force=how.get("force"))
    return ph.volume_hu, ph.spacing, ph.slice_labels, ph.details


def _ich_main_phantom(args):
    seed, positive, i = args
    ph = head_phantom(seed, bleed=BLEED_TYPES[i % len(BLEED_TYPES)] if positive else None)
    details = dict(ph.details)
    if ph.finding_mask is not None:   # each slice's blood cross-section (mm²), for the area-banded slice rows
        details["slice_area_mm2"] = (ph.finding_mask.reshape(len(ph.finding_mask), -1).sum(axis=1)
                                     * ph.spacing[1] * ph.spacing[2]).tolist()
    return ph.volume_hu, ph.spacing, ph.slice_labels, ph.finding, details


def _load_dir(folder: Path):
    import onnxruntime as ort

    manifest = json.loads((folder / "manifest.json").read_text())
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    session = ort.InferenceSession(str(folder / manifest["artefacts"]["onnx"]["path"]), opts,
                                   providers=["CPUExecutionProvider"])
    return manifest, session


def _by_area(slice_p: np.ndarray, slice_y: np.ndarray, area: np.ndarray, threshold: float) -> str:
    """Fraction of labelled slices with p ≥ threshold in three bands of the slice's blood area (count)."""
    out = []
    for lo, hi in ((8.0, 50.0), (50.0, 200.0), (200.0, np.inf)):
        sel = slice_y & (area >= lo) & (area < hi)
        out.append(f"{(slice_p[sel] >= threshold).mean():.2f} ({int(sel.sum())})" if sel.any() else "–")
    return " / ".join(out)


def _series_score(probs: np.ndarray, dec: dict) -> float:
    return top_k_mean(probs, int(dec.get("k", 1))) if dec["rule"] == "top_k_mean" else float(np.max(probs))


def _alerts(probs: np.ndarray, dec: dict) -> tuple[bool, bool]:
    pre = dec.get("preliminary")
    early = pre is not None and int((probs >= pre["threshold"]).sum()) >= pre["min_slices"]
    return _series_score(probs, dec) >= float(dec["threshold"]), early


def bootstrap_auc(scores, labels, n: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile bootstrap CI of the AUC, resampling positives and negatives separately."""
    rng = np.random.default_rng(seed)
    scores, labels = np.asarray(scores, float), np.asarray(labels, bool)
    pos, neg = scores[labels], scores[~labels]
    vals = []
    for _ in range(n):
        p = pos[rng.integers(len(pos), size=len(pos))]
        q = neg[rng.integers(len(neg), size=len(neg))]
        vals.append(auc(np.concatenate([p, q]), np.r_[np.ones(len(p), bool), np.zeros(len(q), bool)]))
    return float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))


def bootstrap_slice_auc(rows, n: int = 300, seed: int = 1) -> tuple[float, float]:
    """95 % CI of the slice-level AUC, resampling whole series (slices of a series are correlated)."""
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n):
        pick = rng.integers(len(rows), size=len(rows))
        p = np.concatenate([rows[i][0] for i in pick])
        y = np.concatenate([rows[i][1] for i in pick])
        if y.any() and (~y).any():
            vals.append(auc(p, y))
    return float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))


def wilson(k: int, n: int) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion k/n."""
    if n == 0:
        return float("nan"), float("nan")
    z = 1.96
    p = k / n
    c = (p + z * z / (2 * n)) / (1 + z * z / n)
    h = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(0.0, c - h)), float(min(1.0, c + h))


def compare_ich(folders: list[Path], labels: list[str], n_series: int, n_conf: int, workers: int) -> str:
    """Score the same fresh phantoms with every model folder and print side-by-side tables."""
    models = [_load_dir(f) for f in folders]
    os.environ["EVAL_SPEC"] = _shared_spec(models)
    if os.environ.get("EVAL_CACHE"):
        Path(os.environ["EVAL_CACHE"]).mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    def score_all(x):
        return [s.run(["probability"], {"input": np.ascontiguousarray(x[:, :_channels(m)])})[0][:, 0]
                for m, s in models]

    main = []    # (probs per model, slice labels, finding, details)
    jobs = [(EVAL_SEED0 + i, i % 2 == 0, i // 2) for i in range(2 * n_series)]
    with mp.get_context("fork").Pool(workers) as pool:
        for x, sl, finding, details in track(pool.imap(_cached(_ich_main_phantom), jobs, chunksize=2),
                                             "comparing: bleeds and normals", "series", total=len(jobs)):
            main.append((score_all(x), sl, finding, details))
        conf = {g: [] for g in range(len(CONFOUNDER_GROUPS))}
        cjobs = [(g, EVAL_SEED0 + 200_000 + 1000 * g + i) for g in range(len(CONFOUNDER_GROUPS)) for i in range(n_conf)]
        confounders = track(pool.imap(_cached(_conf_phantom), cjobs, chunksize=1), "comparing: confounders",
                            "series", total=len(cjobs))
        for (g, _seed), (x, sl, details) in zip(cjobs, confounders):
            conf[g].append(score_all(x))
    gen_s = time.time() - t0
    y = np.array([r[2] is not None for r in main])
    ge1 = np.array([r[2] is not None and r[3].get("volume_ml", 0) >= 1.0 for r in main])
    out = [f"### ich — same fresh phantoms, {len(folders)} models ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
           f"{platform.machine()} {os.cpu_count()} CPUs)", "",
           f"{int(y.sum())} bleed + {int((~y).sum())} normal series (seeds {EVAL_SEED0}+, bleed types cycled, "
           f"0.3-60 mL log-uniform); {n_conf} fresh negative series per confounder group (seeds "
           f"{EVAL_SEED0 + 200_000}+); phantoms from the generator as of this run.", "",
           "| metric | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    rows_by = {}
    for mi, (m, _s) in enumerate(models):
        dec = m["decision"]
        cut = float(dec.get("slice_threshold", dec["threshold"]))
        scores = np.array([_series_score(r[0][mi], dec) for r in main])
        alerts = np.array([_alerts(r[0][mi], dec)[0] for r in main])
        early = np.array([_alerts(r[0][mi], dec)[1] for r in main])
        a = auc(scores, y)
        lo, hi = bootstrap_auc(scores, y)
        sel = ge1 | ~y
        a1 = auc(scores[sel], y[sel])
        srows = [(r[0][mi], r[1]) for r in main]
        slice_p = np.concatenate([p for p, _ in srows])
        slice_y = np.concatenate([l for _, l in srows])
        sa = auc(slice_p, slice_y)
        slo, shi = bootstrap_slice_auc(srows)
        slice_area = np.concatenate([np.asarray(r[3].get("slice_area_mm2") or np.full(len(r[1]), np.nan), float)
                                     for r in main])
        neg_slice = np.concatenate([r[0][mi] for r in main if r[2] is None])
        neg_sorted = np.sort(scores[~y])
        thr95 = neg_sorted[int(np.ceil(0.95 * len(neg_sorted))) - 1] if len(neg_sorted) else 1.0
        s95 = float((scores[ge1] > thr95).mean()) if ge1.any() else float("nan")
        rows_by[mi] = {
            "decision": f"{dec['rule']} k={dec.get('k', 1)} ≥ {dec['threshold']}; pre {dec.get('preliminary')}",
            "series AUC [95 % CI]": f"{a:.3f} [{lo:.3f}, {hi:.3f}]",
            "series AUC, bleeds ≥ 1 mL": f"{a1:.3f}",
            "sensitivity (all bleeds)": f"{alerts[y].mean():.3f} ({int(alerts[y].sum())}/{int(y.sum())})",
            "sensitivity (≥ 1 mL)": f"{alerts[ge1].mean():.3f} ({int(alerts[ge1].sum())}/{int(ge1.sum())})",
            "ROC: sensitivity (≥ 1 mL) at specificity ≥ 0.95 (metric, not a rule)": f"{s95:.3f}",
            "specificity (normal heads)": f"{1 - alerts[~y].mean():.3f} ({int((~alerts[~y]).sum())}/{int((~y).sum())})",
            "preliminary warning on normal heads": f"{int(early[~y].sum())}/{int((~y).sum())}",
            # the model's preliminary rule on the whole series (the agent also needs its domain and evidence)
            "preliminary rule met on bleeds": f"{int(early[y].sum())}/{int(y.sum())}",
            "slice AUC bleed vs normal slices [95 % CI]": f"{sa:.3f} [{slo:.3f}, {shi:.3f}]",
            "bleed slices called positive (p ≥ threshold)": f"{(slice_p[slice_y] >= dec['threshold']).mean():.3f}",
            "bleed slices called positive, by blood cross-section (8–50 / 50–200 / ≥ 200 mm²)":
                _by_area(slice_p, slice_y, slice_area, dec["threshold"]),
            "slice threshold (decision.slice_threshold, else the threshold)": f"{cut:g}",
            "bleed slices called positive (p ≥ slice threshold) [95 % CI, series resampled]":
                slice_rate([p[l] >= cut for p, l in srows if l.any()]),
            "bleed slices called positive at the slice threshold, by cross-section (8–50 / 50–200 / ≥ 200 mm²)":
                _by_area(slice_p, slice_y, slice_area, cut),
            "slices of normal heads called positive (p ≥ slice threshold)":
                slice_rate([r[0][mi] >= cut for r in main if r[2] is None]),
            "non-bleed slices of bleed series called positive (p ≥ slice threshold)":
                slice_rate([r[0][mi][~r[1]] >= cut for r in main if r[2] is not None]),
            "median slice p, normal heads": f"{np.median(neg_slice):.3f}",
        }
        for g, (gname, _how) in enumerate(CONFOUNDER_GROUPS):
            al = [_alerts(p[mi], dec) for p in conf[g]]
            k = sum(x[0] for x in al)
            lo_, hi_ = wilson(k, len(al))
            med = np.median(np.concatenate([p[mi] for p in conf[g]]))
            called = np.concatenate([p[mi] >= cut for p in conf[g]])
            rows_by[mi][f"FP: {gname}"] = (f"{k}/{len(al)} = {k / len(al):.2f} [{lo_:.2f}, {hi_:.2f}]; "
                                          f"pre {sum(x[1] for x in al)}; median p {med:.2f}; "
                                          f"slices called {called.mean():.3f}")
    for key in rows_by[0]:
        out.append(f"| {key} | " + " | ".join(rows_by[mi][key] for mi in range(len(models))) + " |")
    out.append("")
    out.append(f"(FP = series alerted by the model's own shipped rule, Wilson 95 % CI; 'pre' = preliminary "
               f"warnings; median p over all slices of the group; 'slices called': its slices at or above the "
               f"slice threshold; phantom generation and scoring took {gen_s:.0f} s)")
    return "\n".join(out)


# --------------------------------------------------------------------------- lung_nodule: old vs new, confounders

CHEST_CONFOUNDER_GROUPS = (
    ("emphysema / bullae", {"force": {"emphysema": True, "bullae": True}}),
    ("atelectasis", {"force": {"atelectasis": True, "plate_atelectasis": True}}),
    ("calcified granuloma", {"force": {"granuloma": True}}),
    ("mucus / scar / pleural plaque", {"force": {"mucus": True, "scar": True, "pleural_thickening": True}}),
    ("calcium (coronary, aortic, costal) + metal", {"force": {"coronary_calcium": True, "aortic_calcium": True,
                                                              "costal_calcification": True, "metal": True}}),
    ("breathing + cardiac motion", {"force": {"motion": True, "cardiac_motion": True}}),
    ("lung (sharp) kernel, low dose", {"force": {"kernel": "sharp", "low_dose": True}}),
    ("thin slices (0.625-1.25 mm)", {"thin": True}),
    ("lower chest only (domes, liver, flexure)", {"lower": True}),
)


LUNG_SERIES = {"slices": None, "matrix": 512}   # --slices / --matrix (set in main; inherited by the workers)


def _chest_conf_phantom(args):
    """A fresh negative chest series of one confounder group: (hu, spacing, labels, details)."""
    gi, seed = args
    _name, how = CHEST_CONFOUNDER_GROUPS[gi]
    if how.get("lower"):
        from edge_agent.phantoms.chest import generate_chest

        def lower(acq, _nz, _rng, a):
            top = max(a["dome"]["z"]) + 25.0
            return [k for k, z in enumerate(acq.z_positions) if z < top] or [0]

        gen = generate_chest(seed, nodule=None, diameter_mm=None, slices=None, thickness_mm=5.0,
                             matrix=LUNG_SERIES["matrix"], only=lower)
        acq = gen["acq"]
        hu = np.stack(gen["images"]).astype(np.float32)
        hu[:, acq.outside_mask()] = -1024.0
        np.maximum(hu, -1024.0, out=hu)
        return hu, (acq.thickness, acq.pixel_spacing, acq.pixel_spacing), np.zeros(len(hu), bool), {}
    thickness = None
    if how.get("thin"):
        thickness = float(np.random.default_rng([seed, 5]).choice([0.625, 1.0, 1.25]))
    ph = chest_phantom(seed, nodule=None, thickness_mm=thickness, force=how.get("force"), **LUNG_SERIES)
    return ph.volume_hu, ph.spacing, ph.slice_labels, ph.details


def _lung_main_phantom(args):
    seed, positive, i = args
    ph = chest_phantom(seed, nodule=NODULE_TYPES[i % len(NODULE_TYPES)] if positive else None, **LUNG_SERIES)
    return ph.volume_hu, ph.spacing, ph.slice_labels, ph.finding, ph.details


def compare_lung(folders: list[Path], labels: list[str], n_series: int, n_conf: int, workers: int) -> str:
    """The lung models on the same fresh chest phantoms: main table and per-confounder false alerts."""
    models = [_load_dir(f) for f in folders]
    os.environ["EVAL_SPEC"] = _shared_spec(models)
    if os.environ.get("EVAL_CACHE"):
        Path(os.environ["EVAL_CACHE"]).mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    seed0 = EVAL_SEED0 + 500_000

    def score_all(x):
        return [s.run(["probability"], {"input": np.ascontiguousarray(x[:, :_channels(m)])})[0][:, 0]
                for m, s in models]

    main = []
    jobs = [(seed0 + i, i % 2 == 0, i // 2) for i in range(2 * n_series)]
    conf = {g: [] for g in range(len(CHEST_CONFOUNDER_GROUPS))}
    with mp.get_context("fork").Pool(workers) as pool:
        for x, sl, finding, details in pool.imap(_cached(_lung_main_phantom), jobs, chunksize=1):
            main.append((score_all(x), sl, finding, details))
        cjobs = [(g, EVAL_SEED0 + 700_000 + 1000 * g + i) for g in range(len(CHEST_CONFOUNDER_GROUPS))
                 for i in range(n_conf)]
        for (g, _seed), (x, sl, details) in zip(cjobs, pool.imap(_cached(_chest_conf_phantom), cjobs, chunksize=1)):
            conf[g].append(score_all(x))
    gen_s = time.time() - t0
    y = np.array([r[2] is not None for r in main])
    dia = np.array([r[3].get("diameter_mm", 0.0) if r[2] is not None else 0.0 for r in main])
    out = [f"### lung_nodule — same fresh phantoms, {len(folders)} models ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
           f"{platform.machine()} {os.cpu_count()} CPUs)", "",
           f"{int(y.sum())} nodule + {int((~y).sum())} clear series (seeds {seed0}+, nodule types cycled, "
           f"4-30 mm log-uniform); {n_conf} fresh clear series per confounder group (seeds "
           f"{EVAL_SEED0 + 700_000}+); series of {LUNG_SERIES['slices'] or 'up to 80'} slices at "
           f"{LUNG_SERIES['matrix']}²; phantoms from the generator as of this run.", "",
           "| metric | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    rows_by = {}
    for mi, (m, _s) in enumerate(models):
        dec = m["decision"]
        cut = float(dec.get("slice_threshold", dec["threshold"]))
        scores = np.array([_series_score(r[0][mi], dec) for r in main])
        alerts = np.array([_alerts(r[0][mi], dec)[0] for r in main])
        early = np.array([_alerts(r[0][mi], dec)[1] for r in main])
        a = auc(scores, y)
        lo, hi = bootstrap_auc(scores, y)
        srows = [(r[0][mi], r[1]) for r in main]
        slice_p = np.concatenate([p for p, _ in srows])
        slice_y = np.concatenate([l for _, l in srows])
        sa = auc(slice_p, slice_y)
        slo, shi = bootstrap_slice_auc(srows)
        neg_slice = np.concatenate([r[0][mi] for r in main if r[2] is None])
        neg_sorted = np.sort(scores[~y])
        thr95 = neg_sorted[int(np.ceil(0.95 * len(neg_sorted))) - 1] if len(neg_sorted) else 1.0
        top_on_label = [bool(r[1][int(np.argmax(r[0][mi]))]) for r in main if r[2] is not None]
        rows_by[mi] = {
            "decision": f"{dec['rule']} k={dec.get('k', 1)} ≥ {dec['threshold']}; pre {dec.get('preliminary')}",
            "series AUC [95 % CI]": f"{a:.3f} [{lo:.3f}, {hi:.3f}]",
        }
        for lo_d, hi_d, name in ((0, 99, "all"), (0, 6, "4-6 mm"), (6, 10, "6-10 mm"), (10, 20, "10-20 mm"),
                                 (20, 99, "20-30 mm")):
            sel = y & (dia >= lo_d) & (dia < hi_d)
            k = int(alerts[sel].sum())
            wl, wh = wilson(k, int(sel.sum()))
            rows_by[mi][f"sensitivity, {name}"] = (f"{k}/{int(sel.sum())} = {k / max(1, sel.sum()):.2f} "
                                                   f"[{wl:.2f}, {wh:.2f}]")
        for t in NODULE_TYPES:
            sel = np.array([r[2] is not None and r[3].get("nodule_type") == t for r in main])
            rows_by[mi][f"sensitivity, {t}"] = f"{int(alerts[sel].sum())}/{int(sel.sum())}"
        kneg = int(alerts[~y].sum())
        wl, wh = wilson(kneg, int((~y).sum()))
        rows_by[mi]["false alerts, clear chests"] = f"{kneg}/{int((~y).sum())} = {kneg / max(1, (~y).sum()):.2f} [{wl:.2f}, {wh:.2f}]"
        rows_by[mi]["ROC: sensitivity at specificity ≥ 0.95 (metric, not a rule)"] = \
            f"{float((scores[y] > thr95).mean()):.3f}"
        rows_by[mi]["preliminary warning: nodules / clear"] = f"{int(early[y].sum())}/{int(y.sum())} / {int(early[~y].sum())}/{int((~y).sum())}"
        rows_by[mi]["slice AUC [95 % CI]"] = f"{sa:.3f} [{slo:.3f}, {shi:.3f}]"
        rows_by[mi]["top slice on a nodule slice"] = f"{sum(top_on_label)}/{len(top_on_label)}"
        rows_by[mi]["slice threshold (decision.slice_threshold, else the threshold)"] = f"{cut:g}"
        rows_by[mi]["nodule slices called positive (p ≥ slice threshold) [95 % CI, series resampled]"] = \
            slice_rate([p[l] >= cut for p, l in srows if l.any()])
        rows_by[mi]["slices of clear chests called positive (p ≥ slice threshold)"] = \
            slice_rate([r[0][mi] >= cut for r in main if r[2] is None])
        rows_by[mi]["median slice p, clear chests"] = f"{np.median(neg_slice):.3f}"
        for g, (gname, _how) in enumerate(CHEST_CONFOUNDER_GROUPS):
            al = [_alerts(p[mi], dec) for p in conf[g]]
            k = sum(x[0] for x in al)
            lo_, hi_ = wilson(k, len(al))
            med = np.median(np.concatenate([p[mi] for p in conf[g]]))
            called = np.concatenate([p[mi] >= cut for p in conf[g]])
            rows_by[mi][f"FP: {gname}"] = (f"{k}/{len(al)} = {k / len(al):.2f} [{lo_:.2f}, {hi_:.2f}]; "
                                          f"pre {sum(x[1] for x in al)}; median p {med:.2f}; "
                                          f"slices called {called.mean():.3f}")
        allc = [_alerts(p[mi], dec)[0] for g in conf for p in conf[g]]
        k = int(sum(allc))
        lo_, hi_ = wilson(k, len(allc))
        rows_by[mi]["FP: all confounder groups"] = f"{k}/{len(allc)} = {k / max(1, len(allc)):.2f} [{lo_:.2f}, {hi_:.2f}]"
    for key in rows_by[0]:
        out.append(f"| {key} | " + " | ".join(rows_by[mi][key] for mi in range(len(models))) + " |")
    out.append("")
    out.append(f"(sensitivity and FP = series alerted by the model's own shipped rule, Wilson 95 % CI; 'pre' = "
               f"preliminary warnings; phantom generation and scoring took {gen_s:.0f} s)")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["ich", "lung_nodule", "all"], default="all")
    ap.add_argument("--series", type=int, default=60, help="series of each class (with / without the finding)")
    ap.add_argument("--dicom", action="store_true", help="write and read every series as DICOM files")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--choose-decision", action="store_true",
                    help="re-choose k/thresholds on validation seeds and write them into the manifest, then stop")
    ap.add_argument("--target-specificity", type=float, default=0.98)
    ap.add_argument("--compare", nargs="+", type=Path, metavar="DIR",
                    help="model folders (manifest.json + model.onnx) to score on the same fresh phantoms, "
                         "with per-confounder false-positive rates (ich, or lung_nodule with --model lung_nodule)")
    ap.add_argument("--labels", nargs="+", help="column names for --compare")
    ap.add_argument("--confounders", type=int, default=20, help="fresh negative series per confounder group")
    ap.add_argument("--slices", type=int, help="lung --compare: slices per series (default: the generator's)")
    ap.add_argument("--matrix", type=int, default=512, help="lung --compare: image matrix of the phantoms")
    ap.add_argument("--seed-offset", type=int, default=0,
                    help="add this to the evaluation seeds (3,000,000+): a fresh draw for a candidate whose design "
                         "was prompted by results on the default seeds")
    args = ap.parse_args()
    global EVAL_SEED0
    EVAL_SEED0 += args.seed_offset
    if args.compare and args.model == "lung_nodule":
        LUNG_SERIES.update(slices=args.slices, matrix=args.matrix)
        print(compare_lung(args.compare, args.labels or [str(f) for f in args.compare], args.series,
                           args.confounders, args.workers))
        return
    if args.compare:
        print(compare_ich(args.compare, args.labels or [str(f) for f in args.compare], args.series,
                          args.confounders, args.workers))
        return
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
