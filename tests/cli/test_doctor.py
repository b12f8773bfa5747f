"""`edge-agent doctor`: real checks on this machine — /proc inotify limits, disk, folders, a real Mosquitto."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cli_helpers import run_cli  # noqa: E402
from edge_agent.cli.doctor import broker_check, inotify_check  # noqa: E402
from edge_agent.testing.mosquitto import MosquittoBroker, free_port  # noqa: E402
from edge_agent.testing.models import manifest_for, tiny_cnn  # noqa: E402


@pytest.fixture
def engines(tmp_path) -> Path:
    folder = tmp_path / "engines" / "tiny"
    folder.mkdir(parents=True)
    tiny_cnn(folder / "model.onnx")
    manifest_for(folder)
    return folder.parent


def _lines(out: str) -> dict[str, str]:
    rows = {}
    for line in out.splitlines()[:-1]:
        level, rest = line.split(None, 1)
        rows[rest.split("  ")[0].strip()] = line
        assert level in ("OK", "WARN", "FAIL"), line
    return rows


def test_doctor_all_reachable_exits_zero(tmp_path, capsys, engines):
    broker = MosquittoBroker(tmp_path / "mqtt", persistence=False)
    broker.start()
    try:
        code, out, err = run_cli(capsys, "doctor", "--watch", str(tmp_path), "--broker", broker.url,
                                 "--engines", str(engines))
    finally:
        broker.stop()
    rows = _lines(out)
    assert code == 0, out + err
    assert rows["broker"].startswith("OK") and "accepted an MQTT connection" in rows["broker"]
    watches = Path("/proc/sys/fs/inotify/max_user_watches").read_text().strip()
    assert watches in rows["inotify max_user_watches"]
    assert rows["watch folder"].startswith("OK") and "GiB free" in rows["disk"]
    assert rows["model tiny"].startswith("OK") and "ONNX only" in rows["model tiny"]
    for subject in ("GPU", "TensorRT", "pycuda", "nvcc", "onnxruntime", "clock"):
        assert subject in rows
    assert "CPUExecutionProvider" in rows["onnxruntime"]


def test_doctor_nvcc_line_names_the_compiler_or_says_what_is_off(monkeypatch):
    import shutil

    from edge_agent.inference.trt import health, preprocess_kernel

    level, message = health.nvcc_check()
    if shutil.which("nvcc"):
        assert level == "OK" and f"at {shutil.which('nvcc')}" in message
        assert re.search(r"nvcc \d+\.\d+", message)
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(preprocess_kernel, "NVCC_FALLBACKS", ())
    level, message = health.nvcc_check()
    assert level == "WARN" and "nvcc is not on PATH" in message and "prepare their input on the CPU" in message


def test_doctor_broker_down_and_missing_folder_fail(tmp_path, capsys, engines):
    port = free_port()                                   # nothing listens there
    code, out, _ = run_cli(capsys, "doctor", "--watch", str(tmp_path / "nope"), "--broker",
                           f"mqtt://127.0.0.1:{port}", "--engines", str(engines))
    rows = _lines(out)
    assert code == 1
    assert rows["broker"].startswith("FAIL") and f"cannot reach the broker at 127.0.0.1:{port}" in rows["broker"]
    assert "Connection refused" in rows["broker"]
    assert rows["watch folder"].startswith("FAIL") and "does not exist" in rows["watch folder"]
    assert out.splitlines()[-1].startswith(f"{len(rows)} checks: 2 failed")


def test_doctor_broken_model_folder_fails(tmp_path, capsys, engines):
    (engines / "tiny" / "model.onnx").write_bytes(b"changed")
    code, out, _ = run_cli(capsys, "doctor", "--engines", str(engines))
    rows = _lines(out)
    assert code == 1 and rows["model tiny"].startswith("FAIL") and "sha256" in rows["model tiny"]


def test_inotify_low_limits_warn_with_the_sysctl_to_run(tmp_path):
    (tmp_path / "max_user_watches").write_text("8192\n")
    (tmp_path / "max_user_instances").write_text("1024\n")
    checks = inotify_check(tmp_path)
    assert checks[0][0] == "WARN" and "sysctl fs.inotify.max_user_watches=65536" in checks[0][2]
    assert checks[1] == ("OK", "inotify max_user_instances", "1024")


def test_broker_url_must_be_mqtt():
    level, _, message = broker_check("http://example.invalid")
    assert level == "FAIL" and "mqtt://HOST:1883" in message
