"""What an ONNX model or TensorRT engine is, and whether it fits this machine (``edge-agent inspect``).

ONNX files are read with ``onnx`` and loaded once with ONNX Runtime CPU (the
path that exists everywhere). Engines are described from their fingerprint
(no TensorRT needed) and, when TensorRT and a GPU are present, from the
deserialized engine's I/O tensors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from edge_agent.errors import EdgeAgentError
from edge_agent.inference.trt import why_unavailable
from edge_agent.inference.trt.fingerprint import (
    EngineRefused,
    current_platform,
    fingerprint_path,
    mismatches,
    read_fingerprint,
    sha256_file,
)

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
_ONNX_TYPES = {v: k for k, v in onnx.TensorProto.DataType.items()}
_NP_NAMES = {"FLOAT": "float32", "FLOAT16": "float16", "DOUBLE": "float64", "INT8": "int8", "UINT8": "uint8",
             "INT32": "int32", "INT64": "int64", "BOOL": "bool", "BFLOAT16": "bfloat16"}


def _dims(value_info) -> list:
    out = []
    for d in value_info.type.tensor_type.shape.dim:
        out.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or -1))
    return out


def _tensor(value_info) -> dict:
    elem = _ONNX_TYPES.get(value_info.type.tensor_type.elem_type, "UNDEFINED")
    return {"name": value_info.name, "shape": _dims(value_info), "dtype": _NP_NAMES.get(elem, elem.lower())}


def describe_onnx(path: str | Path) -> dict:
    """I/O tensors, opset, precision and quantisation of an ONNX model, and whether ORT CPU loads it."""
    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf errors are untyped
        raise EdgeAgentError(f"{path} is not a readable ONNX model ({type(exc).__name__}); check the file.") from None
    inits = {i.name for i in model.graph.initializer}
    ops = [n.op_type for n in model.graph.node]
    q, dq = ops.count("QuantizeLinear"), ops.count("DequantizeLinear")
    init_types = {_ONNX_TYPES.get(i.data_type, "?") for i in model.graph.initializer}
    precision = "int8 (Q/DQ)" if q or dq else ("fp16" if "FLOAT16" in init_types else "fp32")
    info = {
        "kind": "onnx", "path": str(path), "sha256": sha256_file(path),
        "opset": {o.domain or "ai.onnx": o.version for o in model.opset_import},
        "nodes": len(ops), "inputs": [_tensor(v) for v in model.graph.input if v.name not in inits],
        "outputs": [_tensor(v) for v in model.graph.output], "precision": precision,
    }
    if q or dq:
        zero_points = []
        arrays = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
        for n in model.graph.node:
            if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2 and n.input[2] in arrays:
                zero_points.append(arrays[n.input[2]])
        symmetric = all(int(np.abs(z).max(initial=0)) == 0 for z in zero_points)
        signed = all(z.dtype == np.int8 for z in zero_points)
        info["quantisation"] = {"quantize_linear": q, "dequantize_linear": dq, "symmetric": symmetric,
                                "signed_int8": signed, "tensorrt_ready": symmetric and signed}
    info["fits"] = _ort_loads(path)
    return info


def _ort_loads(path: Path) -> dict:
    import onnxruntime as ort

    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 4
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return {"ok": False, "why": f"ONNX Runtime CPU cannot load it ({first[:200]})"}
    missing = why_unavailable()
    return {"ok": True, "why": "ONNX Runtime CPU loads it; " +
            ("'edge-agent convert' needs TensorRT and pycuda, which this machine lacks" if missing
             else "'edge-agent convert' can build an engine here")}


def describe_engine(path: str | Path) -> dict:
    """Fingerprint, fit to this machine, and (with TensorRT + GPU) the engine's I/O tensors."""
    path = Path(path)
    info: dict = {"kind": "tensorrt-engine", "path": str(path), "bytes": path.stat().st_size,
                  "fingerprint_file": str(fingerprint_path(path))}
    platform = current_platform()
    info["this_machine"] = {"tensorrt": platform.tensorrt_version, "gpu": platform.device_name,
                            "compute_capability": platform.compute_capability, "l4t": platform.l4t_release}
    try:
        fp = read_fingerprint(path)
    except EngineRefused as exc:
        info["fingerprint"] = None
        info["fits"] = {"ok": False, "why": str(exc)}
        return info
    info["fingerprint"] = fp.to_dict()
    info["precision"] = fp.precision
    problems = mismatches(fp, platform)
    if sha256_file(path) != fp.engine_sha256:
        problems.insert(0, "its bytes differ from the fingerprint (corrupt or replaced)")
    info["fits"] = {"ok": not problems,
                    "why": "built for this TensorRT, GPU and L4T release" if not problems else "; ".join(problems)}
    if not problems and why_unavailable() is None:
        info["tensors"] = _engine_tensors(path)
    return info


def _engine_tensors(path: Path) -> list[dict]:
    """Deserialize in this thread with the primary context pushed, list I/O tensors, release everything."""
    from edge_agent.inference.trt import import_cuda
    from edge_agent.inference.trt.loader import deserialize, io_tensors

    cuda = import_cuda()
    cuda.init()
    ctx = cuda.Device(0).retain_primary_context()
    ctx.push()
    try:
        runtime, engine, _fp = deserialize(path, check_platform=False)
        tensors = [{"name": t.name, "mode": "input" if t.is_input else "output", "dtype": t.dtype,
                    "shape": list(t.shape), "profile": None if t.min_shape is None else
                    {"min": list(t.min_shape), "opt": list(t.opt_shape), "max": list(t.max_shape)}}
                   for t in io_tensors(engine)]
        del engine, runtime
        return tensors
    finally:
        cuda.Context.pop()
        ctx.detach()


def describe(path: str | Path) -> dict:
    """Dispatch on the file: engine suffixes or a fingerprint beside it → engine; otherwise ONNX."""
    path = Path(path)
    if not path.is_file():
        raise EdgeAgentError(f"{path} does not exist or is not a file; give an .onnx model or an .engine file.")
    if path.suffix.lower() in ENGINE_SUFFIXES or fingerprint_path(path).is_file():
        return describe_engine(path)
    return describe_onnx(path)
