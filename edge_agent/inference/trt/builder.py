"""``edge-agent convert``: ONNX → TensorRT engine + fingerprint, for this device.

Follows NVIDIA's ``samples/python/common`` and Polygraphy's
``backend/trt/loader.py``/``config.py``:
``Builder`` → ``create_network(flags)`` (0 on TensorRT ≥ 10, the
EXPLICIT_BATCH bit before) → ``OnnxParser.parse_from_file`` →
``create_builder_config`` with ``set_memory_pool_limit(WORKSPACE)``,
precision flags where they exist (TensorRT 11 removed ``BuilderFlag.FP16/INT8``:
networks are strongly typed there), an optimisation profile per dynamic
input, a timing cache loaded and saved, DLA with GPU fallback →
``build_serialized_network`` (None on failure). INT8 comes only from a Q/DQ
model (``edge-agent calibrate``): implicit calibration is deprecated since
10.1 and gone in 11.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import onnx

from edge_agent.errors import EdgeAgentError
from edge_agent.inference.trt import import_tensorrt, tensorrt_major
from edge_agent.inference.trt.fingerprint import Fingerprint, current_platform, make_fingerprint, write_fingerprint
from edge_agent.inference.trt.loader import get_logger, last_errors

PRECISIONS = ("fp32", "fp16", "int8")


class BuildError(EdgeAgentError):
    """The engine could not be built (bad model, options this device cannot do)."""


@dataclass
class BuildOptions:
    """What ``convert`` asks TensorRT for.

    ``profiles``: input name → (min, opt, max) shapes; dynamic inputs without
    one get ``batch`` ranges (1, ``opt_batch``, ``max_batch``) with the other
    dimensions from ``static_dims`` (e.g. channels and size from the manifest).
    """

    precision: str = "fp16"
    workspace_mib: int = 1024
    dla_core: int | None = None
    timing_cache: Path | None = None
    profiles: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)
    opt_batch: int = 16
    max_batch: int = 32
    static_dims: dict[str, tuple[int, ...]] = field(default_factory=dict)


def qdq_node_count(model: onnx.ModelProto) -> int:
    """Number of QuantizeLinear/DequantizeLinear nodes (explicit quantisation)."""
    return sum(1 for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear"))


def onnx_inputs(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Graph inputs (not initializers) → shape with -1 for symbolic/unknown dims."""
    initializers = {i.name for i in model.graph.initializer}
    out = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        out[value.name] = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in dims)
    return out


def resolve_profiles(inputs: dict[str, tuple[int, ...]], options: BuildOptions) -> dict[str, tuple]:
    """(min, opt, max) for every input with a dynamic dimension; BuildError when one cannot be decided."""
    if not 1 <= options.opt_batch <= options.max_batch:
        raise BuildError(f"--opt-batch ({options.opt_batch}) must be between 1 and --max-batch "
                         f"({options.max_batch}); fix the flags.")
    profiles = {}
    for name, shape in inputs.items():
        if name in options.profiles:
            lo, opt, hi = (tuple(int(d) for d in s) for s in options.profiles[name])
            if not (len(lo) == len(opt) == len(hi) == len(shape)) or any(
                    not (a <= b <= c) for a, b, c in zip(lo, opt, hi)):
                raise BuildError(f"The profile for input {name!r} must have {len(shape)} dimensions each with "
                                 "min <= opt <= max; fix --profile.")
            profiles[name] = (lo, opt, hi)
            continue
        if -1 not in shape:
            continue
        static = options.static_dims.get(name, ())
        lo, opt, hi = [], [], []
        for axis, dim in enumerate(shape):
            if dim != -1:
                value = (dim, dim, dim)
            elif axis == 0:
                value = (1, options.opt_batch, options.max_batch)
            elif axis - 1 < len(static) and static[axis - 1] > 0:
                value = (static[axis - 1],) * 3
            else:
                raise BuildError(f"Input {name!r} has dynamic dimension {axis} and nothing says its size; pass "
                                 f"--profile {name}:MIN:OPT:MAX (shapes like 1x3x128x128).")
            for lst, v in zip((lo, opt, hi), value):
                lst.append(int(v))
        profiles[name] = (tuple(lo), tuple(opt), tuple(hi))
    return profiles


def _heartbeat(progress: Callable[[str], None], stop: threading.Event, started: float) -> None:
    while not stop.wait(15.0):
        progress(f"still building ({time.monotonic() - started:.0f} s; first builds on a Jetson take minutes)")


def _configure_precision(trt, builder, config, options: BuildOptions, has_qdq: bool) -> None:
    flags = trt.BuilderFlag
    if options.precision == "int8" and not has_qdq:
        raise BuildError("INT8 needs a Q/DQ model; run 'edge-agent calibrate MODEL.onnx --data DIR --output "
                         "MODEL.int8.onnx' first and convert that file.")
    if options.precision == "fp16" and not hasattr(flags, "FP16"):
        raise BuildError(f"TensorRT {trt.__version__} builds strongly typed networks: the precision comes from the "
                         "ONNX model, so --precision fp16 cannot be applied here; export the model in FP16, or "
                         "convert with --precision fp32 (or int8 from a Q/DQ model).")
    if options.precision in ("fp16", "int8") and hasattr(flags, "FP16"):
        if not getattr(builder, "platform_has_fast_fp16", True):
            raise BuildError("This GPU has no fast FP16; convert with --precision fp32.")
        config.set_flag(flags.FP16)
    if options.precision == "int8" and hasattr(flags, "INT8"):
        config.set_flag(flags.INT8)  # weakly typed 8.x/10.x networks: lets the Q/DQ layers run in INT8
    if options.dla_core is not None:
        if not hasattr(trt, "DeviceType") or not hasattr(trt.DeviceType, "DLA"):
            raise BuildError(f"TensorRT {trt.__version__} has no DLA support; convert without --dla-core.")
        cores = int(getattr(builder, "num_DLA_cores", 0))
        if cores == 0:
            raise BuildError("This device has no DLA cores (Orin Nano has none); convert without --dla-core.")
        if not 0 <= options.dla_core < cores:
            raise BuildError(f"--dla-core must be between 0 and {cores - 1} on this device.")
        if options.precision == "fp32":
            raise BuildError("The DLA runs FP16 or INT8 only; convert with --precision fp16 or int8.")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(options.dla_core)
        config.set_flag(flags.GPU_FALLBACK)


def _network(trt, builder, onnx_path: Path):
    flags = 0 if tensorrt_major() >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, get_logger())
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)).strip() for i in range(parser.num_errors)) or last_errors()
        raise BuildError(f"TensorRT's ONNX parser rejected {onnx_path.name} ({errors}); export the model with "
                         "supported ops (for INT8: symmetric, signed Q/DQ from 'edge-agent calibrate').")
    return network, parser


def build_engine(onnx_path: str | Path, output: str | Path, options: BuildOptions,
                 progress: Callable[[str], None] = lambda _m: None) -> Fingerprint:
    """Build ``output`` (engine) and ``output.json`` (fingerprint) from ``onnx_path``.

    Raises :class:`~edge_agent.errors.MissingDependency` without TensorRT and
    :class:`BuildError` with a sentence for anything this device cannot do.
    """
    trt = import_tensorrt()
    onnx_path, output = Path(onnx_path), Path(output)
    if options.precision not in PRECISIONS:
        raise BuildError(f"--precision must be one of {', '.join(PRECISIONS)}.")
    model = onnx.load(str(onnx_path), load_external_data=False)
    profiles = resolve_profiles(onnx_inputs(model), options)
    platform = current_platform()
    progress(f"TensorRT {trt.__version__} on {platform.device_name or 'unknown GPU'}: parsing {onnx_path.name}")
    builder = trt.Builder(get_logger())
    network, _parser = _network(trt, builder, onnx_path)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_mib) << 20)
    _configure_precision(trt, builder, config, options, qdq_node_count(model) > 0)
    if profiles:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in profiles.items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
    cache = None
    if options.timing_cache is not None:
        blob = options.timing_cache.read_bytes() if options.timing_cache.is_file() else b""
        cache = config.create_timing_cache(blob)
        config.set_timing_cache(cache, ignore_mismatch=False)
        progress(f"timing cache {options.timing_cache} ({'reused' if blob else 'new'})")
    progress(f"building {options.precision} engine (workspace {options.workspace_mib} MiB"
             f"{'' if options.dla_core is None else f', DLA core {options.dla_core}'})")
    stop, started = threading.Event(), time.monotonic()
    beat = threading.Thread(target=_heartbeat, args=(progress, stop, started), name="trt-build-progress",
                            daemon=True)
    beat.start()
    try:
        serialized = builder.build_serialized_network(network, config)
    finally:
        stop.set()
        beat.join()
    if serialized is None:
        raise BuildError(f"TensorRT could not build the engine ({last_errors()}); try a larger --workspace or "
                         "--precision fp32, and run with -vv for TensorRT's log.")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(memoryview(serialized))
    os.replace(tmp, output)
    if cache is not None:
        options.timing_cache.write_bytes(memoryview(cache.serialize()))
    fp = make_fingerprint(onnx_path, output, platform, precision=options.precision, dla_core=options.dla_core,
                          profiles={k: {"min": v[0], "opt": v[1], "max": v[2]} for k, v in profiles.items()},
                          workspace_mib=options.workspace_mib)
    write_fingerprint(fp, output)
    progress(f"built {output} in {time.monotonic() - started:.0f} s")
    return fp
