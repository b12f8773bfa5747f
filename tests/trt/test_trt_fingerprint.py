"""Engine fingerprints and the availability probe — real files, no fakes, no TensorRT needed."""

from __future__ import annotations

import importlib
import importlib.util
import json

import pytest

from edge_agent.errors import MissingDependency
from edge_agent.inference import trt
from edge_agent.inference.trt.fingerprint import (
    EngineRefused,
    Platform,
    current_platform,
    fingerprint_path,
    make_fingerprint,
    read_fingerprint,
    read_l4t_release,
    sha256_file,
    verify_engine,
    write_fingerprint,
)

HERE = Platform("10.3.0", "Orin", "8.7", "36.4.0")


@pytest.fixture
def engine(tmp_path, tiny_onnx):
    path = tmp_path / "model.engine"
    path.write_bytes(b"serialized engine bytes")
    fp = make_fingerprint(tiny_onnx, path, HERE, precision="fp16",
                          profiles={"input": {"min": (1, 3, 32, 32), "opt": (4, 3, 32, 32), "max": (8, 3, 32, 32)}})
    write_fingerprint(fp, path)
    return path


def _one_sentence(text: str) -> None:
    assert "\n" not in text and text.endswith(".") and "Traceback" not in text


def test_roundtrip_and_fit(engine, tiny_onnx):
    assert fingerprint_path(engine).name == "model.engine.json"
    fp = read_fingerprint(engine)
    assert fp.onnx_sha256 == sha256_file(tiny_onnx) and fp.engine_sha256 == sha256_file(engine)
    assert fp.profiles["input"]["max"] == [8, 3, 32, 32] and fp.schema == 1
    assert verify_engine(engine, HERE, onnx_sha256=sha256_file(tiny_onnx)) == fp
    assert not list(engine.parent.glob("*.tmp"))


@pytest.mark.parametrize("platform,words", [
    (Platform("8.6.2", "Orin", "8.7", "36.4.0"), "TensorRT 10.3.0 but this machine has 8.6.2"),
    (Platform("10.3.0", "Xavier", "7.2", "36.4.0"), "GPU Orin but this machine has Xavier"),
    (Platform("10.3.0", "Orin", "8.7", "36.3.0"), "L4T release 36.4.0 but this machine has 36.3.0"),
    (Platform(None, None, None, None), "TensorRT 10.3.0 but this machine has none"),
])
def test_mismatch_refused_with_convert_sentence(engine, platform, words):
    with pytest.raises(EngineRefused) as info:
        verify_engine(engine, platform)
    assert words in str(info.value) and "edge-agent convert" in str(info.value)
    _one_sentence(str(info.value))


def test_other_onnx_refused(engine):
    with pytest.raises(EngineRefused, match="different ONNX file"):
        verify_engine(engine, HERE, onnx_sha256="0" * 64)


def test_corrupt_missing_or_malformed_refused(engine):
    engine.write_bytes(engine.read_bytes()[:-1])
    with pytest.raises(EngineRefused, match="corrupt") as info:
        verify_engine(engine, HERE)
    _one_sentence(str(info.value))
    fpath = fingerprint_path(engine)
    good = fpath.read_text()
    for bad in ("{not json", json.dumps({**json.loads(good), "schema": 7}),
                json.dumps({**json.loads(good), "surprise": 1}), json.dumps({**json.loads(good), "precision": "fp8"})):
        fpath.write_text(bad)
        with pytest.raises(EngineRefused, match="unreadable") as info:
            verify_engine(engine, HERE)
        _one_sentence(str(info.value))
    fpath.unlink()
    with pytest.raises(EngineRefused, match="no fingerprint file"):
        verify_engine(engine, HERE)


def test_l4t_release_parsed_from_real_file(tmp_path):
    f = tmp_path / "nv_tegra_release"
    f.write_text("# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64, DATE: ...\n")
    assert read_l4t_release(f) == "36.4.0"
    f.write_text("garbage\n")
    assert read_l4t_release(f) is None
    assert read_l4t_release(tmp_path / "absent") is None


def test_without_tensorrt_the_package_imports_and_says_what_is_missing():
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here")
    assert not trt.is_available()
    why = trt.why_unavailable()
    assert "python3-libnvinfer" in why and "--system-site-packages" in why
    with pytest.raises(MissingDependency) as info:
        trt.import_tensorrt()
    assert info.value.exit_code == 3
    assert trt.tensorrt_version() is None
    platform = current_platform()
    assert platform.tensorrt_version is None
    # the runner and builder modules import without TensorRT (imports are lazy)
    for name in ("runner", "builder", "loader", "buffers", "preprocess_kernel", "describe", "health", "measure"):
        importlib.import_module(f"edge_agent.inference.trt.{name}")
    assert trt.runner.TrtRunner.__name__ == "TrtRunner"
