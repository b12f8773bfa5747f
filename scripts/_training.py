"""Shared code of the training scripts (a dev tool: PyTorch CPU, run with /work/torchvenv/bin/python).

Data: phantom slices → :func:`edge_agent.preprocess.prepare_slices` with the
manifest's spec (the very function inference uses) → uint8 tensors cached in
``$EDGE_TRAIN_CACHE`` (default /tmp/edge-agent-train). Model: a small per-slice
CNN (global max + mean pooling so a few pixels of finding can decide).
Export: ONNX opset 17, input ``input`` (N, C, H, W), output ``probability``
(N, 1) after a sigmoid inside the graph; manifest per docs/MANIFEST.md.

Seed ranges (never mixed): training 1_000_000+, validation 2_000_000+,
evaluation (scripts/evaluate_models.py) 3_000_000+.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

ROOT = Path(__file__).resolve().parents[1]

import numpy as np  # noqa: E402

from edge_agent.preprocess import (  # noqa: E402
    PreprocessSpec, context_planes, prepare_slices, prepare_volume, resample, stack_context,
)
from edge_agent.progress import echo, track  # noqa: E402 - bars on stderr, on a terminal only

TRAIN_SEED0, VAL_SEED0, EVAL_SEED0 = 1_000_000, 2_000_000, 3_000_000
CACHE = Path(os.environ.get("EDGE_TRAIN_CACHE", "/tmp/edge-agent-train"))


@dataclass
class Task:
    """One model to train: its name, finding, preprocessing and phantom sampler."""

    name: str
    finding: str
    label: str
    severity: str
    spec: PreprocessSpec
    # seed → slices: (HU (H, W) — or (3, H, W) = the slice, its neighbour below, above for a 2.5-D spec with
    # ``context`` —, pixel spacing, label, meta)
    sample: Callable[[int], list[tuple[np.ndarray, tuple[float, float], bool, dict]]]
    series: Callable[[int, bool], object]      # (seed, positive) → Phantom for validation
    manifest_extra: dict
    data_version: int = 1          # bump when the sampler changes (cache key)


def log(msg: str) -> None:
    echo(f"{time.strftime('%H:%M:%S')} {msg}")  # above any progress bar, never through it


# --------------------------------------------------------------------------- data


def training_input(hu: np.ndarray, spacing: tuple[float, float], spec: PreprocessSpec) -> np.ndarray:
    """One training slice's model input ``(C, rows, cols)``: with ``spec.context``, ``hu`` is (3, H, W) —
    the slice, its neighbour below and above — stacked as inference stacks them (edge_agent.preprocess)."""
    if spec.context is None:
        return prepare_slices(hu, spacing, spec)[0]
    planes = context_planes(hu[1:3], spacing, spec)
    return stack_context(prepare_slices(hu[0], spacing, spec), planes[0:1], planes[1:2])[0]


def finding_map(mask: np.ndarray | None, spacing: tuple[float, float], spec: PreprocessSpec) -> np.ndarray:
    """A slice's finding mask (H, W) resampled onto the model input's grid: uint8 (rows, cols), 1 = finding."""
    rows, cols = spec.size
    if mask is None:
        return np.zeros((rows, cols), np.uint8)
    m = np.asarray(mask, np.float32)
    if spec.pixel_spacing_mm is None:
        scale = (m.shape[0] / rows, m.shape[1] / cols)
    else:
        scale = (spec.pixel_spacing_mm / float(spacing[0]), spec.pixel_spacing_mm / float(spacing[1]))
    return (resample(m, spec.size, scale, fill=0.0) >= 0.5).astype(np.uint8)


def _case(args) -> tuple[np.ndarray, np.ndarray, list[dict], np.ndarray]:
    task, seed = args
    xs, ys, metas, maps = [], [], [], []
    for hu, spacing, label, meta in task.sample(seed):
        x = training_input(hu, spacing, task.spec)
        xs.append(np.round(x * 255.0).astype(np.uint8))
        ys.append(label)
        mask = meta.pop("mask", None)          # the map is kept apart from the (pickled) meta
        maps.append(finding_map(mask if label else None, spacing, task.spec))
        metas.append(meta)
    return np.stack(xs), np.asarray(ys, np.float32), metas, np.stack(maps)


def build_dataset(task: Task, n_cases: int, seed0: int, workers: int = 2, with_maps: bool = False):
    """Render ``n_cases`` phantoms' training slices (cached on disk by task, count and seed range):
    (x, y, meta), and with ``with_maps`` also each slice's finding map on the input grid (a sampler that puts
    the finding's mask in ``meta["mask"]``; dense supervision, :func:`train` ``maps``)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"{task.name}_v{task.data_version}_{n_cases}_{seed0}.npz"
    if path.exists():
        d = np.load(path, allow_pickle=True)
        return (d["x"], d["y"], list(d["meta"])) + ((d["maps"],) if with_maps else ())
    t0 = time.time()
    args = [(task, seed0 + i) for i in range(n_cases)]
    xs, ys, metas, maps = [], [], [], []
    with mp.get_context("fork").Pool(workers) as pool:
        for i, (x, y, m, fm) in enumerate(track(pool.imap(_case, args, chunksize=8), f"rendering {task.name}", "case",
                                            total=n_cases)):
            xs.append(x)
            ys.append(y)
            metas.extend(m)
            maps.append(fm)
            if (i + 1) % 250 == 0:
                log(f"  rendered {i + 1}/{n_cases} cases ({time.time() - t0:.0f} s)")
    x, y, fmaps = np.concatenate(xs), np.concatenate(ys), np.concatenate(maps)
    np.savez(path, x=x, y=y, meta=np.asarray(metas, dtype=object), maps=fmaps)
    log(f"dataset {task.name}: {len(y)} slices, {int(y.sum())} positive, {time.time() - t0:.0f} s")
    return (x, y, metas) + ((fmaps,) if with_maps else ())


def _series_case(args):
    task, seed, positive = args
    ph = task.series(seed, positive)
    x = prepare_volume(ph.volume_hu, ph.spacing[1:], task.spec, ph.slice_positions)
    return np.round(x * 255.0).astype(np.uint8), ph.slice_labels.copy(), dict(ph.details, finding=ph.finding)


def build_series(task: Task, n_each: int, seed0: int, workers: int = 2) -> list[tuple[np.ndarray, np.ndarray, dict]]:
    """Whole validation series (positives and negatives alternate), cached like :func:`build_dataset`."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"{task.name}_series_c{task.spec.channels}_{n_each}_{seed0}.npz"
    if path.exists():
        d = np.load(path, allow_pickle=True)
        return list(d["series"])
    args = [(task, seed0 + i, i % 2 == 0) for i in range(2 * n_each)]
    with mp.get_context("fork").Pool(workers) as pool:
        out = list(track(pool.imap(_series_case, args, chunksize=2), f"rendering {task.name} validation series",
                         "series", total=len(args)))
    arr = np.empty(len(out), dtype=object)
    arr[:] = out
    np.savez(path, series=arr)
    return out


# --------------------------------------------------------------------------- model


def _block(cin: int, cout: int, stride: int, dilation: int = 1):
    """3×3 convolution (no bias) + BatchNorm + ReLU: the one building block of both networks."""
    from torch import nn

    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, dilation, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _trunk(in_channels: int, w: int) -> list:
    """The first seven blocks both networks share: three stride-2 stages, to stride 8 and ``4 w`` channels."""
    return [_block(in_channels, w, 1),
            _block(w, w * 3 // 2, 2), _block(w * 3 // 2, w * 3 // 2, 1),
            _block(w * 3 // 2, w * 2, 2), _block(w * 2, w * 2, 1),
            _block(w * 2, w * 4, 2), _block(w * 4, w * 4, 1)]


def make_model(in_channels: int, width: int = 16):
    """A small per-slice CNN: 4 stride-2 stages, global max+mean pooling, one logit."""
    import torch
    from torch import nn

    w = width

    class SliceNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(*_trunk(in_channels, w), _block(w * 4, w * 6, 2), _block(w * 6, w * 6, 1))
            self.head = nn.Linear(w * 12, 1)

        def forward(self, x):
            f = self.features(x)
            pooled = torch.cat([torch.amax(f, dim=(2, 3)), torch.mean(f, dim=(2, 3))], dim=1)
            return self.head(pooled)

    return SliceNet()


#: Output stride of :func:`make_map_model`: one finding-map cell per 8 × 8 input pixels.
MAP_STRIDE = 8


def make_map_model(in_channels: int, width: int = 16):
    """A fully convolutional detector: a finding map at stride 8 (a 1×1-conv logit per cell) whose maximum
    is the slice's logit. Trained with dense supervision (the finding's mask per cell) as well as the slice
    label, it learns small findings from far fewer slices than a pooled classifier; exported, it gives the
    same (N, 1) probability as :func:`make_model`."""
    import torch
    from torch import nn

    w = width

    class MapNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(*_trunk(in_channels, w),   # then context: ~20 cm receptive field
                                          _block(w * 4, w * 4, 1, 2), _block(w * 4, w * 4, 1, 4))
            self.head = nn.Conv2d(w * 4, 1, 1)

        def logit_map(self, x):
            return self.head(self.features(x))

        def forward(self, x):
            return torch.amax(self.logit_map(x), dim=(2, 3))

    return MapNet()


class WithSigmoid:
    """Wraps a logit model so the exported graph outputs probabilities."""

    def __new__(cls, model):
        import torch

        class _M(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.model = model

            def forward(self, x):
                return torch.sigmoid(self.model(x))

        return _M()


def augment(x, rng: np.random.Generator, spec: PreprocessSpec | None = None, maps=None):
    """Cheap, label-preserving augmentations on a uint8 batch: flips, shifts, contrast jitter, noise; for a
    2.5-D spec also the slice order (below ↔ above: scanners send head-first and feet-first)."""
    import torch

    x = x.float() / 255.0
    n = x.shape[0]
    flip = torch.from_numpy(rng.random(n) < 0.5)
    x[flip] = x[flip].flip(-1)
    if maps is not None:
        maps = maps.float()
        maps[flip] = maps[flip].flip(-1)
    if spec is not None and spec.context is not None:
        own, m = len(spec.windows), len(spec.context.windows)
        swap = torch.from_numpy(rng.random(n) < 0.5)
        below = x[swap, own:own + m].clone()
        x[swap, own:own + m] = x[swap, own + m:own + 2 * m]
        x[swap, own + m:own + 2 * m] = below
    dy, dx = (int(v) for v in rng.integers(-10, 11, 2))
    x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    if maps is not None:
        maps = torch.roll(maps, shifts=(dy, dx), dims=(1, 2))
    gain = torch.from_numpy(rng.uniform(0.93, 1.07, (n, 1, 1, 1)).astype(np.float32))
    bias = torch.from_numpy(rng.uniform(-0.04, 0.04, (n, 1, 1, 1)).astype(np.float32))
    x = torch.where(x > 0, (x * gain + bias).clamp(0, 1), x)
    return x if maps is None else (x, maps)


def _lr_at(frac: float, lr: float) -> float:
    """Warm-up for the first 10 %, then cosine decay to 2 % of ``lr`` (``frac`` = share of the run done)."""
    import math

    if frac < 0.1:
        return lr * (0.1 + 0.9 * frac / 0.1)
    return lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, (frac - 0.1) / 0.9))))


def init_from_onnx(model, path: Path, neighbour_from: Sequence[int] = (), contrast: float = 0.0) -> None:
    """Initialise a :func:`make_model` network from an exported model.onnx of the same architecture.

    The exporter folds every BatchNorm into its convolution (weight + bias); the BatchNorms are set to
    the identity (weight 1, running mean 0, running variance 1 - eps) and carry the folded bias, so the
    network computes exactly the exported function while its BatchNorms stay in eval mode
    (``freeze_bn`` in :func:`train`).

    A 2.5-D network grown from a 1-slice one (more input channels than the file's): the neighbour
    channels start at zero, or, with ``contrast`` > 0, at ``-contrast`` × the weights of the own channel
    ``neighbour_from[j]`` names for grown channel ``j`` (the same window), so that the first layer starts
    out seeing the slice minus its neighbours there (a structure that continues is damped, one that ends
    is not)."""
    import onnx
    import torch
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    convs = [n for n in onnx.load(str(path)).graph.node if n.op_type == "Conv"]
    blocks = list(model.features)
    if len(convs) != len(blocks):
        raise ValueError(f"{path}: {len(convs)} convolutions, the model has {len(blocks)}")
    with torch.no_grad():
        for i, (node, block) in enumerate(zip(convs, blocks)):
            conv, bn = block[0], block[1]
            weight = torch.from_numpy(inits[node.input[1]].copy())
            if i == 0 and weight.shape[1] < conv.weight.shape[1]:
                # a 2.5-D network grown from a 1-slice one: the slice's own channels keep their weights, the
                # neighbours' start at zero, so training starts from exactly the 1-slice model's function
                grown = torch.zeros_like(conv.weight)
                grown[:, :weight.shape[1]] = weight
                for j, own in enumerate(neighbour_from if contrast > 0 else ()):
                    grown[:, weight.shape[1] + j] = -contrast * weight[:, own]
                weight = grown
            conv.weight.copy_(weight)
            bn.weight.fill_(1.0)
            bn.bias.copy_(torch.from_numpy(inits[node.input[2]].copy()))
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)
        model.head.weight.copy_(torch.from_numpy(inits["model.head.weight"].copy()))
        model.head.bias.copy_(torch.from_numpy(inits["model.head.bias"].copy()))


def train(task: Task, x: np.ndarray, y: np.ndarray, *, steps: int, batch: int = 64, lr: float = 3e-3,
          width: int = 16, seed: int = 0, min_positive: float = 0.0, weights: np.ndarray | None = None,
          mine_at: float | None = None, mine_top: float = 0.2, mine_factor: int = 2,
          init: Path | None = None, init_contrast: float = 0.0,
          progress: Callable[[int, float], None] | None = None,
          maps: np.ndarray | None = None, dense_weight: float = 1.0, dense_pos_weight: float = 5.0):
    """Train with AdamW for exactly ``steps`` optimizer steps (warm-up + cosine LR over the steps), so a run
    is reproducible whatever the machine's load. ``min_positive`` oversamples positive slices up to that
    share of the pool; ``weights`` (per slice, ≥ 1) repeats slices in the pool (hard negatives by
    design); ``mine_at`` (share of the steps) scores every training negative once and repeats the
    hardest ``mine_top`` share of them ``mine_factor`` times more for the rest of the run (online
    hard-negative mining). ``init``: start from that model.onnx (:func:`init_from_onnx`; BatchNorms
    frozen) instead of random weights. ``progress(step, loss)`` is called after every step (a progress bar).
    ``maps`` (per slice, the finding on the input grid, :func:`finding_map`) trains :func:`make_map_model`
    with dense supervision: the loss adds ``dense_weight`` × the per-cell BCE (a cell is positive when any
    of its 8 × 8 input pixels is finding; positives weighted ``dense_pos_weight``) to the slice BCE."""
    import torch

    torch.manual_seed(seed)
    torch.set_num_threads(2)
    rng = np.random.default_rng(seed)
    model = make_model(x.shape[1], width) if maps is None else make_map_model(x.shape[1], width)
    if init is not None:
        spec = task.spec
        sources: list[int] = []
        if init_contrast > 0:
            missing = [w for w in (spec.context.windows if spec.context else ()) if w not in spec.windows]
            if spec.context is None or missing:
                raise SystemExit("--contrast-init needs a 2.5-D spec whose neighbour windows are among the "
                                 f"slice's own windows (not {missing or 'one slice'})")
            # grown channels: the windows below, then the same windows above (docs/MANIFEST.md "context")
            sources = [spec.windows.index(w) for w in spec.context.windows] * 2
        init_from_onnx(model, init, neighbour_from=sources, contrast=init_contrast)
        log(f"initialised from {init}" + (f" (neighbour channels at -{init_contrast:g} × their own window's)"
                                          if init_contrast > 0 else ""))

    def set_train():
        model.train()
        if init is not None:   # fine-tuning: keep the BatchNorms as the fixed affine maps they were
            for mod in model.modules():
                if isinstance(mod, torch.nn.BatchNorm2d):
                    mod.eval()

    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    reps = np.ones(len(y), np.int64) if weights is None else np.maximum(np.round(weights), 1).astype(np.int64)
    pool = np.repeat(np.arange(len(y)), reps)
    pos = np.flatnonzero(y > 0.5)

    def _with_positives(pool):
        n_pos = int(np.isin(pool, pos).sum())
        extra = int(max(0.0, (min_positive * len(pool) - n_pos) / max(1e-9, 1 - min_positive)))
        if extra and len(pos):
            pool = np.concatenate([pool, np.random.default_rng(seed + 1).choice(pos, extra)])
        return pool

    pool = _with_positives(pool)
    batch = min(batch, len(pool))
    loss_fn = torch.nn.BCEWithLogitsLoss()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    mt = torch.from_numpy(maps) if maps is not None else None
    dense_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(dense_pos_weight))
    t0 = time.time()
    order, cursor, total, seen = rng.permutation(pool), 0, 0.0, 0
    mined = False
    for step in range(steps):
        if mine_at is not None and not mined and step >= int(mine_at * steps):
            mined = True
            model.eval()
            neg = np.flatnonzero(y < 0.5)
            p = predict(model, x[neg])
            hard = neg[np.argsort(-p)[: int(mine_top * len(neg))]]
            log(f"hard-negative mining at step {step}: {len(hard)} negatives (p >= {p[np.argsort(-p)][len(hard) - 1]:.3f}) "
                f"repeated x{mine_factor + 1}")
            pool = np.concatenate([pool, np.repeat(hard, mine_factor)])
            order, cursor = rng.permutation(pool), 0
        if cursor + batch > len(order):
            order, cursor = rng.permutation(pool), 0
        for g in opt.param_groups:
            g["lr"] = _lr_at(step / steps, lr)
        idx = torch.from_numpy(order[cursor:cursor + batch])
        cursor += batch
        set_train()
        if maps is None:
            xb = augment(xt[idx], rng, task.spec)
            logits = model(xb)[:, 0]
            loss = loss_fn(logits, yt[idx])
        else:
            xb, mb = augment(xt[idx], rng, task.spec, mt[idx])
            cells = torch.nn.functional.max_pool2d(mb[:, None], MAP_STRIDE)
            lmap = model.logit_map(xb)
            logits = torch.amax(lmap, dim=(2, 3))[:, 0]
            loss = loss_fn(logits, yt[idx]) + dense_weight * dense_fn(lmap, cells)
        opt.zero_grad()
        loss.backward()
        opt.step()
        total += float(loss.detach())
        seen += 1
        if progress is not None:
            progress(step, float(loss.detach()))
        if (step + 1) % 100 == 0 or step + 1 == steps:
            log(f"step {step + 1}/{steps} loss {total / seen:.4f} ({time.time() - t0:.0f} s)")
            total, seen = 0.0, 0
    model.eval()
    return model


def predict(model, x: np.ndarray, batch: int = 256) -> np.ndarray:
    import torch

    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xb = torch.from_numpy(x[i:i + batch]).float() / 255.0
            out.append(torch.sigmoid(model(xb)[:, 0]).numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


# --------------------------------------------------------------------------- metrics and decision


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann–Whitney U, ties counted half)."""
    scores = np.asarray(scores, float)
    labels = np.asarray(labels, bool)
    pos, neg = scores[labels], scores[~labels]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order))
    allv = np.concatenate([pos, neg])[order]
    ranks[order] = np.arange(1, len(order) + 1)
    # average ranks of ties
    _, inv, counts = np.unique(allv, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=ranks[order])
    ranks[order] = (sums / counts)[inv]
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def top_k_mean(p: np.ndarray, k: int) -> float:
    p = np.sort(np.asarray(p, float))[::-1]
    return float(p[:k].mean()) if len(p) else 0.0


def slice_rate(hits: list[np.ndarray]) -> str:
    """The fraction of slices called over several series (one array of bools per series), with a 95 % CI
    that resamples whole series (edge_agent.validation.metrics.clustered_rate_ci), and the counts."""
    from edge_agent.validation.metrics import clustered_rate_ci

    h = np.concatenate(hits) if hits else np.zeros(0, bool)
    if not h.size:
        return "–"
    lo, hi = clustered_rate_ci(h, np.concatenate([np.full(len(x), i) for i, x in enumerate(hits)]))
    return f"{h.mean():.3f} [{lo:.3f}, {hi:.3f}] ({int(h.sum())}/{h.size})"


MAX_FALSE_SLICES_PER_100 = 1.5  # the slice operating point: ≤ 1.5 % of the normal slices of normal series called


def choose_slice_threshold(series_probs: list[np.ndarray], slice_labels: list[np.ndarray], positive: np.ndarray,
                           series_threshold: float,
                           max_false_slices_per_100: float = MAX_FALSE_SLICES_PER_100) -> float:
    """The slice operating point on validation series: the lowest slice threshold at which at most
    ``max_false_slices_per_100`` of the slices of the *negative* series score at or above it
    (edge_agent.validation.metrics.slice_threshold_for_false_slices, as ``validate --max-false-slices``
    suggests one), never above the series threshold (a positive series must have a positive slice)."""
    from edge_agent.validation.metrics import slice_threshold_for_false_slices

    t = slice_threshold_for_false_slices(series_probs, slice_labels, positive, max_false_slices_per_100)
    return float(series_threshold) if t is None else float(min(t, series_threshold))


def choose_decision(series_probs: list[np.ndarray], positive: np.ndarray, target_specificity: float = 0.97,
                    ks: tuple[int, ...] = (1, 2, 3), max_threshold: float = 0.9,
                    slice_labels: list[np.ndarray] | None = None) -> dict:
    """Pick k and thresholds on validation series: specificity ≥ the target first, then sensitivity.

    ``ks``: the top-k means to consider (a rule on 2+ slices is less fragile on real scans than one on the
    single highest slice); ``max_threshold``: the cap on the threshold (a dense network's probabilities
    saturate, so its negatives can sit above the 0.9 that suits a pooled classifier). With ``slice_labels``
    (one array per series) the slice operating point too (:func:`choose_slice_threshold`)."""
    best = None
    negatives = ~positive
    for k in ks:
        s = np.array([top_k_mean(p, k) for p in series_probs])
        neg_sorted = np.sort(s[negatives])
        # the lowest threshold that keeps ≥ 97 % of validation negatives below it, with a margin
        q = neg_sorted[int(np.ceil(target_specificity * len(neg_sorted))) - 1] if len(neg_sorted) else 0.5
        thr = float(np.clip(max(q + 0.02, 0.3), 0.3, max_threshold))
        sens = float((s[positive] >= thr).mean())
        spec = float((s[negatives] < thr).mean())
        a = auc(s, positive)
        cand = (sens + spec, a, -k, k, thr, sens, spec)
        if best is None or cand > best:
            best = cand
    _, a, _, k, thr, sens, spec = best
    # preliminary warning: 2 slices above a stricter threshold, no validation negative may trigger it
    maxima = [np.sort(p)[::-1][1] if len(p) > 1 else 0.0 for p, neg in zip(series_probs, negatives) if neg]
    pre = float(np.clip(max(max(maxima, default=0.0) + 0.03, thr + 0.1), 0.6, 0.98))
    decision = {"rule": "top_k_mean", "k": int(k), "threshold": round(thr, 3),
                "preliminary": {"min_slices": 2, "threshold": round(pre, 3)},
                "_validation": {"auc": round(a, 4), "sensitivity": round(sens, 4), "specificity": round(spec, 4)}}
    if slice_labels is not None:
        decision["slice_threshold"] = choose_slice_threshold(series_probs, slice_labels, positive, round(thr, 3))
    return decision


# --------------------------------------------------------------------------- export


def export(task: Task, model, out_dir: Path, decision: dict, version: str, extra_card: str,
           description: str | None = None) -> dict:
    """Write model.onnx, manifest.json and README.md into ``out_dir``; returns the manifest.

    An existing manifest.json keeps all its keys except ``decision``, ``artefacts``, ``version``,
    ``description``, ``preprocessing``, ``inputs`` and ``outputs`` (so a hand-edited ``applies_to`` survives retraining)."""
    import torch

    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / "model.onnx"
    wrapped = WithSigmoid(model).eval()
    c = task.spec.channels
    h, w = task.spec.size
    dummy = torch.zeros(2, c, h, w)
    torch.onnx.export(wrapped, dummy, str(onnx_path), opset_version=17, input_names=["input"],
                      output_names=["probability"], dynamic_axes={"input": {0: "N"}, "probability": {0: "N"}},
                      dynamo=False)
    sha = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    validation = decision.pop("_validation", {})
    manifest = {
        "schema": 1,
        "name": task.name,
        "version": version,
        "description": description or f"{task.label} (trained on synthetic phantoms; not a medical device)",
        "synthetic_training": True,
        "findings": [{"code": task.finding, "label": task.label, "severity": task.severity}],
        **task.manifest_extra,
        "preprocessing": task.spec.to_dict(),
        "inputs": [{"name": "input", "shape": [-1, c, h, w], "dtype": "float32"}],
        "outputs": [{"name": "probability", "shape": [-1, 1], "dtype": "float32"}],
        "decision": decision,
        "artefacts": {"onnx": {"path": "model.onnx", "sha256": sha}},
    }
    path = out_dir / "manifest.json"
    if path.exists():
        # keep what other tools own (applies_to, evidence, ...): update only the training's own keys
        current = json.loads(path.read_text())
        for key in ("decision", "artefacts", "version", "description", "preprocessing", "inputs", "outputs"):
            current[key] = manifest[key]
        manifest = current
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    (out_dir / "README.md").write_text(extra_card.format(validation=validation, decision=decision,
                                                         size_kb=onnx_path.stat().st_size // 1024))
    return manifest


def existing_applies_to(out_dir: Path, default: dict) -> dict:
    """The model folder's current applies_to (edited by hand or by other tools) wins over ``default``."""
    path = Path(out_dir) / "manifest.json"
    if path.exists():
        current = json.loads(path.read_text())
        if "applies_to" in current:
            return {"applies_to": current["applies_to"]}
    return default
