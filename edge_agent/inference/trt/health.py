"""GPU-side checks for ``edge-agent doctor``: driver, TensorRT, pycuda and a tiny kernel.

Each function returns ``(level, message)`` with level ``OK``/``WARN``/``FAIL``.
A machine without a GPU is a WARN, not a FAIL: the ONNX Runtime CPU path works.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np

from edge_agent.inference.trt import PYCUDA_HINT, TENSORRT_HINT, _try_import, tensorrt_version
from edge_agent.inference.trt.fingerprint import read_l4t_release

NVIDIA_PROC = Path("/proc/driver/nvidia/version")


def gpu_driver() -> tuple[str, str]:
    """NVIDIA kernel driver version (``/proc/driver/nvidia/version``) or the Jetson's L4T release."""
    l4t = read_l4t_release()
    try:
        text = NVIDIA_PROC.read_text(errors="replace")
        match = re.search(r"Kernel Module(?: for [\w-]+)?\s+([\d.]+)", text)
        version = match.group(1) if match else text.splitlines()[0].strip()
        return "OK", f"NVIDIA driver {version}" + (f", L4T {l4t}" if l4t else "")
    except OSError:
        pass
    if l4t:
        return "OK", f"Jetson L4T {l4t}"
    return "WARN", ("no NVIDIA GPU driver found (/proc/driver/nvidia/version missing); inference will use "
                    "ONNX Runtime on the CPU — on a Jetson, install JetPack")


def tensorrt_check() -> tuple[str, str]:
    """TensorRT's version, or what to install."""
    version = tensorrt_version()
    if version is None:
        return "WARN", TENSORRT_HINT.rstrip(".") + "; until then models run on ONNX Runtime"
    major = int(version.split(".")[0]) if version.split(".")[0].isdigit() else 0
    if major and (major, int(version.split(".")[1])) < (8, 5):
        return "FAIL", f"TensorRT {version} is older than 8.5 (no named-tensor API); upgrade JetPack to 5.1 or later"
    return "OK", f"TensorRT {version}"


_SMOKE = """
__global__ void twice(float *x, int n) { int i = blockIdx.x * blockDim.x + threadIdx.x; if (i < n) x[i] *= 2.0f; }
"""


def nvcc_check() -> tuple[str, str]:
    """The CUDA compiler that builds the GPU preprocessing kernel (PATH, then /usr/local/cuda/bin)."""
    from edge_agent.inference.trt.preprocess_kernel import find_nvcc

    try:
        nvcc = find_nvcc()
    except Exception as exc:  # noqa: BLE001 - MissingDependency
        return "WARN", f"{str(exc).rstrip('.')}; until then TensorRT models prepare their input on the CPU"
    try:
        proc = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return "WARN", f"{nvcc} does not run ({exc}); GPU preprocessing will be off"
    match = re.search(r"release ([\d.]+)", proc.stdout)
    if proc.returncode != 0 or not match:
        return "WARN", f"{nvcc} --version failed; GPU preprocessing will be off"
    return "OK", f"nvcc {match.group(1)} at {nvcc} (builds the GPU preprocessing kernel)"


def pycuda_check() -> tuple[str, str]:
    """Import pycuda.driver, retain the primary context, compile and run a tiny kernel, free, pop."""
    cuda, err = _try_import("pycuda.driver")
    if cuda is None:
        return "WARN", PYCUDA_HINT.rstrip(".")
    try:
        cuda.init()
        if cuda.Device.count() == 0:
            return "WARN", "pycuda imports but sees no CUDA device; check the driver (nvidia-smi / tegrastats)"
        device = cuda.Device(0)
        ctx = device.retain_primary_context()
    except Exception as exc:  # noqa: BLE001 - pycuda raises its own error types
        return "FAIL", f"pycuda cannot initialise CUDA ({exc}); check the driver and that this user is in 'video'"
    ctx.push()
    module = fn = None
    try:
        from pycuda.compiler import SourceModule

        from edge_agent.inference.trt.preprocess_kernel import find_nvcc

        module = SourceModule(_SMOKE, nvcc=find_nvcc())
        fn = module.get_function("twice")
        host = np.arange(256, dtype=np.float32)
        dev = cuda.mem_alloc(host.nbytes)
        try:
            cuda.memcpy_htod(dev, host)
            fn(dev, np.int32(host.size), block=(128, 1, 1), grid=(2, 1))
            out = np.empty_like(host)
            cuda.memcpy_dtoh(out, dev)
        finally:
            dev.free()
        if not np.array_equal(out, host * 2):
            return "FAIL", "a test kernel ran but returned wrong numbers; the GPU or driver is unhealthy"
        cc = "{}.{}".format(*device.compute_capability())
        from edge_agent.inference.trt.runner import _integrated

        memory = ("integrated, zero-copy used with inference.zero_copy = auto" if _integrated(cuda, device)
                  else "discrete, pinned copies with inference.zero_copy = auto")
        return "OK", f"pycuda {_pycuda_version()} ran a test kernel on {device.name()} (sm {cc}; {memory})"
    except Exception as exc:  # noqa: BLE001
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return "FAIL", f"pycuda could not compile or run a test kernel ({first}); check that nvcc is on PATH"
    finally:
        del fn, module  # unload the module while the context is still current
        cuda.Context.pop()
        ctx.detach()


def _pycuda_version() -> str:
    module, _ = _try_import("pycuda")
    return str(getattr(module, "VERSION_TEXT", "")) or "?"
