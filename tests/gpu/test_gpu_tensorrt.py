"""On a machine with TensorRT and a GPU (a Jetson): build the tiny CNN and compare TrtRunner with ONNX Runtime.

Where TensorRT is absent (the lent x86 GPU machine, CI) these are honest
skips: TensorRT is not installed there, see docs/TENSORRT.md.
"""

from __future__ import annotations


import numpy as np
import pytest

pytestmark = pytest.mark.gpu


@pytest.fixture
def engine(tmp_path):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed on this machine")
    pytest.importorskip("pycuda.driver", reason="pycuda is not installed")
    from edge_agent.testing.models import tiny_cnn

    from edge_agent.inference.trt.builder import BuildOptions, build_engine

    onnx_path = tiny_cnn(tmp_path / "model.onnx")
    out = tmp_path / "model.engine"
    build_engine(onnx_path, out, BuildOptions(precision="fp32", workspace_mib=256, opt_batch=4, max_batch=8,
                                              timing_cache=tmp_path / "timing.cache"))
    return onnx_path, out


@pytest.mark.parametrize("mapped", [False, True], ids=["pinned-copy", "zero-copy"])
def test_trt_runner_matches_onnxruntime(engine, mapped):
    import onnxruntime as ort

    from edge_agent.inference.trt.runner import TrtRunner

    onnx_path, engine_path = engine
    x = np.random.default_rng(0).random((5, 3, 32, 32), dtype=np.float32)
    expected = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    with TrtRunner(engine_path, mapped=mapped) as runner:
        assert runner.max_batch_size() == 8
        got = runner.infer({"input": x})["probability"]
        got1 = runner.infer({"input": x[:1]})["probability"]
    np.testing.assert_allclose(got, expected, atol=1e-4)
    np.testing.assert_allclose(got1, expected[:1], atol=1e-4)


@pytest.mark.parametrize("mapped", [False, True], ids=["pinned-copy", "zero-copy"])
def test_trt_runner_prepares_stored_pixels_on_the_gpu(engine, mapped):
    """The daemon's path on real TensorRT: stored pixels → kernel → engine input → engine, against ORT on HU."""
    import onnxruntime as ort

    from edge_agent.inference.trt.runner import TrtRunner
    from edge_agent.preprocess import AIR_HU, PreprocessSpec, prepare_slices

    onnx_path, engine_path = engine
    spec = PreprocessSpec(size=(32, 32), pixel_spacing_mm=2.0)    # the tiny CNN: 3 windows, 32 x 32
    raw = np.random.default_rng(1).integers(1, 2400, (5, 96, 80)).astype(np.uint16)
    raw[:, :3] = 0                                                  # padding rows (PixelPaddingValue 0)
    hu = raw.astype(np.float32) - 1024.0
    hu[raw == 0] = AIR_HU
    x = prepare_slices(np.maximum(hu, AIR_HU), (0.7, 0.7), spec)
    expected = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    with TrtRunner(engine_path, mapped=mapped, preprocessing=spec) as runner:
        assert runner.stored_input_dtypes(), runner.preprocess_problem
        got = runner.infer_stored(raw, (0.7, 0.7), (1.0, -1024.0, (0, 0)))["probability"]
        assert runner.last_timings["preprocess"] > 0 and runner.last_timings["inference"] > 0
    np.testing.assert_allclose(got, expected, atol=1e-3)
