"""GPU preprocessing: raw stored pixels → model input, in one CUDA kernel.

The CPU reference is :func:`edge_agent.preprocess.prepare_slices`, which
starts from Hounsfield units. This kernel starts one step earlier, from the
*stored* pixel values exactly as they come out of the DICOM file (int16 or
uint16), so the host uploads 2 bytes per pixel instead of 4:

1. Modality LUT (PS3.3 C.11.1.1.2): ``HU = stored * RescaleSlope + RescaleIntercept``,
   floored at air; pixels equal to Pixel Padding Value (or inside Pixel
   Padding Range Limit, PS3.3 C.7.5.1.1.2) and samples outside the image
   become air (-1024 HU) — exactly what ``edge_agent.dicom.to_hu`` does.
2. Bilinear resampling about the image centre to ``pixel_spacing_mm`` and
   centre crop/pad to ``size`` — the source coordinates are computed on the
   host with the reference's own arithmetic and uploaded once per geometry.
3. One output channel per window: ``clip((HU - (c - w/2)) * (1/w), 0, 1)``.
4. Output dtype float32 or float16, layout ``(N, C, rows, cols)``.

:func:`raw_to_input` is a pure-numpy mirror of the kernel's arithmetic, tested
against the reference on every machine; the kernel is tested against both on
a GPU (tests/gpu). Agreement: |kernel − reference| ≤ 1e-4 for float32 output
(fused multiply-adds on the GPU), ≤ 1e-3 for float16 (half-precision rounding).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

import numpy as np

from edge_agent.errors import MissingDependency
from edge_agent.preprocess import AIR_HU, PreprocessSpec

#: Stated tolerances (absolute, on the [0, 1] window outputs), see module docstring.
TOLERANCE = {"float32": 1e-4, "float16": 1e-3}
OUTSIDE = -2  # coordinate index meaning "this output row/column lies outside the image"

KERNEL_SOURCE = r"""
#include <cuda_fp16.h>

__device__ __forceinline__ float hu_at(const RAW_T* __restrict__ img, int h, int w, int r, int c,
                                       float slope, float intercept, int has_pad, int pad_lo, int pad_hi)
{
    if (r < 0 || r >= h || c < 0 || c >= w) return -1024.0f;
    int v = (int)img[r * w + c];
    if (has_pad && v >= pad_lo && v <= pad_hi) return -1024.0f;
    return fmaxf((float)v * slope + intercept, -1024.0f);
}

extern "C" __global__ void raw_to_input(
    const RAW_T* __restrict__ raw, int h, int w,
    const int* __restrict__ r0, const float* __restrict__ rf,
    const int* __restrict__ c0, const float* __restrict__ cf,
    int out_h, int out_w,
    float slope, float intercept, int has_pad, int pad_lo, int pad_hi,
    const float* __restrict__ win_lo, const float* __restrict__ win_inv, int n_win,
    OUT_T* __restrict__ out)
{
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    int n = blockIdx.z;
    if (x >= out_w || y >= out_h) return;
    const RAW_T* img = raw + (size_t)n * h * w;
    float hu = -1024.0f;
    int ri = r0[y], ci = c0[x];
    if (ri != OUTSIDE && ci != OUTSIDE) {
        float fr = rf[y], fc = cf[x];
        float a = hu_at(img, h, w, ri, ci, slope, intercept, has_pad, pad_lo, pad_hi);
        float b = hu_at(img, h, w, ri, ci + 1, slope, intercept, has_pad, pad_lo, pad_hi);
        float c = hu_at(img, h, w, ri + 1, ci, slope, intercept, has_pad, pad_lo, pad_hi);
        float d = hu_at(img, h, w, ri + 1, ci + 1, slope, intercept, has_pad, pad_lo, pad_hi);
        float top = a * (1.0f - fc) + b * fc;
        float bot = c * (1.0f - fc) + d * fc;
        hu = top * (1.0f - fr) + bot * fr;
    }
    size_t plane = (size_t)out_h * out_w;
    size_t base = (size_t)n * n_win * plane + (size_t)y * out_w + x;
    for (int k = 0; k < n_win; ++k) {
        float v = fminf(fmaxf((hu - win_lo[k]) * win_inv[k], 0.0f), 1.0f);
        out[base + k * plane] = STORE(v);
    }
}
"""

_RAW_CTYPES = {np.dtype(np.int16): "short", np.dtype(np.uint16): "unsigned short"}
_OUT_CTYPES = {"float32": ("float", "(v)"), "float16": ("__half", "__float2half_rn(v)")}


@dataclass(frozen=True)
class Geometry:
    """Source coordinates for one (image size, pixel spacing) → output grid, as the kernel reads them."""

    r0: np.ndarray  # int32 (rows,), OUTSIDE where the output row lies outside the image
    rf: np.ndarray  # float32 (rows,)
    c0: np.ndarray  # int32 (cols,)
    cf: np.ndarray  # float32 (cols,)


def _axis(n_in: int, n_out: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    # Same arithmetic as edge_agent.preprocess._resample_indices (float64 coordinates).
    coords = (n_in - 1) / 2.0 + (np.arange(n_out) - (n_out - 1) / 2.0) * scale
    i0 = np.floor(coords).astype(np.int64)
    frac = (coords - i0).astype(np.float32)
    i0 = np.where((coords < -0.5) | (coords > n_in - 0.5), OUTSIDE, i0).astype(np.int32)
    return i0, frac


def geometry(shape: tuple[int, int], pixel_spacing: tuple[float, float], spec: PreprocessSpec) -> Geometry:
    """Coordinates for slices of ``shape`` (rows, cols) with ``pixel_spacing`` (row, col) mm."""
    h, w = int(shape[0]), int(shape[1])
    if spec.pixel_spacing_mm is None:
        scale = (h / spec.size[0], w / spec.size[1])
    else:
        scale = (spec.pixel_spacing_mm / float(pixel_spacing[0]), spec.pixel_spacing_mm / float(pixel_spacing[1]))
    r0, rf = _axis(h, spec.size[0], scale[0])
    c0, cf = _axis(w, spec.size[1], scale[1])
    return Geometry(r0, rf, c0, cf)


def window_constants(spec: PreprocessSpec) -> tuple[np.ndarray, np.ndarray]:
    """(lower bound, 1/width) per window as float32, as the kernel uses them."""
    lo = np.array([c - w / 2.0 for c, w in spec.windows], dtype=np.float32)
    inv = np.array([1.0 / w for _, w in spec.windows], dtype=np.float32)
    return lo, inv


def padding_range(padding_value: int | None, padding_limit: int | None) -> tuple[int, int, int]:
    """(has_pad, lo, hi): stored values in [lo, hi] are padding (PS3.3 C.7.5.1.1.2)."""
    if padding_value is None:
        return 0, 0, 0
    hi = padding_value if padding_limit is None else padding_limit
    return 1, int(min(padding_value, hi)), int(max(padding_value, hi))


def _check_raw(raw: np.ndarray) -> np.ndarray:
    raw = np.asarray(raw)
    if raw.ndim == 2:
        raw = raw[None]
    if raw.ndim != 3 or raw.dtype not in _RAW_CTYPES:
        raise ValueError(f"raw pixels must be int16/uint16 of shape (N, H, W), got {raw.dtype} {raw.shape}")
    return raw


def raw_to_input(raw: np.ndarray, pixel_spacing: tuple[float, float], spec: PreprocessSpec, *,
                 slope: float = 1.0, intercept: float = 0.0, padding_value: int | None = None,
                 padding_limit: int | None = None) -> np.ndarray:
    """Pure-numpy mirror of the kernel: stored pixels ``(N, H, W)`` → ``(N, C, rows, cols)``.

    Same float32 arithmetic, same order of operations as ``raw_to_input`` in
    :data:`KERNEL_SOURCE`; equal to ``prepare_slices(HU, ...)`` within 1e-5.
    """
    raw = _check_raw(raw)
    n, h, w = raw.shape
    geo = geometry((h, w), pixel_spacing, spec)
    has_pad, pad_lo, pad_hi = padding_range(padding_value, padding_limit)
    hu = raw.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    if has_pad:
        hu[(raw >= pad_lo) & (raw <= pad_hi)] = AIR_HU
    np.maximum(hu, np.float32(AIR_HU), out=hu)  # nothing below air (as edge_agent.dicom.to_hu)
    padded = np.pad(hu, ((0, 0), (1, 2), (1, 2)), constant_values=AIR_HU)  # out-of-image samples → air
    r_in = geo.r0 != OUTSIDE
    c_in = geo.c0 != OUTSIDE
    ri = np.where(r_in, geo.r0, 0) + 1
    ci = np.where(c_in, geo.c0, 0) + 1
    fc = geo.cf[None, None, :]
    fr = geo.rf[None, :, None]
    a = padded[:, ri][:, :, ci]
    b = padded[:, ri][:, :, ci + 1]
    c = padded[:, ri + 1][:, :, ci]
    d = padded[:, ri + 1][:, :, ci + 1]
    top = a * (np.float32(1) - fc) + b * fc
    bot = c * (np.float32(1) - fc) + d * fc
    out_hu = top * (np.float32(1) - fr) + bot * fr
    out_hu[:, ~r_in, :] = AIR_HU
    out_hu[:, :, ~c_in] = AIR_HU
    lo, inv = window_constants(spec)
    channels = [np.clip((out_hu - lo[k]) * inv[k], np.float32(0), np.float32(1)) for k in range(len(lo))]
    return np.stack(channels, axis=1).astype(spec.dtype, copy=False)


def kernel_source(raw_dtype, out_dtype: str) -> str:
    """The CUDA C source for one (stored dtype, output dtype): :data:`KERNEL_SOURCE` behind its defines."""
    raw_c = _RAW_CTYPES[np.dtype(raw_dtype)]
    out_c, store = _OUT_CTYPES[out_dtype]
    return (f"#define RAW_T {raw_c}\n#define OUT_T {out_c}\n#define STORE(v) {store}\n"
            f"#define OUTSIDE ({OUTSIDE})\n" + KERNEL_SOURCE)


def compile_kernel(raw_dtype, out_dtype: str):
    """Compile the kernel for one (stored dtype, output dtype); returns pycuda's SourceModule (context current).

    pycuda caches the cubin on disk (keyed by source and device), so only the
    first start on a machine pays nvcc's seconds.
    """
    from pycuda.compiler import SourceModule  # pycuda only under inference/trt

    return SourceModule(kernel_source(raw_dtype, out_dtype), nvcc=find_nvcc(), no_extern_c=True)


#: Where JetPack and the CUDA toolkit put nvcc; a systemd service's PATH does not include it.
NVCC_FALLBACKS = ("/usr/local/cuda/bin/nvcc",)


def find_nvcc() -> str:
    """The CUDA compiler pycuda builds the kernel with (PATH, then the toolkit's default place)."""
    found = shutil.which("nvcc") or next((p for p in NVCC_FALLBACKS if os.access(p, os.X_OK)), None)
    if found is None:
        raise MissingDependency("nvcc is not on PATH or in /usr/local/cuda/bin; install the CUDA toolkit "
                                "(JetPack's cuda-nvcc) to build the GPU preprocessing kernel.")
    return found


class GpuPreprocessor:
    """Host wrapper: pinned staging, device buffers and the kernels for one model input.

    Create, use and :meth:`free` it in the one thread that owns the CUDA
    context (the inference thread, context pushed). The staging buffers hold
    ``max_slices`` slices of ``max_pixels`` stored pixels and grow (once, in
    that thread) when a larger image arrives; the output buffer is only
    allocated when results are downloaded (``out_ptr`` writes straight into
    another device buffer, e.g. the TensorRT input tensor). One kernel per
    stored dtype, compiled on first use or up front with :meth:`prepare`.
    ``mapped=True`` stages stored pixels in mapped pinned memory that the
    kernel reads in place (no upload copy: the Jetson's shared DRAM).
    """

    BLOCK = (32, 8, 1)
    RAW_DTYPES = tuple(_RAW_CTYPES)

    def __init__(self, spec: PreprocessSpec, *, max_slices: int, max_pixels: int = 512 * 512,
                 raw_dtype: np.dtype | None = np.int16, stream=None, mapped: bool = False) -> None:
        from edge_agent.inference.trt import import_cuda

        cuda = self._cuda = import_cuda()
        if spec.dtype not in _OUT_CTYPES:
            raise ValueError(f"GPU preprocessing writes float32 or float16, not {spec.dtype}")
        self.spec = spec
        self.max_slices, self.max_pixels = int(max_slices), int(max_pixels)
        self.mapped = bool(mapped)
        self._pending = False  # work queued on the stream that may still read the staging buffer
        self.channels = len(spec.windows)
        self._kernels: dict[np.dtype, object] = {}
        self._modules: list = []
        self._own_stream = stream is None
        self.stream = stream if stream is not None else cuda.Stream()
        self._allocs = []
        self.host_raw = self.d_raw = None
        self._raw_allocs: list = []
        self._raw_capacity = 0
        self.host_out = self.d_out = None
        rows, cols = spec.size
        self.d_r0, self.d_rf = self._alloc(4 * rows), self._alloc(4 * rows)
        self.d_c0, self.d_cf = self._alloc(4 * cols), self._alloc(4 * cols)
        lo, inv = window_constants(spec)
        self.d_lo, self.d_inv = self._alloc(lo.nbytes), self._alloc(inv.nbytes)
        cuda.memcpy_htod(self.d_lo, lo)
        cuda.memcpy_htod(self.d_inv, inv)
        self._geometry_key = None
        self._ensure_raw(self.max_slices * self.max_pixels * 2)
        if raw_dtype is not None:
            self.kernel(raw_dtype)

    def prepare(self, raw_dtypes=RAW_DTYPES) -> None:
        """Compile the kernels now (nvcc takes seconds the first time; pycuda caches the result)."""
        for dtype in raw_dtypes:
            self.kernel(dtype)

    def kernel(self, raw_dtype):
        """The compiled kernel for stored pixels of ``raw_dtype`` (int16 or uint16)."""
        dtype = np.dtype(raw_dtype)
        if dtype not in _RAW_CTYPES:
            raise ValueError(f"GPU preprocessing reads int16 or uint16 stored pixels, not {dtype}")
        if dtype not in self._kernels:
            module = compile_kernel(dtype, self.spec.dtype)
            self._modules.append(module)
            self._kernels[dtype] = module.get_function("raw_to_input")
        return self._kernels[dtype]

    def _pinned(self, count: int, dtype: np.dtype, owner: list) -> np.ndarray:
        arr = self._cuda.pagelocked_empty(count, dtype)
        owner.append(arr.base)
        return arr

    def _alloc(self, nbytes: int, owner: list | None = None):
        dev = self._cuda.mem_alloc(max(int(nbytes), 1))
        (self._allocs if owner is None else owner).append(dev)
        return dev

    def _ensure_raw(self, nbytes: int) -> None:
        """Staging (pinned) and device buffers of at least ``nbytes`` for stored pixels."""
        if nbytes <= self._raw_capacity:
            return
        self._wait()
        while self._raw_allocs:
            self._raw_allocs.pop().free()
        if self.mapped:
            cuda = self._cuda
            self.host_raw = cuda.pagelocked_empty(nbytes, np.uint8, mem_flags=cuda.host_alloc_flags.DEVICEMAP)
            self._raw_allocs.append(self.host_raw.base)
            self.d_raw = np.uintp(self.host_raw.base.get_device_pointer())
        else:
            self.host_raw = self._pinned(nbytes, np.dtype(np.uint8), self._raw_allocs)
            self.d_raw = self._alloc(nbytes, self._raw_allocs)
        self._raw_capacity = int(nbytes)

    def _wait(self) -> None:
        """Let queued work that reads the staging buffer finish before it is rewritten or freed."""
        if self._pending and self.stream is not None:
            self.stream.synchronize()
        self._pending = False

    def _set_geometry(self, shape: tuple[int, int], pixel_spacing: tuple[float, float]) -> None:
        key = (shape, tuple(float(v) for v in pixel_spacing))
        if key == self._geometry_key:
            return
        geo = geometry(shape, pixel_spacing, self.spec)
        for dev, host in ((self.d_r0, geo.r0), (self.d_rf, geo.rf), (self.d_c0, geo.c0), (self.d_cf, geo.cf)):
            self._cuda.memcpy_htod(dev, np.ascontiguousarray(host))
        self._geometry_key = key

    def run(self, raw: np.ndarray, pixel_spacing: tuple[float, float], *, slope: float = 1.0,
            intercept: float = 0.0, padding_value: int | None = None, padding_limit: int | None = None,
            out_ptr: int | None = None, download: bool = True) -> np.ndarray | None:
        """Upload stored pixels, run the kernel, and return ``(N, C, rows, cols)`` on the host.

        ``out_ptr`` writes into another device buffer instead (e.g. the
        TensorRT input tensor, on the same stream) — then nothing is
        downloaded and None returned.
        """
        raw = _check_raw(raw)
        kernel = self.kernel(raw.dtype)
        n, h, w = raw.shape
        if n > self.max_slices:
            raise ValueError(f"{n} slices exceed the {self.max_slices} this preprocessor was made for")
        self._ensure_raw(raw.nbytes)
        self._wait()
        self._set_geometry((h, w), pixel_spacing)
        staged = self.host_raw[: raw.nbytes].view(raw.dtype)
        staged[:] = raw.reshape(-1)
        cuda = self._cuda
        if not self.mapped:
            cuda.memcpy_htod_async(self.d_raw, staged, self.stream)
        has_pad, pad_lo, pad_hi = padding_range(padding_value, padding_limit)
        rows, cols = self.spec.size
        grid = ((cols + self.BLOCK[0] - 1) // self.BLOCK[0], (rows + self.BLOCK[1] - 1) // self.BLOCK[1], n)
        if out_ptr is None and self.d_out is None:
            count = self.max_slices * self.channels * rows * cols
            self.host_out = self._pinned(count, np.dtype(self.spec.dtype), self._allocs)
            self.d_out = self._alloc(self.host_out.nbytes)
        dest = np.uintp(out_ptr) if out_ptr is not None else self.d_out
        kernel(self.d_raw, np.int32(h), np.int32(w), self.d_r0, self.d_rf, self.d_c0, self.d_cf,
               np.int32(rows), np.int32(cols), np.float32(slope), np.float32(intercept),
               np.int32(has_pad), np.int32(pad_lo), np.int32(pad_hi), self.d_lo, self.d_inv,
               np.int32(self.channels), dest, block=self.BLOCK, grid=grid, stream=self.stream)
        if out_ptr is not None or not download:
            self._pending = True  # the caller synchronizes (the runner does); the next run waits if not
            return None
        count = n * self.channels * rows * cols
        host = self.host_out[:count]
        cuda.memcpy_dtoh_async(host, self.d_out, self.stream)
        self.stream.synchronize()
        return host.reshape(n, self.channels, rows, cols).copy()

    def free(self) -> None:
        """Free buffers, the compiled modules and its own stream now (owning thread, context current)."""
        self._wait()
        for owner in (self._raw_allocs, self._allocs):
            while owner:
                owner.pop().free()
        self._raw_capacity = 0
        self.host_raw = self.d_raw = self.host_out = self.d_out = None
        self._kernels.clear()
        self._modules.clear()
        if self._own_stream:
            self.stream = None
