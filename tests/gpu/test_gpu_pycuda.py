"""On a real GPU: the preprocessing kernel against the CPU reference, buffers, streams, context ownership."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from edge_agent.inference.trt.buffers import IOBuffers
from edge_agent.inference.trt.preprocess_kernel import TOLERANCE, GpuPreprocessor, raw_to_input
from edge_agent.preprocess import AIR_HU, PreprocessSpec, prepare_slices

pytestmark = pytest.mark.gpu

SPECS = {
    "head-1.8mm": PreprocessSpec(size=(128, 128), pixel_spacing_mm=1.8),
    "upsample-nonsquare": PreprocessSpec(windows=((40.0, 80.0),), size=(96, 80), pixel_spacing_mm=0.3),
    "lung-whole-field": PreprocessSpec(windows=((-600.0, 1500.0), (40.0, 400.0)), size=(64, 64),
                                       pixel_spacing_mm=None),
    "outside-field": PreprocessSpec(size=(64, 64), pixel_spacing_mm=9.0),
}


def _series(dtype, n=5, h=200, w=180, seed=0):
    """Stored pixels like a scanner's: body ~ water, bright blob, padding outside a circle."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    body = ((yy - h / 2) / (0.4 * h)) ** 2 + ((xx - w / 2) / (0.4 * w)) ** 2 <= 1
    hu = np.where(body, 40.0, -1000.0) + rng.normal(0, 20, (n, h, w))
    hu[:, 60:80, 50:90] = 900.0
    if dtype == np.int16:
        raw, pad, slope, intercept = np.round((hu + 1024) / 0.5).astype(np.int16), -2000, 0.5, -1024.0
    else:
        raw, pad, slope, intercept = np.clip(np.round(hu + 1024), 1, 4095).astype(np.uint16), 0, 1.0, -1024.0
    outside = ((yy - h / 2) ** 2 + (xx - w / 2) ** 2) > (0.49 * min(h, w)) ** 2
    raw[:, outside] = pad
    return raw, slope, intercept, pad


def _reference_hu(raw, slope, intercept, pad):
    """As edge_agent.dicom.to_hu: float32 rescale, padding → air, floor at air."""
    hu = raw.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    hu[raw == pad] = AIR_HU
    return np.maximum(hu, np.float32(AIR_HU))


@pytest.mark.parametrize("out_dtype", ["float32", "float16"])
@pytest.mark.parametrize("raw_dtype", [np.int16, np.uint16])
@pytest.mark.parametrize("name", list(SPECS))
def test_kernel_matches_cpu_reference_and_mirror(cuda, name, raw_dtype, out_dtype):
    base = SPECS[name]
    spec = PreprocessSpec(base.windows, base.size, base.pixel_spacing_mm, out_dtype)
    raw, slope, intercept, pad = _series(raw_dtype)
    spacing = (0.7, 0.6)
    pre = GpuPreprocessor(spec, max_slices=8, max_pixels=raw.shape[1] * raw.shape[2], raw_dtype=raw_dtype)
    try:
        gpu = pre.run(raw, spacing, slope=slope, intercept=intercept, padding_value=pad)
        again = pre.run(raw[:2], spacing, slope=slope, intercept=intercept, padding_value=pad)  # buffers reused
    finally:
        pre.free()
    assert gpu.shape == (raw.shape[0], len(spec.windows), *spec.size) and gpu.dtype == np.dtype(out_dtype)
    ref = prepare_slices(_reference_hu(raw, slope, intercept, pad), spacing, PreprocessSpec(
        base.windows, base.size, base.pixel_spacing_mm, "float32"))
    mirror = raw_to_input(raw, spacing, spec, slope=slope, intercept=intercept, padding_value=pad)
    tol = TOLERANCE[out_dtype]
    assert np.abs(gpu.astype(np.float32) - ref).max() <= tol
    assert np.abs(gpu.astype(np.float32) - mirror.astype(np.float32)).max() <= tol
    np.testing.assert_array_equal(again, gpu[:2])


def test_mapped_staging_gives_the_same_input(cuda):
    """Zero-copy: the kernel reads stored pixels from mapped pinned memory (what a Jetson uses)."""
    spec = SPECS["lung-whole-field"]
    raw, slope, intercept, pad = _series(np.int16, n=3)
    outs = []
    for mapped in (False, True):
        pre = GpuPreprocessor(spec, max_slices=3, max_pixels=raw[0].size, raw_dtype=np.int16, mapped=mapped)
        try:
            outs.append(pre.run(raw, (0.7, 0.6), slope=slope, intercept=intercept, padding_value=pad))
        finally:
            pre.free()
    np.testing.assert_array_equal(outs[0], outs[1])


def test_kernel_writes_into_an_external_device_buffer(cuda):
    spec = SPECS["head-1.8mm"]
    raw, slope, intercept, pad = _series(np.int16, n=3)
    pre = GpuPreprocessor(spec, max_slices=3, max_pixels=raw[0].size, raw_dtype=np.int16)
    dest = cuda.mem_alloc(3 * 3 * 128 * 128 * 4)
    try:
        assert pre.run(raw, (0.7, 0.6), slope=slope, intercept=intercept, padding_value=pad,
                       out_ptr=int(dest)) is None
        pre.stream.synchronize()
        host = np.empty((3, 3, 128, 128), np.float32)
        cuda.memcpy_dtoh(host, dest)
    finally:
        dest.free()
        pre.free()
    mirror = raw_to_input(raw, (0.7, 0.6), spec, slope=slope, intercept=intercept, padding_value=pad)
    assert np.abs(host - mirror).max() <= TOLERANCE["float32"]


def test_preprocessor_grows_its_staging_and_builds_both_kernels(cuda):
    """As the runner uses it: no dtype at construction, both kernels up front, a bigger image later."""
    spec = SPECS["head-1.8mm"]
    pre = GpuPreprocessor(spec, max_slices=4, max_pixels=64 * 64, raw_dtype=None)
    try:
        pre.prepare()
        small_raw, *small = _series(np.uint16, n=2, h=60, w=50)
        big_raw, slope, intercept, pad = _series(np.int16, n=4, h=256, w=240)
        small_out = pre.run(small_raw, (0.7, 0.6), slope=small[0], intercept=small[1], padding_value=small[2])
        big_out = pre.run(big_raw, (0.7, 0.6), slope=slope, intercept=intercept, padding_value=pad)
    finally:
        pre.free()
    for raw, out, (sl, ic, pd) in ((small_raw, small_out, small), (big_raw, big_out, (slope, intercept, pad))):
        ref = prepare_slices(_reference_hu(raw, sl, ic, pd), (0.7, 0.6), spec)
        assert np.abs(out - ref).max() <= TOLERANCE["float32"]


@pytest.mark.parametrize("mapped", [False, True], ids=["pinned-copy", "zero-copy"])
def test_io_buffers_roundtrip_on_a_stream(cuda, mapped):
    from pycuda.compiler import SourceModule

    twice = SourceModule("__global__ void twice(float *x, int n) {"
                         " int i = blockIdx.x * blockDim.x + threadIdx.x; if (i < n) x[i] *= 2.0f; }"
                         ).get_function("twice")
    stream = cuda.Stream()
    buffers = IOBuffers(cuda, mapped=mapped)
    try:
        buf = buffers.allocate("x", np.float32, (4, 1000))
        assert buf.host.base is not None and buf.device_ptr != 0
        data = np.arange(3000, dtype=np.float32).reshape(3, 1000)
        buffers.upload("x", data, stream)
        twice(np.uintp(buf.device_ptr), np.int32(3000), block=(256, 1, 1), grid=(12, 1), stream=stream)
        view = buffers.start_download("x", (3, 1000), stream)
        stream.synchronize()
        np.testing.assert_array_equal(view, data * 2)
        with pytest.raises(ValueError, match="exceeds"):
            buffers.upload("x", np.zeros((5, 1000), np.float32), stream)
    finally:
        buffers.free()
    assert buffers.tensors == {} and buffers.bytes_allocated == 0


def test_context_is_owned_by_one_thread(cuda):
    """A worker thread does the whole life cycle itself; a thread without a pushed context cannot allocate."""
    results, errors = {}, {}

    def owner():
        cuda.init()
        ctx = cuda.Device(0).retain_primary_context()
        ctx.push()
        try:
            pre = GpuPreprocessor(SPECS["lung-whole-field"], max_slices=2, max_pixels=200 * 180,
                                  raw_dtype=np.uint16)
            raw, slope, intercept, pad = _series(np.uint16, n=2)
            results["out"] = pre.run(raw, (0.7, 0.6), slope=slope, intercept=intercept, padding_value=pad)
            pre.free()
        finally:
            cuda.Context.pop()
            ctx.detach()
        results["current_after"] = cuda.Context.get_current()

    def stranger():
        try:
            cuda.mem_alloc(1024)
        except cuda.Error as exc:                      # LogicError: invalid device context
            errors["stranger"] = str(exc)

    for target, name in ((owner, "gpu-owner"), (stranger, "gpu-stranger")):
        t = threading.Thread(target=target, name=name)
        t.start()
        t.join()
    assert results["out"].shape == (2, 2, 64, 64)
    assert results["current_after"] is None
    assert "context" in errors.get("stranger", ""), "allocating without a current context must fail"


def test_doctor_pycuda_check_runs_a_kernel():
    pytest.importorskip("pycuda.driver")
    from edge_agent.inference.trt.health import pycuda_check

    level, message = pycuda_check()
    assert level == "OK", message
    assert "ran a test kernel" in message and "zero_copy = auto" in message


def test_h2d_bandwidth_measured():
    pytest.importorskip("pycuda.driver")
    from edge_agent.inference.trt.measure import h2d_bandwidth

    result = h2d_bandwidth(16 << 20, repeat=3)
    assert result["pinned_gbps"] > 0 and result["pageable_gbps"] > 0
