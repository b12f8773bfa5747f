"""GPU measurements for ``bench`` and scripts/gpu_check.sh (pycuda; no TensorRT needed).

- :func:`h2d_bandwidth`: host→device copy bandwidth from pageable numpy
  memory vs page-locked memory (async copy on a stream);
- :func:`gpu_preprocess_ms`: the raw→input kernel per series, upload and
  download included, and kernel-only time measured with CUDA events;
- :func:`torch_preprocess_ms`: the same transform written in PyTorch on the
  same GPU (float HU upload, ``grid_sample``), as the comparison point.

Every function pushes the device's primary context, does its work, frees its
buffers and pops, all in the calling thread. ``python -m
edge_agent.inference.trt.measure`` prints all of them as JSON.
"""

from __future__ import annotations

import json
import time

import numpy as np

from edge_agent.inference.trt import _try_import, why_unavailable
from edge_agent.preprocess import PreprocessSpec


class _Primary:
    """``with _Primary(cuda) as device:`` — retain, push; on exit pop and release (same thread)."""

    def __init__(self, cuda, ordinal: int = 0):
        self.cuda, self.ordinal = cuda, ordinal

    def __enter__(self):
        self.cuda.init()
        self.device = self.cuda.Device(self.ordinal)
        self.ctx = self.device.retain_primary_context()
        self.ctx.push()
        return self.device

    def __exit__(self, *exc):
        self.cuda.Context.pop()
        self.ctx.detach()


def _pct(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"p50_ms": round(float(np.percentile(a, 50)), 4), "p99_ms": round(float(np.percentile(a, 99)), 4)}


def h2d_bandwidth(nbytes: int = 64 << 20, repeat: int = 10) -> dict:
    """GB/s host→device from pageable and from pinned memory, plus mapped-pointer availability."""
    cuda, _ = _try_import("pycuda.driver")
    if cuda is None:
        return {"why": "pycuda is not installed"}
    with _Primary(cuda) as device:
        pageable = np.ones(nbytes // 4, np.float32)
        pinned = cuda.pagelocked_empty(nbytes // 4, np.float32)
        pinned[:] = 1.0
        dev = cuda.mem_alloc(nbytes)
        stream = cuda.Stream()
        try:
            def run(copy):
                copy()
                stream.synchronize()
                times = []
                for _ in range(repeat):
                    t0 = time.perf_counter()
                    copy()
                    stream.synchronize()
                    times.append(time.perf_counter() - t0)
                return round(nbytes / float(np.median(times)) / 1e9, 2)

            result = {"device": device.name(), "bytes": nbytes,
                      "pageable_gbps": run(lambda: cuda.memcpy_htod(dev, pageable)),
                      "pinned_gbps": run(lambda: cuda.memcpy_htod_async(dev, pinned, stream))}
        finally:
            dev.free()
            pinned.base.free()
            stream = None  # destroyed now, while the context is current
    return result


def gpu_preprocess_ms(raw: np.ndarray, pixel_spacing, spec: PreprocessSpec, *, repeat: int = 20,
                      warmup: int = 3) -> dict:
    """Kernel path for one series: end to end (upload, kernel, download) and kernel-only (CUDA events)."""
    cuda, _ = _try_import("pycuda.driver")
    if cuda is None:
        return {"why": "pycuda is not installed"}
    from edge_agent.inference.trt.preprocess_kernel import GpuPreprocessor

    n, h, w = raw.shape
    with _Primary(cuda):
        pre = GpuPreprocessor(spec, max_slices=n, max_pixels=h * w, raw_dtype=raw.dtype)
        try:
            def once(download=True):
                return pre.run(raw, pixel_spacing, intercept=-1024.0, padding_value=0, download=download)

            for _ in range(warmup):
                once()
            total = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                once()
                total.append((time.perf_counter() - t0) * 1000)
            start, end = cuda.Event(), cuda.Event()
            kernel = []
            for _ in range(repeat):
                start.record(pre.stream)
                once(download=False)
                end.record(pre.stream)
                end.synchronize()
                kernel.append(end.time_since(start))
            del start, end
        finally:
            pre.free()
    out = _pct(total)
    out["kernel_and_upload_p50_ms"] = _pct(kernel)["p50_ms"]
    out["upload_bytes"] = int(raw.nbytes)
    out["float_path_upload_bytes"] = int(raw.size * 4)
    return out


def torch_preprocess_ms(raw: np.ndarray, pixel_spacing, spec: PreprocessSpec, *, repeat: int = 20,
                        warmup: int = 3) -> dict:
    """The same transform in PyTorch on the GPU (upload float32 HU, grid_sample, windows), for comparison."""
    torch, _ = _try_import("torch")
    if torch is None or not torch.cuda.is_available():
        return {"why": "PyTorch with CUDA is not available"}
    import torch.nn.functional as F

    n, h, w = raw.shape
    hu_host = (raw.astype(np.float32) - 1024.0)
    hu_host[raw == 0] = -1024.0
    hu_pinned = torch.from_numpy(hu_host).pin_memory()
    rows, cols = spec.size
    sr, sc = spec.pixel_spacing_mm / pixel_spacing[0], spec.pixel_spacing_mm / pixel_spacing[1]
    ys = ((torch.arange(rows) - (rows - 1) / 2) * sr) / ((h - 1) / 2) if h > 1 else torch.zeros(rows)
    xs = ((torch.arange(cols) - (cols - 1) / 2) * sc) / ((w - 1) / 2) if w > 1 else torch.zeros(cols)
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], -1)[None].cuda()
    lo = torch.tensor([c - wd / 2 for c, wd in spec.windows]).view(1, -1, 1, 1).cuda()
    inv = torch.tensor([1 / wd for _, wd in spec.windows]).view(1, -1, 1, 1).cuda()

    def once():
        hu = hu_pinned.cuda(non_blocking=True)[:, None]
        res = F.grid_sample(hu + 1024.0, grid.expand(n, -1, -1, -1), mode="bilinear", padding_mode="zeros",
                            align_corners=True) - 1024.0
        out = ((res - lo) * inv).clamp_(0, 1)
        return out.cpu()

    for _ in range(warmup):
        once()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        once()
        times.append((time.perf_counter() - t0) * 1000)
    out = _pct(times)
    out["upload_bytes"] = int(hu_host.nbytes)
    out["torch"] = torch.__version__
    return out


def synthetic_series(slices: int, matrix: int = 512, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(stored uint16 pixels, HU float32) of a water cylinder in air, slope 1 / intercept -1024, padding 0."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:matrix, :matrix]
    c = (matrix - 1) / 2
    body = ((yy - c) ** 2 + (xx - c) ** 2) <= (0.4 * matrix) ** 2
    hu = np.where(body, 40.0, -1000.0).astype(np.float32)[None] + rng.normal(0, 5, (slices, matrix, matrix))
    raw = np.clip(np.round(hu + 1024), 1, 4095).astype(np.uint16)
    field_ = ((yy - c) ** 2 + (xx - c) ** 2) > (0.5 * matrix) ** 2
    raw[:, field_] = 0
    hu = raw.astype(np.float32) - 1024.0
    hu[:, field_] = -1024.0
    return raw, hu


def main() -> None:
    """Print every measurement as JSON (used by scripts/gpu_check.sh)."""
    spec = PreprocessSpec(pixel_spacing_mm=1.8)
    raw, _ = synthetic_series(32)
    report = {"pycuda": _try_import("pycuda.driver")[0] is not None, "tensorrt": why_unavailable() is None,
              "h2d": h2d_bandwidth(),
              "preprocess_32x512x512": {"kernel": gpu_preprocess_ms(raw, (0.5, 0.5), spec),
                                        "torch": torch_preprocess_ms(raw, (0.5, 0.5), spec)}}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
