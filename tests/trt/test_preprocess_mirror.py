"""The numpy mirror of the GPU kernel agrees with the CPU reference, on real DICOM.

Reference: ``prepare_slices(read_series(...).hu, ...)``. Mirror: ``raw_to_input``
from the *stored* pixels read straight from the same files with pydicom, plus
RescaleSlope/Intercept and PixelPaddingValue. The GPU kernel is checked
against both in tests/gpu.
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from edge_agent.dicom import read_file, read_series
from edge_agent.dicom.synth import SeriesHeaders, write_series
from edge_agent.inference.trt.preprocess_kernel import OUTSIDE, TOLERANCE, geometry, raw_to_input
from edge_agent.preprocess import PreprocessSpec, prepare_slices, window
from edge_agent.testing.volumes import phantom_series

SPECS = [
    PreprocessSpec(size=(32, 32), pixel_spacing_mm=1.8),
    PreprocessSpec(windows=((40.0, 80.0),), size=(48, 40), pixel_spacing_mm=0.5),   # upsampling, non-square
    PreprocessSpec(windows=((-600.0, 1500.0), (40.0, 400.0)), size=(64, 64), pixel_spacing_mm=None),
    PreprocessSpec(size=(24, 24), pixel_spacing_mm=9.0),                            # field smaller than output
]


def _stored(paths):
    datasets = [pydicom.dcmread(p) for p in paths]
    raw = np.stack([ds.pixel_array for ds in datasets])
    ds = datasets[0]
    pad = ds.get("PixelPaddingValue")
    return raw, float(ds.RescaleSlope), float(ds.RescaleIntercept), None if pad is None else int(pad)


@pytest.mark.parametrize("spec", SPECS, ids=["head-1.8mm", "upsample", "whole-field-lung", "outside"])
def test_mirror_matches_reference_on_pydicom_ct(spec):
    path = get_testdata_file("CT_small.dcm", download=False)
    raw, slope, intercept, pad = _stored([path])
    assert raw.dtype == np.int16 and pad == -2000
    s = read_file(path)[0]
    ref = prepare_slices(s.hu, s.pixel_spacing, spec)
    mirror = raw_to_input(raw, s.pixel_spacing, spec, slope=slope, intercept=intercept, padding_value=pad)
    assert mirror.shape == ref.shape and mirror.dtype == np.float32
    np.testing.assert_allclose(mirror, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("signed,slope", [(False, 1.0), (True, 1.0), (True, 0.5)])
@pytest.mark.parametrize("spec", SPECS[:2], ids=["head-1.8mm", "upsample"])
def test_mirror_matches_reference_on_phantom_series(tmp_path, signed, slope, spec):
    if slope == 1.0:
        paths = phantom_series(tmp_path, seed=3, bright=True, signed=signed)
    else:
        rng = np.random.default_rng(1)
        vol = rng.normal(40, 30, (3, 40, 36)).astype(np.float32)
        headers = SeriesHeaders(signed=True, rescale_slope=0.5, rescale_intercept=-1024.0, padding_value=-3000)
        mask = np.zeros(vol.shape, bool)
        mask[:, :4] = True
        paths = write_series(vol, tmp_path, spacing=(5.0, 0.9, 0.7), headers=headers, outside_mask=mask)
    series = read_series(tmp_path)[0]
    raw, sl, ic, pad = _stored(series.paths)
    assert sl == slope
    ref = prepare_slices(series.hu, series.pixel_spacing, spec)
    mirror = raw_to_input(raw, series.pixel_spacing, spec, slope=sl, intercept=ic, padding_value=pad)
    np.testing.assert_allclose(mirror, ref, rtol=0, atol=1e-5)
    assert len(paths) == raw.shape[0]


def test_float16_output_within_stated_tolerance():
    path = get_testdata_file("CT_small.dcm", download=False)
    raw, slope, intercept, pad = _stored([path])
    s = read_file(path)[0]
    spec = PreprocessSpec(size=(32, 32), pixel_spacing_mm=1.8, dtype="float16")
    out = raw_to_input(raw, s.pixel_spacing, spec, slope=slope, intercept=intercept, padding_value=pad)
    assert out.dtype == np.float16
    ref = prepare_slices(s.hu, s.pixel_spacing, PreprocessSpec(size=(32, 32), pixel_spacing_mm=1.8))
    assert np.abs(out.astype(np.float32) - ref).max() <= TOLERANCE["float16"]


def test_outside_field_and_padding_range_become_air():
    raw = np.full((1, 10, 10), 1100, np.uint16)          # 76 HU everywhere
    raw[0, :, :3] = 5                                    # inside padding range 0..9 (PixelPaddingRangeLimit)
    spec = PreprocessSpec(windows=((40.0, 80.0), (-600.0, 1500.0)), size=(8, 8), pixel_spacing_mm=3.0)
    geo = geometry((10, 10), (1.0, 1.0), spec)
    # source coordinate of output j is 4.5 + (j - 3.5) * 3: -6, -3, 0, 3, 6, 9, 12, 15
    assert list(geo.c0) == [OUTSIDE, OUTSIDE, 0, 3, 6, 9, OUTSIDE, OUTSIDE]
    assert np.all(geo.cf == 0)
    out = raw_to_input(raw, (1.0, 1.0), spec, slope=1.0, intercept=-1024.0, padding_value=0, padding_limit=9)
    air = [float(window(np.float32(-1024.0), c, w)) for c, w in spec.windows]
    body = [float(window(np.float32(76.0), c, w)) for c, w in spec.windows]
    for k in range(2):
        assert out[0, k, 3, 0] == pytest.approx(air[k])  # outside the field
        assert out[0, k, 0, 3] == pytest.approx(air[k])
        assert out[0, k, 3, 2] == pytest.approx(air[k])  # padding (stored 5, inside 0..9)
        assert out[0, k, 3, 3] == pytest.approx(body[k])
    no_pad = raw_to_input(raw, (1.0, 1.0), spec, slope=1.0, intercept=-1024.0)
    assert no_pad[0, 1, 3, 2] == pytest.approx(float(window(np.float32(-1019.0), -600.0, 1500.0)))
    assert no_pad[0, 1, 3, 2] != pytest.approx(air[1])
    with pytest.raises(ValueError, match="int16/uint16"):
        raw_to_input(raw.astype(np.float32), (1.0, 1.0), spec)


def test_values_below_air_are_floored_like_the_reader():
    raw = np.full((1, 6, 6), -3000, np.int16)            # -4024 HU without a padding value
    spec = PreprocessSpec(windows=((-600.0, 1500.0),), size=(6, 6), pixel_spacing_mm=None)
    out = raw_to_input(raw, (1.0, 1.0), spec, slope=1.0, intercept=-1024.0)
    assert np.allclose(out, float(window(np.float32(-1024.0), -600.0, 1500.0)))
