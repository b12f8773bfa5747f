"""The preprocessing kernel's CUDA source, run on the CPU, against the CPU reference — on real DICOM.

No GPU here, so the kernel text that pycuda hands to nvcc is compiled by g++
behind a shim and walked one thread at a time (edge_agent/testing/cuda_host.py —
an emulation, named as one). It runs inside :class:`GpuPreprocessor` over the
named fake of ``pycuda.driver`` (edge_agent/testing/fake_trt.py), so the host wrapper's
argument order, geometry upload, buffer growth and dtype handling are
exercised with the real kernel arithmetic. The same checks run on a real GPU
in tests/gpu/test_gpu_pycuda.py; tests/trt/test_kernel_nvcc.py compiles the
source with the real nvcc for the Jetson's architecture.
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from edge_agent.dicom import read_file, read_series
from edge_agent.inference.trt.preprocess_kernel import TOLERANCE, GpuPreprocessor, raw_to_input
from edge_agent.preprocess import PreprocessSpec, prepare_slices
from edge_agent.testing.cuda_host import compiler
from edge_agent.testing.volumes import phantom_series

pytestmark = pytest.mark.skipif(compiler() is None, reason="g++ is needed to run the kernel source on the CPU")

SPECS = {
    "head-1.8mm": PreprocessSpec(size=(32, 32), pixel_spacing_mm=1.8),
    "upsample-nonsquare": PreprocessSpec(windows=((40.0, 80.0),), size=(48, 40), pixel_spacing_mm=0.5),
    "lung-whole-field": PreprocessSpec(windows=((-600.0, 1500.0), (40.0, 400.0)), size=(40, 40),
                                       pixel_spacing_mm=None),
    "outside-field": PreprocessSpec(size=(24, 24), pixel_spacing_mm=9.0),
}


def _stored(paths):
    datasets = [pydicom.dcmread(p) for p in paths]
    ds = datasets[0]
    pad = ds.get("PixelPaddingValue")
    return (np.stack([d.pixel_array for d in datasets]), float(ds.RescaleSlope), float(ds.RescaleIntercept),
            None if pad is None else int(pad))


@pytest.mark.parametrize("out_dtype", ["float32", "float16"])
@pytest.mark.parametrize("name", list(SPECS))
def test_kernel_source_matches_reference_on_pydicom_ct(kernels, name, out_dtype):
    base = SPECS[name]
    path = get_testdata_file("CT_small.dcm", download=False)
    raw, slope, intercept, pad = _stored([path])
    assert raw.dtype == np.int16 and pad == -2000                  # a real scanner file with padding
    s = read_file(path)[0]
    spec = PreprocessSpec(base.windows, base.size, base.pixel_spacing_mm, out_dtype)
    pre = GpuPreprocessor(spec, max_slices=2, max_pixels=raw[0].size)
    try:
        out = pre.run(raw, s.pixel_spacing, slope=slope, intercept=intercept, padding_value=pad)
    finally:
        pre.free()
    ref = prepare_slices(s.hu, s.pixel_spacing, base)
    assert out.shape == ref.shape and out.dtype == np.dtype(out_dtype)
    assert np.abs(out.astype(np.float32) - ref).max() <= TOLERANCE[out_dtype]
    mirror = raw_to_input(raw, s.pixel_spacing, spec, slope=slope, intercept=intercept, padding_value=pad)
    assert np.abs(out.astype(np.float32) - mirror.astype(np.float32)).max() <= TOLERANCE[out_dtype]
    assert out.std() > 0.05, "a real slice gives a varied image, not a constant"


@pytest.mark.parametrize("signed", [False, True], ids=["uint16", "int16"])
def test_kernel_source_matches_reference_on_a_written_series(kernels, tmp_path, signed):
    paths = phantom_series(tmp_path, seed=5, bright=True, signed=signed)
    series = read_series(tmp_path)[0]
    raw, slope, intercept, pad = _stored(series.paths)
    assert raw.dtype == (np.int16 if signed else np.uint16)
    spec = SPECS["head-1.8mm"]
    pre = GpuPreprocessor(spec, max_slices=len(paths), max_pixels=16)   # staging grows on first use
    try:
        pre.prepare()                                                   # both stored dtypes compiled up front
        out = pre.run(raw, series.pixel_spacing, slope=slope, intercept=intercept, padding_value=pad)
        again = pre.run(raw[:2], series.pixel_spacing, slope=slope, intercept=intercept, padding_value=pad)
    finally:
        pre.free()
    assert sorted(str(d) for d, _ in kernels.compiled) == ["int16", "uint16"]
    ref = prepare_slices(series.hu, series.pixel_spacing, spec)
    assert np.abs(out - ref).max() <= TOLERANCE["float32"]
    np.testing.assert_array_equal(again, out[:2])
    assert kernels.live == set(), "free() released every allocation"


def test_kernel_source_writes_into_another_device_buffer(kernels):
    spec = SPECS["lung-whole-field"]
    rng = np.random.default_rng(2)
    raw = rng.integers(10, 2000, (3, 30, 26)).astype(np.uint16)
    raw[:, :4] = 5                                                      # padding rows: inside the range 0..9
    pre = GpuPreprocessor(spec, max_slices=3, raw_dtype=np.uint16)
    dest = kernels.mem_alloc(3 * 2 * 40 * 40 * 4)
    try:
        assert pre.run(raw, (0.8, 0.8), slope=1.0, intercept=-1024.0, padding_value=0, padding_limit=9,
                       out_ptr=int(dest)) is None
        assert pre.d_out is None, "no output buffer is allocated when writing elsewhere"
        host = kernels.device_view(int(dest), np.float32, 3 * 2 * 40 * 40).reshape(3, 2, 40, 40)
        mirror = raw_to_input(raw, (0.8, 0.8), spec, slope=1.0, intercept=-1024.0, padding_value=0,
                              padding_limit=9)
        assert np.abs(host - mirror).max() <= TOLERANCE["float32"]
        unpadded = raw_to_input(raw, (0.8, 0.8), spec, slope=1.0, intercept=-1024.0)
        assert np.abs(host - unpadded).max() > 1e-3, "the padding range changed the output"
    finally:
        dest.free()
        pre.free()


def test_wrong_inputs_are_refused(kernels):
    pre = GpuPreprocessor(SPECS["head-1.8mm"], max_slices=2)
    try:
        with pytest.raises(ValueError, match="int16/uint16"):
            pre.run(np.zeros((1, 8, 8), np.float32), (1.0, 1.0))
        with pytest.raises(ValueError, match="3 slices exceed"):
            pre.run(np.zeros((3, 8, 8), np.int16), (1.0, 1.0))
    finally:
        pre.free()
