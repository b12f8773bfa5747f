"""`edge-agent bench`: a real ONNX Runtime CPU measurement on a tiny model; other backends say why not."""

from __future__ import annotations

import importlib.util
import json

from cli_helpers import run_cli  # noqa: E402

def test_bench_json_measures_ort_cpu_and_preprocessing(capsys, model_dir):
    code, out, err = run_cli(capsys, "bench", "--model", str(model_dir), "--slices", "4", "--repeat", "3",
                             "--warmup", "1", "--threads", "1", "--json")
    assert code == 0, err
    report = json.loads(out)
    rows = report["rows"]
    pre = {r["path"]: r for r in rows if r["stage"] == "preprocess"}
    assert pre["cpu reference (HU → input)"]["p50_ms"] > 0
    assert pre["cpu raw → input (kernel mirror)"]["p99_ms"] >= pre["cpu raw → input (kernel mirror)"]["p50_ms"]
    inference = {r["backend"]: r for r in rows if r["stage"] == "inference"}
    cpu = inference["onnxruntime cpu"]
    assert cpu["model"] == "tiny@0.0.1" and cpu["batch"] == 4
    assert cpu["slices_per_s"] > 0 and cpu["series_p99_ms"] >= cpu["series_p50_ms"] > 0
    assert cpu["end_to_end_ms"] > cpu["series_p50_ms"]
    if importlib.util.find_spec("tensorrt") is None:
        assert "TensorRT is not installed" in inference["tensorrt"]["unavailable"]
    if importlib.util.find_spec("pycuda") is None:
        assert "pycuda" in next(r for r in rows if r.get("path") == "gpu kernel")["unavailable"]
        assert "pycuda" in next(r for r in rows if r["stage"] == "transfer")["unavailable"]

def test_bench_table(capsys, model_dir):
    code, out, _ = run_cli(capsys, "bench", "--model", str(model_dir), "--backend", "onnxrt", "--slices", "2",
                           "--repeat", "2", "--warmup", "0")
    assert code == 0
    assert "synthetic phantoms" in out and "slices/s" in out
    row = next(line for line in out.splitlines() if "onnxruntime cpu" in line)
    assert row.startswith("tiny@0.0.1") and "per series, ms" in out      # units in the header, not each cell

def test_bench_unknown_model_is_a_sentence(capsys, tmp_path):
    code, _, err = run_cli(capsys, "bench", "--model", str(tmp_path / "none"))
    assert code == 2 and "No model manifest" in err and "Traceback" not in err
