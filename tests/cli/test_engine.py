"""`edge-agent convert | calibrate | inspect` as a user meets them (real files; fakes only for TensorRT)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.testing import fake_trt  # noqa: E402
from cli_helpers import run_cli  # noqa: E402
from edge_agent.inference.manifest import load_manifest  # noqa: E402
from edge_agent.testing.models import tiny_cnn
from edge_agent.testing.volumes import phantom_series  # noqa: E402

NO_TRT = importlib.util.find_spec("tensorrt") is None


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dicom")
    for i in range(4):
        phantom_series(root / f"s{i}", seed=10 + i, bright=i % 2 == 0)
    return root


@pytest.mark.skipif(not NO_TRT, reason="TensorRT is installed here")
def test_convert_without_tensorrt_is_one_sentence_exit_3(tmp_path):
    model = tiny_cnn(tmp_path / "model.onnx")
    proc = subprocess.run([sys.executable, "-m", "edge_agent", "convert", str(model), "--output",
                           str(tmp_path / "x.engine")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "TensorRT is not installed" in lines[0] and "python3-libnvinfer" in lines[0]
    assert "--system-site-packages" in lines[0]
    assert not (tmp_path / "x.engine").exists()


def test_convert_with_fake_tensorrt_records_engine_and_inspect_fits(monkeypatch, capsys, model_dir):
    fake_trt.install(monkeypatch)                       # FakeTensorRT + FakeCuda (no real TensorRT here)
    engine = model_dir / "model.engine"
    code, out, err = run_cli(capsys, "convert", str(model_dir / "model.onnx"), "--output", str(engine),
                             "--opt-batch", "4", "--max-batch", "8")
    assert code == 0, err
    assert "building fp16 engine" in err and "recorded the engine" in out
    m = load_manifest(model_dir)                          # verifies every sha256, the engine's too
    assert m.artefacts["engine"].path == engine.resolve()
    assert m.artefacts["engine"].fingerprint == (model_dir / "model.engine.json").resolve()
    fp = json.loads((model_dir / "model.engine.json").read_text())
    assert fp["profiles"]["input"]["max"] == [8, 3, 32, 32]      # C/H/W from the manifest's inputs
    code, out, _ = run_cli(capsys, "inspect", str(engine))
    assert code == 0
    assert "fits this machine: yes" in out and "input input: float32 [-1, 3, 32, 32]" in out
    assert "TensorRT 10.3.0 on Fake Orin" in out


def test_convert_bad_profile_flag_is_a_sentence(monkeypatch, capsys, model_dir):
    fake_trt.install(monkeypatch)
    code, _, err = run_cli(capsys, "convert", str(model_dir / "model.onnx"), "--profile", "input:1x3")
    assert code == 2 and "NAME:MIN:OPT:MAX" in err and "Traceback" not in err


@pytest.mark.skipif(not NO_TRT, reason="TensorRT is installed here")
def test_inspect_engine_without_tensorrt_says_why_it_does_not_fit(monkeypatch, capsys, model_dir):
    fake_trt.install(monkeypatch)
    engine = model_dir / "model.engine"
    assert run_cli(capsys, "convert", str(model_dir / "model.onnx"), "-o", str(engine))[0] == 0
    monkeypatch.undo()                                    # back to this machine: no TensorRT, no pycuda
    code, out, _ = run_cli(capsys, "inspect", str(engine))
    assert code == 0
    assert "fits this machine: no" in out and "TensorRT 10.3.0 but this machine has none" in out
    (model_dir / "model.engine.json").unlink()         # nothing vouches for the bytes, and no TensorRT reads them
    code, out, err = run_cli(capsys, "inspect", str(engine))
    assert code == 1 and out == "" and "cannot be inspected" in err and "no fingerprint" in err


def test_inspect_onnx_fp32_and_int8(capsys, model_dir, data_dir, tmp_path):
    code, out, _ = run_cli(capsys, "inspect", str(model_dir / "model.onnx"))
    assert code == 0
    assert "precision: fp32" in out and "input input: float32 ['N', 3, 32, 32]" in out
    assert "output probability: float32 ['N', 1]" in out and "fits this machine: yes" in out
    out_model = tmp_path / "model.int8.onnx"
    code, out, err = run_cli(capsys, "calibrate", str(model_dir / "model.onnx"), "--data", str(data_dir),
                             "--output", str(out_model), "--tolerance", "0.05")
    assert code == 0, err
    code, out, _ = run_cli(capsys, "inspect", str(out_model), "--json")
    info = json.loads(out)
    assert info["precision"] == "int8 (Q/DQ)" and info["quantisation"]["tensorrt_ready"] is True
    assert info["fits"]["ok"] is True


def test_calibrate_prints_agreement_and_writes(capsys, model_dir, data_dir, tmp_path):
    out_model = tmp_path / "q.onnx"
    code, out, err = run_cli(capsys, "calibrate", str(model_dir / "model.onnx"), "--data", str(data_dir),
                             "--validation", str(data_dir), "--output", str(out_model), "--tolerance", "0.05")
    assert code == 0, err
    assert "4 calibration series" in err
    assert "decisions agree 100.0%" in out and "AUC" in out and f"wrote {out_model}" in out
    assert out_model.is_file()


def test_calibrate_refuses_lossy_model(capsys, model_dir, data_dir, tmp_path):
    out_model = tmp_path / "q.onnx"
    code, out, err = run_cli(capsys, "calibrate", str(model_dir / "model.onnx"), "--data", str(data_dir),
                             "--output", str(out_model), "--tolerance", "0")
    assert code == 1
    assert "loses more than the tolerance 0.0" in err and "was not written" in err
    assert "decisions agree" in out                                       # what was lost is shown first
    assert len(err.strip().splitlines()) == 2 and "Traceback" not in err   # progress line + the sentence
    assert not out_model.exists()


def test_calibrate_needs_a_manifest(capsys, tmp_path, data_dir):
    model = tiny_cnn(tmp_path / "lonely.onnx")
    code, _, err = run_cli(capsys, "calibrate", str(model), "--data", str(data_dir), "--output",
                           str(tmp_path / "q.onnx"))
    assert code == 2 and "--manifest" in err


def test_inspect_missing_file(capsys, tmp_path):
    code, _, err = run_cli(capsys, "inspect", str(tmp_path / "nope.engine"))
    assert code == 1 and "does not exist" in err and "Traceback" not in err
