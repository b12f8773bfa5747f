"""Small TensorRT steps shared by the runner and ``convert`` (Polygraphy's ``loader.py`` habit).

Named-tensor API only (TensorRT ≥ 8.5, unchanged through 10.x): tensors are
discovered with ``num_io_tensors`` / ``get_tensor_name`` / ``get_tensor_mode``
/ ``get_tensor_dtype`` / ``get_tensor_shape`` and, for dynamic dimensions,
``get_tensor_profile_shape(name, 0)`` (min, opt, max). See the TensorRT
Python API reference, ``ICudaEngine``.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from edge_agent.inference.trt import import_tensorrt
from edge_agent.inference.trt.fingerprint import EngineRefused, Fingerprint, current_platform, verify_engine

log = logging.getLogger("edge_agent.trt")

# TensorRT DataType names → numpy dtype names.
DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8", "UINT8": "uint8",
          "INT32": "int32", "INT64": "int64", "BOOL": "bool", "FP8": "float8"}


@dataclass(frozen=True)
class IOTensor:
    """One engine I/O tensor: shape with -1 for dynamic dims, and its profile-0 range for inputs."""

    name: str
    is_input: bool
    dtype: str
    shape: tuple[int, ...]
    min_shape: tuple[int, ...] | None = None
    opt_shape: tuple[int, ...] | None = None
    max_shape: tuple[int, ...] | None = None


_logger_lock = threading.Lock()
_logger = None


def get_logger():
    """The process's one TensorRT logger (builder and runtime should share it); keeps recent messages."""
    global _logger
    trt = import_tensorrt()
    with _logger_lock:
        if _logger is None:
            class _Logger(trt.ILogger):
                def __init__(self):
                    trt.ILogger.__init__(self)
                    self.messages: list[str] = []

                def log(self, severity, msg):  # called by TensorRT, from any thread
                    name = getattr(severity, "name", str(severity))
                    if name in ("INTERNAL_ERROR", "ERROR"):
                        log.error("TensorRT: %s", msg)
                        self.messages.append(str(msg))
                        del self.messages[:-20]
                    elif name == "WARNING":
                        log.warning("TensorRT: %s", msg)
                    else:
                        log.debug("TensorRT: %s", msg)

            _logger = _Logger()
        return _logger


def last_errors(default: str = "no message from TensorRT") -> str:
    """The most recent TensorRT error messages, joined for one sentence."""
    messages = getattr(_logger, "messages", None) or [default]
    return " / ".join(m.strip().rstrip(".") for m in messages[-3:])


def dtype_name(trt_dtype) -> str:
    """numpy dtype name of a ``trt.DataType``."""
    name = getattr(trt_dtype, "name", str(trt_dtype).rsplit(".", 1)[-1])
    return DTYPES.get(name, name.lower())


def io_tensors(engine) -> list[IOTensor]:
    """Discover the engine's I/O tensors (named-tensor API); inputs first, in engine order."""
    trt = import_tensorrt()
    tensors = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        shape = tuple(int(d) for d in engine.get_tensor_shape(name))
        lo = opt = hi = None
        if is_input:
            if -1 in shape:
                lo, opt, hi = (tuple(int(d) for d in s) for s in engine.get_tensor_profile_shape(name, 0))
            else:
                lo = opt = hi = shape
        tensors.append(IOTensor(name, is_input, dtype_name(engine.get_tensor_dtype(name)), shape, lo, opt, hi))
    return sorted(tensors, key=lambda t: not t.is_input)


def deserialize(engine_path: str | Path, *, onnx_sha256: str | None = None, check_platform: bool = True,
                fingerprint_file: str | Path | None = None):
    """Verify the engine's fingerprint against this machine, then deserialize it.

    Must run with the CUDA context current. Returns ``(runtime, engine,
    fingerprint)``; the runtime must outlive the engine. Raises
    :class:`EngineRefused` for a mismatched/corrupt engine and when TensorRT
    cannot deserialize it (``deserialize_cuda_engine`` returns None).
    """
    trt = import_tensorrt()
    engine_path = Path(engine_path)
    fp: Fingerprint | None = None
    if check_platform:
        fp = verify_engine(engine_path, current_platform(), onnx_sha256, fingerprint_file)
    runtime = trt.Runtime(get_logger())
    engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
    if engine is None:
        raise EngineRefused(f"TensorRT {trt.__version__} could not load engine {engine_path.name} "
                            f"({last_errors()}); run 'edge-agent convert MODEL.onnx --output {engine_path}' "
                            "on this machine to rebuild it.")
    return runtime, engine, fp
