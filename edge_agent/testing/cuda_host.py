"""Run CUDA C kernel *source* on the CPU — an emulation, for machines without a GPU.

The kernel text (the very string the product hands to nvcc through pycuda) is
compiled as C++ with g++ behind a small shim: ``__global__``/``__device__``
vanish, ``blockIdx``/``threadIdx``/``blockDim``/``gridDim`` are globals that
the launcher sets while it walks the grid one thread at a time, and
``cuda_fp16.h``'s ``__half``/``__float2half_rn`` map to the host's IEEE
binary16 (``_Float16``, round to nearest even). Kernels that use shared
memory, barriers, warp intrinsics or atomics are out of scope (they fail to
compile here, loudly).

What this shows: the kernel's indexing, bounds checks and arithmetic are right
(FMA contraction aside: g++ is told not to fuse, nvcc fuses by default, hence
the stated tolerances). What it does not show: that nvcc accepts the source
(tests/trt/test_kernel_nvcc.py compiles it with the real nvcc) or that it runs
on a GPU (tests/gpu).

Arguments follow pycuda's calling convention: ``numpy.int32``/``numpy.float32``
scalars by value, numpy arrays (host memory standing in for device memory) or
addresses (``int``/``numpy.uintp``) for pointers; ``block=`` and ``grid=``.
"""

from __future__ import annotations

import ctypes
import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

SHIM = r"""
#include <math.h>
#include <stddef.h>
#include <utility>
#include <type_traits>
struct edge_dim3 { unsigned x, y, z; };
static edge_dim3 blockIdx, threadIdx, blockDim, gridDim;
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
"""

FP16_SHIM = r"""
#pragma once
typedef _Float16 __half;
static inline __half __float2half_rn(float v) { return (__half)v; }
static inline float __half2float(__half v) { return (float)v; }
"""

LAUNCHER = r"""
template <typename... A, size_t... I>
static void edge_call(void (*k)(A...), void** p, std::index_sequence<I...>) {
    k(*static_cast<std::remove_reference_t<A>*>(p[I])...);
}
template <typename... A>
static void edge_launch(void (*k)(A...), const unsigned* g, const unsigned* b, void** p) {
    gridDim = {g[0], g[1], g[2]};
    blockDim = {b[0], b[1], b[2]};
    for (unsigned bz = 0; bz < g[2]; ++bz) for (unsigned by = 0; by < g[1]; ++by) for (unsigned bx = 0; bx < g[0]; ++bx)
    for (unsigned tz = 0; tz < b[2]; ++tz) for (unsigned ty = 0; ty < b[1]; ++ty) for (unsigned tx = 0; tx < b[0]; ++tx) {
        blockIdx = {bx, by, bz};
        threadIdx = {tx, ty, tz};
        edge_call(k, p, std::index_sequence_for<A...>{});
    }
}
"""

_CACHE = Path(tempfile.gettempdir()) / "edge-agent-cuda-host"


def compiler() -> str | None:
    """The C++ compiler used, or None when there is none."""
    return shutil.which("g++")


class HostKernel:
    """One ``__global__`` function of compiled source; call it like a pycuda function."""

    def __init__(self, library: ctypes.CDLL, name: str, resolve=None) -> None:
        self._launch = getattr(library, f"edge_launch_{name}")
        self._launch.restype = None
        self._resolve = resolve
        self._keep: list = []

    def _pointer(self, value) -> ctypes.c_void_p:
        if isinstance(value, np.ndarray):
            if not value.flags.c_contiguous:
                raise ValueError("kernel arguments must be C-contiguous arrays")
            return ctypes.c_void_p(value.ctypes.data)
        if self._resolve is not None:
            return ctypes.c_void_p(self._resolve(value))
        return ctypes.c_void_p(int(value))

    def __call__(self, *args, block=(1, 1, 1), grid=(1, 1, 1), stream=None) -> None:
        values = []
        for a in args:
            if isinstance(a, np.int32):
                values.append(ctypes.c_int32(int(a)))
            elif isinstance(a, np.uint32):
                values.append(ctypes.c_uint32(int(a)))
            elif isinstance(a, np.float32):
                values.append(ctypes.c_float(float(a)))
            elif isinstance(a, (float, np.float64)):
                raise TypeError("pass numpy.float32 for float parameters (as pycuda needs)")
            else:
                values.append(self._pointer(a))
        params = (ctypes.c_void_p * len(values))(*[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in values])
        g = (ctypes.c_uint * 3)(*(tuple(grid) + (1, 1))[:3])
        b = (ctypes.c_uint * 3)(*(tuple(block) + (1, 1))[:3])
        self._launch(g, b, params)


class HostModule:
    """Kernel source compiled for the CPU; :meth:`get_function` like pycuda's ``SourceModule``.

    ``resolve``: maps a non-array pointer argument (e.g. a fake device address)
    to a real host address.
    """

    def __init__(self, source: str, kernels: list[str], *, resolve=None) -> None:
        cxx = compiler()
        if cxx is None:
            raise RuntimeError("g++ is needed to run CUDA kernel source on the CPU")
        text = SHIM + source + LAUNCHER + "".join(
            f'extern "C" void edge_launch_{k}(const unsigned* g, const unsigned* b, void** p) '
            f"{{ edge_launch({k}, g, b, p); }}\n" for k in kernels)
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        _CACHE.mkdir(parents=True, exist_ok=True)
        (_CACHE / "cuda_fp16.h").write_text(FP16_SHIM)
        lib = _CACHE / f"kernel-{digest}.so"
        if not lib.exists():
            src = _CACHE / f"kernel-{digest}.cpp"
            src.write_text(text)
            tmp = lib.with_suffix(".tmp.so")
            subprocess.run([cxx, "-std=c++17", "-O2", "-ffp-contract=off", "-shared", "-fPIC",
                            "-I", str(_CACHE), "-o", str(tmp), str(src)], check=True, capture_output=True, text=True)
            tmp.replace(lib)
        self._library = ctypes.CDLL(str(lib))
        self._resolve = resolve
        self.kernels = list(kernels)

    def get_function(self, name: str) -> HostKernel:
        if name not in self.kernels:
            raise KeyError(name)
        return HostKernel(self._library, name, self._resolve)
