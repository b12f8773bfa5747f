"""``edge-agent convert | calibrate | inspect``: turn an ONNX model into what this device runs.

Thin commands: parse, call :mod:`edge_agent.inference.trt` /
:mod:`edge_agent.inference.quantize`, print. How-to: docs/TENSORRT.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from edge_agent.errors import ConfigError, EdgeAgentError, MissingDependency
from edge_agent.progress import echo


def _manifest_for(onnx_path: Path, manifest: Path | None, *, required: bool):
    """The manifest given, else ``manifest.json`` beside the model (None if absent and not required)."""
    from edge_agent.inference.manifest import MANIFEST_NAME, load_manifest

    candidate = manifest or onnx_path.parent / MANIFEST_NAME
    if manifest is None and not candidate.is_file():
        if required:
            raise ConfigError(f"No manifest.json beside {onnx_path.name}; pass --manifest PATH so the "
                              "preprocessing and decision rule are known.")
        return None
    return load_manifest(candidate, verify=False)


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"Shape {text!r} is not like 1x3x128x128; fix --profile.") from None


def _parse_profiles(values: tuple[str, ...]) -> dict:
    profiles = {}
    for value in values:
        parts = value.rsplit(":", 3)
        if len(parts) != 4:
            raise ConfigError(f"--profile {value!r} must be NAME:MIN:OPT:MAX, e.g. input:1x3x128x128:16x3x128x128:"
                              "32x3x128x128.")
        profiles[parts[0]] = tuple(_parse_shape(p) for p in parts[1:])
    return profiles


@click.command("convert")
@click.argument("model", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--output", "-o", type=click.Path(path_type=Path, dir_okay=False),
              help="Engine file to write (default: MODEL with .engine; the fingerprint goes to OUTPUT.json).")
@click.option("--manifest", type=click.Path(path_type=Path, dir_okay=False),
              help="Model manifest (default: manifest.json beside MODEL); gives profiles and records the engine.")
@click.option("--precision", type=click.Choice(["fp16", "fp32", "int8"]), default="fp16", show_default=True,
              help="int8 needs a Q/DQ model from 'edge-agent calibrate'.")
@click.option("--workspace", "workspace_mib", type=click.IntRange(16), default=1024, show_default=True,
              help="Builder workspace limit in MiB.")
@click.option("--dla-core", type=click.IntRange(0), default=None, help="Build for this DLA core, GPU fallback on.")
@click.option("--timing-cache", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Timing cache file, reused and updated (default: timing.cache beside the output).")
@click.option("--profile", "profiles", multiple=True, metavar="NAME:MIN:OPT:MAX",
              help="Optimisation profile for a dynamic input (shapes like 1x3x128x128).")
@click.option("--opt-batch", type=click.IntRange(1), default=16, show_default=True)
@click.option("--max-batch", type=click.IntRange(1), default=32, show_default=True)
def convert(model: Path, output: Path | None, manifest: Path | None, precision: str, workspace_mib: int,
            dla_core: int | None, timing_cache: Path | None, profiles: tuple[str, ...], opt_batch: int,
            max_batch: int) -> None:
    """Build a TensorRT engine for THIS device from MODEL.onnx (plus its fingerprint)."""
    from edge_agent.inference.backends import get

    usable, why = get("tensorrt").is_available()
    if not usable:  # checked first: without TensorRT nothing else matters
        raise MissingDependency(why)
    if not model.is_file():
        raise ConfigError(f"ONNX model {model} does not exist; give the path of an .onnx file.")
    from edge_agent.inference.trt.builder import BuildOptions, build_engine

    output = output or model.with_suffix(".engine")
    m = _manifest_for(model, manifest, required=False)
    static = {}
    if m is not None:
        static = {t.name: tuple(t.shape[1:]) for t in m.inputs}
    options = BuildOptions(precision=precision, workspace_mib=workspace_mib, dla_core=dla_core,
                           timing_cache=timing_cache or output.parent / "timing.cache",
                           profiles=_parse_profiles(profiles), opt_batch=opt_batch, max_batch=max_batch,
                           static_dims=static)
    fp = build_engine(model, output, options, progress=lambda msg: click.echo(f"convert: {msg}", err=True))
    click.echo(f"engine {output} ({fp.precision}, TensorRT {fp.tensorrt_version}, {fp.device_name})")
    if m is not None:
        from edge_agent.inference.manifest import add_artefact
        from edge_agent.inference.trt.fingerprint import fingerprint_path

        try:
            add_artefact(m.path, "engine", output, fingerprint_path(output))
            click.echo(f"recorded the engine in {m.path}")
        except EdgeAgentError as exc:
            click.echo(f"note: the manifest was not updated: {exc}", err=True)


def _read(dirs: tuple[Path, ...], spec, labels: dict | None):
    try:
        from edge_agent.dicom import read_series
    except ImportError:
        raise MissingDependency("This build has no DICOM series reader (edge_agent.dicom.read_series); "
                                "update edge-agent.") from None
    from edge_agent.inference.quantize import prepare_series

    series = read_series([str(d) for d in dirs])
    return prepare_series(series, spec, labels)


@click.command("calibrate")
@click.argument("model", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--data", "data", multiple=True, required=True, type=click.Path(path_type=Path, exists=True),
              help="Folder of DICOM series for calibration (repeatable).")
@click.option("--output", "-o", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="The Q/DQ INT8 ONNX file to write.")
@click.option("--manifest", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="Model manifest (default: manifest.json beside MODEL).")
@click.option("--validation", multiple=True, type=click.Path(path_type=Path, exists=True),
              help="Folder(s) of validation series (default: the calibration data).")
@click.option("--labels", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="JSON {SeriesInstanceUID: true|false} for the validation series (AUC against truth).")
@click.option("--tolerance", type=click.FloatRange(0.0, 1.0), default=0.02, show_default=True,
              help="Largest loss allowed (slice probability, decision agreement, AUC) before refusing.")
@click.option("--method", type=click.Choice(["minmax", "entropy", "percentile"]), default="minmax",
              show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
def calibrate(model: Path, data: tuple[Path, ...], output: Path, manifest: Path | None,
              validation: tuple[Path, ...], labels: Path | None, tolerance: float, method: str,
              as_json: bool) -> None:
    """INT8-quantise MODEL.onnx (symmetric Q/DQ for TensorRT) with real DICOM series; refuse a lossy result."""
    from edge_agent.inference.quantize import CalibrationError
    from edge_agent.inference.quantize import calibrate as run_calibration

    m = _manifest_for(model, manifest, required=True)
    truth = None
    if labels is not None:
        try:
            truth = {str(k): bool(v) for k, v in json.loads(labels.read_text()).items()}
        except (ValueError, AttributeError) as exc:
            raise ConfigError(f"--labels {labels} must be a JSON object of SeriesInstanceUID → true/false "
                              f"({exc}).") from None
    bar = _StageBar()
    try:
        bar("reading DICOM series", 0, None)
        calib = _read(data, m.preprocessing, None)
        valid = _read(validation, m.preprocessing, truth) if validation else \
            [type(s)(s.series_instance_uid, s.inputs, (truth or {}).get(s.series_instance_uid)) for s in calib]
        bar.close()
        echo(f"calibrate: {len(calib)} calibration series ({sum(s.inputs.shape[0] for s in calib)} slices), "
             f"{len(valid)} validation series", err=True)
        result = run_calibration(model, output, calib, valid, m.decision, tolerance=tolerance, method=method,
                                 progress=bar)
    except CalibrationError as exc:
        bar.close()
        if exc.comparison is not None:
            _print_comparison(exc.comparison, as_json)    # show what was lost before the refusal
        raise
    finally:
        bar.close()
    _print_comparison(result, as_json)
    click.echo(f"wrote {output} (INT8 Q/DQ, symmetric, signed; convert it with --precision int8)")


class _StageBar:
    """A progress bar per calibration stage on a terminal (``progress(stage, done, total)``); nothing elsewhere."""

    def __init__(self) -> None:
        self._stage: str | None = None
        self._bar = None
        self._done = 0

    def __call__(self, stage: str, done: int, total: int | None) -> None:
        from edge_agent.progress import progress

        if stage != self._stage:
            self.close()
            self._stage, self._done = stage, 0
            self._bar = progress(total, f"calibrate: {stage}", "batch" if stage == "calibrating" else "series")
        if done > self._done:
            self._bar.update(done - self._done)
            self._done = done

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._bar, self._stage = None, None


def _print_comparison(result, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    auc = ("n/a" if result.auc_fp32 is None else f"{result.auc_fp32:.3f} → {result.auc_int8:.3f} "
           f"(vs {result.auc_reference})")
    click.echo(f"slices {result.slices}: mean |Δp| {result.slice_mean_abs_diff:.4f}, max {result.slice_max_abs_diff:.4f}, "
               f"agreement {result.slice_agreement:.1%}")
    click.echo(f"series {result.series}: decisions agree {result.series_agreement:.1%}, "
               f"max |Δp| {result.series_max_abs_diff:.4f}, AUC {auc}")
    for row in result.per_series:
        click.echo(f"  {row['series_instance_uid']}: fp32 {row['fp32_probability']:.3f} "
                   f"({'+' if row['fp32_positive'] else '-'})  int8 {row['int8_probability']:.3f} "
                   f"({'+' if row['int8_positive'] else '-'})")


def _engine_is_known(file: Path, info: dict) -> None:
    """Refuse an "engine" nothing vouches for: without a matching fingerprint only TensorRT can say what it is.

    A fingerprint whose sha256 matches says what the engine is (TensorRT or not). Without one, TensorRT is
    asked to deserialize the bytes; where TensorRT is missing the file cannot be inspected at all.
    """
    from edge_agent.inference.backends import get
    from edge_agent.inference.trt.fingerprint import EngineRefused, sha256_file

    if info.get("fingerprint") is not None:
        if sha256_file(file) != info["fingerprint"]["engine_sha256"]:
            raise EngineRefused(f"{file} is not the engine its fingerprint {Path(info['fingerprint_file']).name} "
                                "describes (its sha256 differs: corrupt or replaced); rebuild it with "
                                f"'edge-agent convert MODEL.onnx --output {file}'.")
        return
    fingerprint = Path(info["fingerprint_file"])
    what = (f"its fingerprint {fingerprint.name} is unreadable" if fingerprint.exists()
            else f"no fingerprint {fingerprint.name} beside it says what it is")
    rebuild = f"rebuild it with 'edge-agent convert MODEL.onnx --output {file}'"
    if not get("tensorrt").is_available()[0]:
        raise EngineRefused(f"{file} cannot be inspected: {what}, and TensorRT is not installed here to read the "
                            f"file itself; inspect it where TensorRT is installed, or {rebuild}.")
    from edge_agent.errors import EdgeAgentError
    from edge_agent.inference.trt.describe import _engine_tensors

    try:
        info["tensors"] = _engine_tensors(file)
    except EdgeAgentError as exc:
        raise EngineRefused(f"{file} is not a TensorRT engine this machine can read ({what}): {exc}") from None
    except Exception as exc:  # noqa: BLE001 - pycuda / TensorRT raise untyped errors for foreign bytes
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise EngineRefused(f"{file} is not a TensorRT engine this machine can read ({what}; TensorRT or CUDA "
                            f"said: {detail}); {rebuild}.") from None


@click.command("inspect")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the description as JSON.")
def inspect_cmd(file: Path, as_json: bool) -> None:
    """Describe an ONNX model or TensorRT engine, and whether it fits this machine."""
    from edge_agent.inference.trt.describe import describe

    info = describe(file)
    if info["kind"] == "tensorrt-engine":
        _engine_is_known(file, info)
    info["provenance"] = _provenance(file, info)
    if as_json:
        click.echo(json.dumps(info, indent=2, default=str))
        return
    click.echo(f"{info['kind']}: {info['path']}")
    for key in ("sha256", "bytes", "opset", "nodes", "precision"):
        if key in info:
            click.echo(f"  {key}: {info[key]}")
    if "quantisation" in info:
        q = info["quantisation"]
        click.echo(f"  quantisation: {q['quantize_linear']} Q / {q['dequantize_linear']} DQ, "
                   f"symmetric={q['symmetric']}, signed int8={q['signed_int8']}, "
                   f"TensorRT-ready={q['tensorrt_ready']}")
    for label in ("inputs", "outputs", "tensors"):
        for t in info.get(label, []):
            click.echo(f"  {t.get('mode', label[:-1])} {t['name']}: {t['dtype']} {t['shape']}"
                       + (f" profile {t['profile']}" if t.get("profile") else ""))
    fp = info.get("fingerprint")
    if fp:
        click.echo(f"  built with: TensorRT {fp['tensorrt_version']} on {fp['device_name']} "
                   f"(sm {fp['compute_capability']}, L4T {fp['l4t_release'] or 'none'}), {fp['precision']}, "
                   f"DLA {fp['dla_core'] if fp['dla_core'] is not None else 'no'}, profiles {fp['profiles']}, "
                   f"ONNX sha256 {fp['onnx_sha256'][:12]}…")
    fits = info["fits"]
    click.echo(f"  fits this machine: {'yes' if fits['ok'] else 'no'} — {fits['why']}")
    p = info["provenance"]
    model = f"{p['name']} {p['version']}" if p["name"] else "none (no manifest.json beside it lists this file)"
    click.echo(f"  provenance (as alerts and results name it): model {model}, sha256 {p['sha256'] or 'unknown'}, "
               f"backend {p['backend']}, precision {p['precision'] or 'unknown'}, engine fingerprint "
               f"{p['engine_fingerprint'] or 'none'}, edge-agent {p['agent_version']}")


def _provenance(file: Path, info: dict) -> dict:
    """The file's provenance fields (edge_agent.results.algorithm.file_provenance) from what describe found."""
    from edge_agent.inference.trt.fingerprint import sha256_file
    from edge_agent.results.algorithm import file_provenance

    engine = info["kind"] == "tensorrt-engine"
    fp = info.get("fingerprint")
    sha = (fp["engine_sha256"] if fp else sha256_file(file)) if engine else info.get("sha256") or sha256_file(file)
    return file_provenance(file, engine=engine, sha256=sha,
                           fingerprint_file=info.get("fingerprint_file") if fp else None)
