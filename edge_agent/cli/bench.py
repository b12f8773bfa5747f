"""``edge-agent bench``: latency and throughput per stage and per backend, as a table.

For each model (``--model`` NAME or DIR; default: every shipped model) and
each backend (ONNX Runtime CPU always; ONNX Runtime CUDA/TensorRT execution
providers where this onnxruntime has them; TensorRT through the engine with
pinned copies and with zero-copy mapped memory), on a synthetic 512×512
series of ``--slices`` slices:

- preprocessing per series (CPU reference from HU; the raw→input numpy
  mirror of the GPU kernel; the GPU kernel itself when pycuda is present —
  neither for a 2.5-D model, whose input, with its neighbour slices'
  channels, is always prepared on the CPU);
- inference latency p50/p99 for the whole series in one batch and for one
  slice, and slices/s;
- end to end per series = preprocessing p50 + inference p50;
- TensorRT as the agent runs it: stored pixels uploaded, the GPU kernel
  writing the engine input, the engine (``TrtRunner.infer_stored``) — its
  series time *is* end to end.

A backend that cannot run here is a row that says why; when none of the
requested backends can run, the command exits non-zero with one sentence.
Timings are wall clock (``time.perf_counter``) after ``--warmup`` untimed
runs. A progress bar counts the runs on stderr when it is a terminal.
"""

from __future__ import annotations

import json
import os
import shutil
import textwrap
import time
from pathlib import Path
from typing import Callable

import click
import numpy as np

from edge_agent.errors import ConfigError, EdgeAgentError, MissingDependency
from edge_agent.inference.trt.measure import synthetic_series
from edge_agent.progress import Progress

_QUIET = Progress(None, "", "", enabled=False)  # the default bar: draws nothing
#: Why a 2.5-D model (manifest ``preprocessing.context``) has no GPU preprocessing rows.
CONTEXT_ON_CPU = "the model needs neighbour slices (preprocessing.context): its input is prepared on the CPU"


def _timings(fn: Callable[[], object], repeat: int, warmup: int, bar: Progress = _QUIET) -> list[float]:
    for _ in range(warmup):
        fn()
        bar.update()
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000.0)
        bar.update()  # outside the timed part
    return out


def _slot(repeat: int, warmup: int) -> int:
    """Runs one inference row takes (whole series, then one slice): what the bar counts for it."""
    return 2 * (repeat + warmup)


def planned_runs(backends: tuple[str, ...], models: int, repeat: int, warmup: int) -> int:
    """The bar's total: every run :func:`preprocess_rows` and :func:`model_rows` may make (skipped rows count too)."""
    per_model = max(3, repeat // 4) + 1 + _slot(repeat, warmup) * (
        ("onnxrt" in backends) + 2 * ("onnxrt-gpu" in backends) + 3 * ("tensorrt" in backends))
    return _slot(repeat, warmup) + models * per_model


def _stats(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"p50_ms": round(float(np.percentile(a, 50)), 3), "p99_ms": round(float(np.percentile(a, 99)), 3)}


def preprocess_rows(spec, slices: int, repeat: int, warmup: int, bar: Progress = _QUIET) -> list[dict]:
    """Preprocessing of one series: CPU reference, numpy mirror of the kernel, GPU kernel if present."""
    from edge_agent.inference.trt import preprocess_kernel as pk
    from edge_agent.preprocess import prepare_volume

    raw, hu = synthetic_series(slices)
    spacing = (0.5, 0.5)
    rows = [
        {"stage": "preprocess", "path": "cpu reference (HU → input)",
         **_stats(_timings(lambda: prepare_volume(hu, spacing, spec), repeat, warmup, bar))},
    ]
    if spec.context is not None:  # the kernel writes a slice's own channels only: a 2.5-D input is the CPU's
        why = CONTEXT_ON_CPU
        bar.update(repeat + warmup)
        rows += [{"stage": "preprocess", "path": "cpu raw → input (kernel mirror)", "unavailable": why},
                 {"stage": "preprocess", "path": "gpu kernel", "unavailable": why}]
    else:
        rows.append({"stage": "preprocess", "path": "cpu raw → input (kernel mirror)",
                     **_stats(_timings(lambda: pk.raw_to_input(raw, spacing, spec, intercept=-1024.0,
                                                               padding_value=0), repeat, warmup, bar))})
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
                 pre_ms: float, bar: Progress = _QUIET) -> list[dict]:
    from edge_agent.preprocess import prepare_volume

    _, hu = synthetic_series(slices, matrix=spec.size[0] * 2)
    x = prepare_volume(hu, (0.5, 0.5), spec)  # spec.channels channels: a 2.5-D model's neighbours too
    runner, unavailable = _activated(label, make)
    if runner is None:
        bar.update(_slot(repeat, warmup))
        return [unavailable]
    try:
        name, dtype = runner.input_specs()[0].name, runner.input_specs()[0].dtype
        x = x.astype(dtype, copy=False)
        limit = runner.max_batch_size() or slices
        batch = min(slices, limit)
        series_ms = _timings(lambda: [runner.infer({name: x[i:i + batch]}) for i in range(0, slices, batch)],
                             repeat, warmup, bar)
        one_ms = _timings(lambda: runner.infer({name: x[:1]}), repeat, warmup, bar)
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


def _stored_rows(trt_runner, spec, slices: int, repeat: int, warmup: int, bar: Progress = _QUIET) -> list[dict]:
    """The agent's TensorRT path: stored uint16 pixels → GPU kernel → engine input → engine, per series and slice."""
    label = "tensorrt + gpu preprocess"
    raw, _ = synthetic_series(slices)
    rescale = (1.0, -1024.0, (0, 0))
    runner, unavailable = _activated(label, lambda: trt_runner)
    if runner is None:
        bar.update(_slot(repeat, warmup))
        return [unavailable]
    try:
        if not runner.stored_input_dtypes():
            bar.update(_slot(repeat, warmup))
            return [{"stage": "inference", "backend": label, "unavailable": runner.preprocess_problem}]
        batch = min(slices, runner.max_batch_size() or slices)
        series_ms = _timings(lambda: [runner.infer_stored(raw[i:i + batch], (0.5, 0.5), rescale)
                                      for i in range(0, slices, batch)], repeat, warmup, bar)
        one_ms = _timings(lambda: runner.infer_stored(raw[:1], (0.5, 0.5), rescale), repeat, warmup, bar)
    finally:
        runner.deactivate()
    return [_inference_row(label, batch, slices, series_ms, one_ms, 0.0)]  # preprocessing is inside


def model_rows(manifest, backends: tuple[str, ...], slices: int, repeat: int, warmup: int,
               threads: int | None, bar: Progress = _QUIET) -> list[dict]:
    """Every requested backend for one model."""
    from edge_agent.inference.backends import get
    from edge_agent.inference.onnxrt import OnnxRuntimeRunner, available_providers
    from edge_agent.preprocess import prepare_volume

    spec = manifest.preprocessing
    _, hu = synthetic_series(slices)
    model = f"{manifest.name}@{manifest.version}"
    bar.describe(f"{model} preprocessing")
    pre_ms = _stats(_timings(lambda: prepare_volume(hu, (0.5, 0.5), spec), max(3, repeat // 4), 1, bar))["p50_ms"]
    onnx_path = manifest.artefacts["onnx"].path
    rows: list[dict] = []
    if "onnxrt" in backends:
        bar.describe(f"{model} onnxruntime cpu")
        rows += _runner_rows("onnxruntime cpu", lambda: OnnxRuntimeRunner(
            onnx_path, name=manifest.name, threads=threads, providers=["CPUExecutionProvider"]),
            spec, slices, repeat, warmup, pre_ms, bar)
    if "onnxrt-gpu" in backends:
        for provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
            label = f"onnxruntime {provider.replace('ExecutionProvider', '').lower()}"
            if provider not in available_providers():
                rows.append({"stage": "inference", "backend": label,
                             "unavailable": f"this onnxruntime has no {provider}"})
                bar.update(_slot(repeat, warmup))
                continue
            bar.describe(f"{model} {label}")
            rows += _runner_rows(label, lambda p=provider: OnnxRuntimeRunner(
                onnx_path, name=manifest.name, providers=[p, "CPUExecutionProvider"]),
                spec, slices, repeat, warmup, pre_ms, bar)
    if "tensorrt" in backends:
        usable, why = get("tensorrt").is_available()
        if usable and "engine" not in manifest.artefacts:
            usable, why = False, f"model {manifest.name} has no engine; build one with 'edge-agent convert'"
        if not usable:
            rows.append({"stage": "inference", "backend": "tensorrt", "unavailable": why.rstrip(".")})
            bar.update(3 * _slot(repeat, warmup))
        else:
            from edge_agent.inference.trt.runner import TrtRunner

            engine = manifest.artefacts["engine"]
            for mapped in (False, True):
                label = f"tensorrt {'zero-copy' if mapped else 'pinned copy'}"
                bar.describe(f"{model} {label}")
                rows += _runner_rows(label, lambda m=mapped:
                                     TrtRunner(engine.path, name=manifest.name, fingerprint=engine.fingerprint,
                                               mapped=m), spec, slices, repeat, warmup, pre_ms, bar)
            bar.describe(f"{model} tensorrt + gpu preprocess")
            rows += _stored_rows(TrtRunner(engine.path, name=manifest.name, fingerprint=engine.fingerprint,
                                           preprocessing=spec), spec, slices, repeat, warmup, bar)
    for row in rows:
        row["model"] = model
    return rows


def _manifests(models: tuple[str, ...]):
    from edge_agent.engines import ENGINES_DIR
    from edge_agent.inference.manifest import MANIFEST_NAME, load_manifest

    if not models:
        found = sorted(p.parent for p in ENGINES_DIR.glob(f"*/{MANIFEST_NAME}"))
        if not found:
            raise ConfigError(f"No models found in {ENGINES_DIR}; pass --model DIR (a folder with manifest.json).")
        # plug-ins (coronary_calcium) have no network to benchmark
        return [m for m in (load_manifest(p) for p in found) if m.plugin is None]
    out = []
    for m in models:
        path = Path(m)
        if not path.exists() and (ENGINES_DIR / m).is_dir():
            path = ENGINES_DIR / m
        out.append(load_manifest(path))
    return out


def _fit(text: str, width: int, indent: int) -> list[str]:
    """``text`` wrapped to the terminal width (never narrower than 40 columns) with ``indent`` spaces after line 1."""
    return textwrap.wrap(text, width=max(40, width - indent), break_on_hyphens=False) or [""]


def _table(header: list[str], body: list[list[str]], numeric: set[int],
           groups: tuple[tuple[str, int, int], ...] = ()) -> list[str]:
    """Columns as wide as their widest cell (numbers right-aligned); ``groups`` (label, first column, columns)
    title spans of columns on a line above the header. A body row of 3 cells is (col 0, col 1, a note that takes
    the rest of the line, wrapped to the terminal)."""
    n = len(header)
    widths = [max([len(header[i])] + [len(r[i]) for r in body if len(r) == n or i < 2]) for i in range(n)]
    for label, first, span in groups:  # a group label wider than its columns widens them evenly
        extra = max(0, len(label) - (sum(widths[first:first + span]) + 2 * (span - 1)))
        for k in range(span):
            widths[first + k] += extra // span + (k < extra % span)

    def cells(row):
        return "  ".join(c.rjust(widths[i]) if i in numeric else c.ljust(widths[i]) for i, c in enumerate(row))

    lines = []
    if groups:
        top = [" " * w for w in widths]
        line = cells(top)
        for label, first, span in groups:
            at = sum(widths[:first]) + 2 * first
            room = sum(widths[first:first + span]) + 2 * (span - 1)
            line = line[:at] + label.center(room) + line[at + room:]
        lines.append(line.rstrip())
    lines.append(cells(header).rstrip())
    columns = shutil.get_terminal_size((100, 24)).columns
    for row in body:
        if len(row) == n:
            lines.append(cells(row).rstrip())
            continue
        lead = f"{row[0].ljust(widths[0])}  {row[1].ljust(widths[1])}  "
        wrapped = textwrap.wrap(row[2], width=max(40, columns - len(lead)), break_on_hyphens=False) or [""]
        lines.append(lead + wrapped[0])
        lines += [" " * len(lead) + more for more in wrapped[1:]]
    return lines


def table_lines(rows: list[dict], slices: int) -> list[str]:
    """The human-readable report: preprocessing, transfers, then inference per model and backend."""
    out = ["(models trained on synthetic phantoms; figures are machine speed, not accuracy)", ""]
    body = []
    for r in (r for r in rows if r["stage"] in ("preprocess", "transfer")):
        if "unavailable" in r:
            body.append([r["stage"], r["path"], f"unavailable: {r['unavailable']}"])
        elif r["stage"] == "transfer":
            body.append([r["stage"], r["path"], f"pageable {r['pageable_gbps']:.1f} GB/s, pinned "
                                                f"{r['pinned_gbps']:.1f} GB/s"])
        else:
            body.append([r["stage"], r["path"], f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}"])
    if body:
        out.append(f"Preprocessing, per series of {slices} slices of 512×512:")
        out += _table(["stage", "path", "p50", "p99"], body, {2, 3}, (("ms", 2, 2),))
        out.append("")
    body = []
    for r in (r for r in rows if r["stage"] == "inference"):
        if "unavailable" in r:
            body.append([r["model"], r["backend"], f"unavailable: {r['unavailable']}"])
            continue
        body.append([r["model"], r["backend"], str(r["batch"]), f"{r['series_p50_ms']:.2f}",
                     f"{r['series_p99_ms']:.2f}", f"{r['slice_p50_ms']:.2f}", f"{r['slice_p99_ms']:.2f}",
                     f"{r['slices_per_s']:.1f}", f"{r['end_to_end_ms']:.2f}"])
    out += textwrap.wrap(f"Inference: per series = all {slices} slices, in batches of up to 'batch'; per slice = "
                         "one slice alone; end to end = preprocessing + inference of one series.",
                         width=max(40, shutil.get_terminal_size((100, 24)).columns))
    out += _table(["model", "backend", "batch", "p50", "p99", "p50", "p99", "slices/s", "ms/series"], body,
                  set(range(2, 9)), (("per series, ms", 3, 2), ("per slice, ms", 5, 2), ("end to end", 8, 1)))
    return out


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
    with Progress(planned_runs(backends, len(manifests), repeat, warmup), "bench", "run") as bar:
        bar.describe("preprocessing")
        rows = preprocess_rows(manifests[0].preprocessing, slices, repeat, warmup, bar)
        for manifest in manifests:
            rows += model_rows(manifest, backends, slices, repeat, warmup, threads, bar)
    if as_json:
        click.echo(json.dumps({"cpu_count": os.cpu_count(), "slices": slices, "repeat": repeat, "rows": rows},
                              indent=2))
    else:
        for line in table_lines(rows, slices):
            click.echo(line)
    measured = [r for r in rows if r["stage"] == "inference" and "unavailable" not in r]
    if not measured:
        why = next((r["unavailable"] for r in rows if r["stage"] == "inference"), "no model was measured")
        why = why.split(";")[0].split(" (")[0]
        raise MissingDependency(f"None of the requested backends ({', '.join(backends)}) could run on this machine "
                                f"({why}); each row says what is missing — install it or choose another --backend.")
