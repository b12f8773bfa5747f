"""INT8 calibration with onnxruntime, for real: phantom DICOM → same preprocessing → Q/DQ ONNX on ORT CPU."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnxruntime.quantization import QuantFormat, QuantType

from edge_agent.decision import DecisionRule
from edge_agent.dicom import read_series
from edge_agent.inference.quantize import (
    ORT_QDQ_CONFIG,
    TENSORRT_SETTINGS,
    CalibrationError,
    _session,
    auc,
    calibrate,
    prepare_series,
    qdq_summary,
)
from edge_agent.preprocess import PreprocessSpec
from edge_agent.testing.volumes import phantom_series

SPEC = PreprocessSpec(size=(32, 32), pixel_spacing_mm=6.0)
RULE = DecisionRule(rule="top_k_mean", k=2, threshold=0.5)


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    root = tmp_path_factory.mktemp("calib")
    for i in range(6):
        phantom_series(root / f"s{i}", seed=i, bright=i % 2 == 0)
    found = read_series(root)
    assert len(found) == 6
    labels = {s.series_instance_uid: bool(s.hu.max() > 60) for s in found}
    return prepare_series(found, SPEC, labels)


def test_settings_are_the_ones_tensorrt_accepts():
    assert TENSORRT_SETTINGS["quant_format"] == QuantFormat.QDQ
    assert TENSORRT_SETTINGS["activation_type"] == QuantType.QInt8 == TENSORRT_SETTINGS["weight_type"]
    assert TENSORRT_SETTINGS["per_channel"] is True and TENSORRT_SETTINGS["reduce_range"] is False
    assert TENSORRT_SETTINGS["extra_options"] == {"ActivationSymmetric": True, "WeightSymmetric": True,
                                                  "QuantizeBias": False}


def test_auc():
    assert auc([0.9, 0.8, 0.1, 0.2], [True, True, False, False]) == 1.0
    assert auc([0.1, 0.8, 0.9, 0.2], [True, True, False, False]) == 0.25
    assert auc([0.5, 0.5], [True, False]) == 0.5
    assert auc([0.5, 0.7], [True, True]) is None


def test_calibrate_writes_symmetric_int8_qdq_that_runs_on_ort(tmp_path, tiny_onnx, series):
    out = tmp_path / "model.int8.onnx"
    result = calibrate(tiny_onnx, out, series, series, RULE, tolerance=0.05)
    assert out.is_file() and result.passed
    summary = qdq_summary(out)
    assert summary["quantize_linear"] >= 3 and summary["symmetric"] and summary["signed_int8"]
    assert result.series == 6 and result.slices == sum(s.inputs.shape[0] for s in series)
    assert result.auc_reference == "labels" and result.auc_fp32 is not None
    assert {r["fp32_positive"] for r in result.per_series} == {True, False}, "phantoms must span both decisions"
    assert result.series_agreement == 1.0 and result.slice_mean_abs_diff < 0.05
    # the INT8 model runs on ORT CPU (as compare() runs it) and agrees with FP32 on fresh inputs
    x = series[0].inputs
    fp32 = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    int8 = _session(out).run(None, {"input": x})[0]
    assert np.abs(fp32 - int8).max() < 0.05
    assert not list(tmp_path.glob("*.tmp"))


def test_int8_is_judged_by_its_qdq_arithmetic_not_fused_cpu_kernels(tmp_path, tiny_onnx, series):
    # compare() must see what the Q/DQ model computes (what TensorRT runs), not ORT's fused QLinearConv/QGemm:
    # those saturate on x86 CPUs without VNNI (0.21 mean loss on this model) and, since ORT 1.21, are used for
    # Conv/Gemm with a float bias too. ORT ignores unknown config keys, so check that the key still works here.
    out = tmp_path / "model.int8.onnx"
    calibrate(tiny_onnx, out, series, series, RULE, tolerance=0.05)
    opts = ort.SessionOptions()
    for key, value in ORT_QDQ_CONFIG.items():
        opts.add_session_config_entry(key, value)
    opts.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    ort.InferenceSession(str(out), opts, providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in onnx.load(str(tmp_path / "optimised.onnx")).graph.node}
    assert {"Conv", "Gemm", "QuantizeLinear", "DequantizeLinear"} <= ops
    assert not {"QLinearConv", "QGemm", "QLinearMatMul"} & ops
    # and it computes what the unoptimised graph does (to within one output step, 1/160: rounding ties may differ)
    x = np.concatenate([s.inputs for s in series])
    plain = ort.SessionOptions()
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    reference = ort.InferenceSession(str(out), plain, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert np.abs(_session(out).run(None, {"input": x})[0] - reference).max() < 0.01


def test_lossy_result_is_refused_and_nothing_written(tmp_path, tiny_onnx, series):
    out = tmp_path / "model.int8.onnx"
    with pytest.raises(CalibrationError) as info:
        calibrate(tiny_onnx, out, series, series, RULE, tolerance=0.0)
    text = str(info.value)
    assert "was not written" in text and "mean slice probability difference" in text and "\n" not in text
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))


def test_no_calibration_data(tmp_path, tiny_onnx):
    with pytest.raises(CalibrationError, match="--data"):
        calibrate(tiny_onnx, tmp_path / "x.onnx", [], [], RULE)


def test_histogram_methods_work_with_uneven_batches(tmp_path, tiny_onnx, series):
    # 6 series x 6 slices = 36 slices: not a multiple of the batch of 8 (ORT's histogram calibrators need equal batches)
    out = tmp_path / "entropy.onnx"
    result = calibrate(tiny_onnx, out, series, series, RULE, tolerance=0.05, method="entropy")
    assert result.passed and qdq_summary(out)["symmetric"]


def test_slice_agreement_is_counted_at_the_slice_threshold(tmp_path, tiny_onnx, series):
    """A slice's call is made at the rule's slice threshold, so that is where FP32 and INT8 must agree."""
    x = np.concatenate([s.inputs for s in series])
    p32 = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0][:, 0]
    calibrate(tiny_onnx, tmp_path / "first.onnx", series, series, RULE, tolerance=1.0)
    p8 = _session(tmp_path / "first.onnx").run(None, {"input": x})[0][:, 0]
    worst = int(np.argmax(np.abs(p32 - p8)))
    assert p32[worst] != p8[worst]
    cut = float((p32[worst] + p8[worst]) / 2)   # the slice the two precisions split most is called differently
    expected = float(np.mean((p32 >= cut) == (p8 >= cut)))
    assert expected < 1.0 and float(np.mean((p32 >= 1.0) == (p8 >= 1.0))) == 1.0
    rule = DecisionRule(rule="top_k_mean", k=2, threshold=1.0, slice_threshold=cut)
    result = calibrate(tiny_onnx, tmp_path / "model.int8.onnx", series, series, rule, tolerance=1.0)
    assert result.slice_agreement == pytest.approx(expected)
