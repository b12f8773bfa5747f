"""``edge-agent bench``: latency and throughput per stage and per backend, as a table.

For each model (``--model`` NAME or DIR; default: every shipped model) and
each backend (ONNX Runtime CPU always; ONNX Runtime CUDA/TensorRT execution
providers where this onnxruntime has them; TensorRT through the engine with
pinned copies and with zero-copy mapped memory), on a synthetic 512×512
series of ``--slices`` slices:

- preprocessing per series (CPU reference from HU; the raw→input numpy
  mirror of the GPU kernel; the GPU kernel itself when pycuda is present);
- inference latency p50/p99 for the whole series in one batch and for one
  slice, and slices/s;
- end to end per series = preprocessing p50 + inference p50;
- TensorRT as the agent runs it: stored pixels uploaded, the GPU kernel
  writing the engine input, the engine (``TrtRunner.infer_stored``) — its
  series time *is* end to end.

A backend that cannot run here is a row that says why. Timings are wall
clock (``time.perf_counter``) after ``--warmup`` untimed runs.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable

import click
import numpy as np

from edge_agent.errors import ConfigError, EdgeAgentError
from edge_agent.inference.trt.measure import synthetic_series


def _timings(fn: Callable[[], object], repeat: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000.0)
    return out


def _stats(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"p50_ms": round(float(np.percentile(a, 50)), 3), "p99_ms": round(float(np.percentile(a, 99)), 3)}


def preprocess_rows(spec, slices: int, repeat: int, warmup: int) -> list[dict]:
    """Preprocessing of one series: CPU reference, numpy mirror of the kernel, GPU kernel if present."""
    from edge_agent.inference.trt import preprocess_kernel as pk
    from edge_agent.preprocess import prepare_slices

    raw, hu = synthetic_series(slices)
    spacing = (0.5, 0.5)
    rows = [
        {"stage": "preprocess", "path": "cpu reference (HU → input)",
         **_stats(_timings(lambda: prepare_slices(hu, spacing, spec), repeat, warmup))},
        {"stage": "preprocess", "path": "cpu raw → input (kernel mirror)",
         **_stats(_timings(lambda: pk.raw_to_input(raw, spacing, spec, intercept=-1024.0, padding_value=0),
                           repeat, warmup))},
    ]
    from edge_agent.inference.trt.measure import gpu_preprocess_ms

    gpu = gpu_preprocess_ms(raw, spacing, spec, repeat=repeat, warmup=warmup)
    rows.append({"stage": "preprocess", "path": "gpu kernel (raw → input, incl. upload+download)", **gpu}
                if "p50_ms" in gpu else {"stage": "preprocess", "path": "gpu kernel", "unavailable": gpu["why"]})
    from edge_agent.inference.trt.measure import h2d_bandwidth

    h2d = h2d_bandwidth(raw.nbytes * 2, repeat=max(3, repeat // 4))
    rows.append({"stage": "transfer", "path": "host → device, pageable vs pinned", **h2d}
                if "pinned_gbps" in h2d else {"stage": "transfer", "path": "host → device", "unavailable": h2d["why"]})
    return rows


def _runner_rows(label: str, make: Callable[[], object], spec, slices: int, repeat: int, warmup: int,
                 pre_ms: float) -> list[dict]:
    from edge_agent.preprocess import prepare_slices

    _, hu = synthetic_series(slices, matrix=spec.size[0] * 2)
    x = prepare_slices(hu, (0.5, 0.5), spec)
    runner, unavailable = _activated(label, make)
    if runner is None:
        return [unavailable]
    try:
        name, dtype = runner.input_specs()[0].name, runner.input_specs()[0].dtype
        x = x.astype(dtype, copy=False)
        limit = runner.max_batch_size() or slices
        batch = min(slices, limit)
        series_ms = _timings(lambda: [runner.infer({name: x[i:i + batch]}) for i in range(0, slices, batch)],
                             repeat, warmup)
        one_ms = _timings(lambda: runner.infer({name: x[:1]}), repeat, warmup)
    finally:
        runner.deactivate()
    return [_inference_row(label, batch, slices, series_ms, one_ms, pre_ms)]


def _inference_row(label: str, batch: int, slices: int, series_ms: list[float], one_ms: list[float],
                   pre_ms: float) -> dict:
    """One table row: series and single-slice percentiles, slices/s, end to end = ``pre_ms`` + series p50."""
    s, one = _stats(series_ms), _stats(one_ms)
    return {"stage": "inference", "backend": label, "batch": batch, "series_p50_ms": s["p50_ms"],
            "series_p99_ms": s["p99_ms"], "slice_p50_ms": one["p50_ms"], "slice_p99_ms": one["p99_ms"],
            "slices_per_s": round(slices / (s["p50_ms"] / 1000.0), 1), "end_to_end_ms": round(pre_ms + s["p50_ms"], 3)}


def _activated(label: str, make: Callable[[], object]):
    """(active runner, None), or (None, a row saying why it cannot run here)."""
    try:
        runner = make()
        runner.activate()
    except EdgeAgentError as exc:
        return None, {"stage": "inference", "backend": label, "unavailable": str(exc).rstrip(".")}
    return runner, None


def _stored_rows(trt_runner, spec, slices: int, repeat: int, warmup: int) -> list[dict]:
    """The agent's TensorRT path: stored uint16 pixels → GPU kernel → engine input → engine, per series and slice."""
    label = "tensorrt + gpu preprocess"
    raw, _ = synthetic_series(slices)
    rescale = (1.0, -1024.0, (0, 0))
    runner, unavailable = _activated(label, lambda: trt_runner)
    if runner is None:
        return [unavailable]
    try:
        if not runner.stored_input_dtypes():
            return [{"stage": "inference", "backend": label, "unavailable": runner.preprocess_problem}]
        batch = min(slices, runner.max_batch_size() or slices)
        series_ms = _timings(lambda: [runner.infer_stored(raw[i:i + batch], (0.5, 0.5), rescale)
                                      for i in range(0, slices, batch)], repeat, warmup)
        one_ms = _timings(lambda: runner.infer_stored(raw[:1], (0.5, 0.5), rescale), repeat, warmup)
    finally:
        runner.deactivate()
    return [_inference_row(label, batch, slices, series_ms, one_ms, 0.0)]  # preprocessing is inside


def model_rows(manifest, backends: tuple[str, ...], slices: int, repeat: int, warmup: int,
               threads: int | None) -> list[dict]:
    """Every requested backend for one model."""
    from edge_agent.inference import trt
    from edge_agent.inference.onnxrt import OnnxRuntimeRunner, available_providers
    from edge_agent.preprocess import prepare_slices

    spec = manifest.preprocessing
    _, hu = synthetic_series(slices)
    pre_ms = _stats(_timings(lambda: prepare_slices(hu, (0.5, 0.5), spec), max(3, repeat // 4), 1))["p50_ms"]
    onnx_path = manifest.artefacts["onnx"].path
    rows: list[dict] = []
    if "onnxrt" in backends:
        rows += _runner_rows("onnxruntime cpu", lambda: OnnxRuntimeRunner(
            onnx_path, name=manifest.name, threads=threads, providers=["CPUExecutionProvider"]),
            spec, slices, repeat, warmup, pre_ms)
    if "onnxrt-gpu" in backends:
        for provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
            label = f"onnxruntime {provider.replace('ExecutionProvider', '').lower()}"
            if provider not in available_providers():
                rows.append({"stage": "inference", "backend": label,
                             "unavailable": f"this onnxruntime has no {provider}"})
                continue
            rows += _runner_rows(label, lambda p=provider: OnnxRuntimeRunner(
                onnx_path, name=manifest.name, providers=[p, "CPUExecutionProvider"]),
                spec, slices, repeat, warmup, pre_ms)
    if "tensorrt" in backends:
        why = trt.why_unavailable()
        if why is None and "engine" not in manifest.artefacts:
            why = f"model {manifest.name} has no engine; build one with 'edge-agent convert'"
        if why is not None:
            rows.append({"stage": "inference", "backend": "tensorrt", "unavailable": why.rstrip(".")})
        else:
            engine = manifest.artefacts["engine"]
            for mapped in (False, True):
                rows += _runner_rows(f"tensorrt {'zero-copy' if mapped else 'pinned copy'}", lambda m=mapped:
                                     trt.TrtRunner(engine.path, name=manifest.name, fingerprint=engine.fingerprint,
                                                   mapped=m), spec, slices, repeat, warmup, pre_ms)
            rows += _stored_rows(trt.TrtRunner(engine.path, name=manifest.name, fingerprint=engine.fingerprint,
                                               preprocessing=spec), spec, slices, repeat, warmup)
    for row in rows:
        row["model"] = f"{manifest.name}@{manifest.version}"
    return rows


def _manifests(models: tuple[str, ...]):
    from edge_agent.engines import ENGINES_DIR
    from edge_agent.inference.manifest import MANIFEST_NAME, load_manifest

    if not models:
        found = sorted(p.parent for p in ENGINES_DIR.glob(f"*/{MANIFEST_NAME}"))
        if not found:
            raise ConfigError(f"No models found in {ENGINES_DIR}; pass --model DIR (a folder with manifest.json).")
        return [load_manifest(p) for p in found]
    out = []
    for m in models:
        path = Path(m)
        if not path.exists() and (ENGINES_DIR / m).is_dir():
            path = ENGINES_DIR / m
        out.append(load_manifest(path))
    return out


def _print_table(rows: list[dict]) -> None:
    click.echo("(models trained on synthetic phantoms; figures are machine speed, not accuracy)")
    for row in rows:
        if row["stage"] == "preprocess":
            text = (f"{row['p50_ms']:9.2f} ms p50  {row['p99_ms']:9.2f} ms p99" if "p50_ms" in row
                    else f"unavailable: {row['unavailable']}")
            click.echo(f"preprocess  {row['path']:<48} {text}")
        elif row["stage"] == "transfer":
            text = (f"pageable {row['pageable_gbps']:.1f} GB/s, pinned {row['pinned_gbps']:.1f} GB/s"
                    if "pinned_gbps" in row else f"unavailable: {row['unavailable']}")
            click.echo(f"transfer    {row['path']:<48} {text}")
    click.echo(f"{'model':<16} {'backend':<26} {'batch':>5} {'series p50':>11} {'p99':>9} {'slice p50':>10} "
               f"{'p99':>9} {'slices/s':>9} {'end-to-end':>11}")
    for row in rows:
        if row["stage"] != "inference":
            continue
        if "unavailable" in row:
            click.echo(f"{row['model']:<16} {row['backend']:<26} unavailable: {row['unavailable']}")
            continue
        click.echo(f"{row['model']:<16} {row['backend']:<26} {row['batch']:>5} {row['series_p50_ms']:>8.2f} ms "
                   f"{row['series_p99_ms']:>6.2f} ms {row['slice_p50_ms']:>7.2f} ms {row['slice_p99_ms']:>6.2f} ms "
                   f"{row['slices_per_s']:>9.1f} {row['end_to_end_ms']:>8.2f} ms")


BACKEND_CHOICES = ("onnxrt", "onnxrt-gpu", "tensorrt", "all")


@click.command("bench")
@click.option("--model", "models", multiple=True, help="Model NAME (shipped) or DIR with manifest.json; repeatable.")
@click.option("--backend", "backend", type=click.Choice(BACKEND_CHOICES), default="all", show_default=True)
@click.option("--slices", type=click.IntRange(1, 1024), default=32, show_default=True, help="Slices per series.")
@click.option("--repeat", type=click.IntRange(1), default=20, show_default=True, help="Timed runs per measurement.")
@click.option("--warmup", type=click.IntRange(0), default=3, show_default=True)
@click.option("--threads", type=click.IntRange(1), default=None, help="ONNX Runtime intra-op threads.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of the table.")
def bench(models: tuple[str, ...], backend: str, slices: int, repeat: int, warmup: int, threads: int | None,
          as_json: bool) -> None:
    """Measure preprocessing and inference latency/throughput per model and backend."""
    backends = BACKEND_CHOICES[:-1] if backend == "all" else (backend,)
    manifests = _manifests(models)
    rows = preprocess_rows(manifests[0].preprocessing, slices, repeat, warmup)
    for manifest in manifests:
        rows += model_rows(manifest, backends, slices, repeat, warmup, threads)
    if as_json:
        click.echo(json.dumps({"cpu_count": os.cpu_count(), "slices": slices, "repeat": repeat, "rows": rows},
                              indent=2))
    else:
        _print_table(rows)
