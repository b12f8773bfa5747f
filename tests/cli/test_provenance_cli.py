"""`edge-agent doctor`, `inspect` and `infer` show the provenance alerts and results carry (issue 14 §4):
model, version, sha256 of the artefact, backend, precision, engine fingerprint, agent version, config hash."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from edge_agent.testing import fake_trt  # noqa: E402
from cli_helpers import run_cli  # noqa: E402
from edge_agent.testing.models import write_model_folder  # noqa: E402

from edge_agent import __version__  # noqa: E402
from edge_agent.config import config_hash, load_config  # noqa: E402
from edge_agent.dicom.synth import SeriesHeaders, write_series  # noqa: E402


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rows(out: str) -> dict[str, str]:
    found = {}
    for line in out.splitlines()[:-1]:
        level, rest = line.split(None, 1)
        found[rest.split("  ")[0].strip()] = line
    return found


def test_doctor_header_and_model_lines_name_the_provenance(tmp_path, capsys, model_dir, monkeypatch):
    monkeypatch.delenv("EDGE_AGENT_SERIES_SETTLE", raising=False)
    config = tmp_path / "agent.toml"
    config.write_text("[series]\nsettle = 7.5\n")
    engines = model_dir.parent
    code, out, err = run_cli(capsys, "doctor", "--engines", str(engines), "--config", str(config))
    found = rows(out)
    expected = config_hash(load_config(config, overrides={"inference": {"engines": str(engines)}}))
    assert out.splitlines()[0].startswith("OK    edge-agent "), out
    assert f"{__version__}; config hash {expected} (of {config}" in found["edge-agent"]
    assert f"config hash {config_hash(load_config(config))}" not in found["edge-agent"]  # the flags count too
    line = found["model tiny"]
    assert line.startswith("OK") and "0.0.1: ONNX only" in line
    assert (f"sha256 {sha256_of(model_dir / 'model.onnx')[:12]}, backend onnxrt, precision fp32, "
            "engine fingerprint none") in line, line


def test_doctor_and_inspect_name_an_engine_and_its_fingerprint(capsys, model_dir, monkeypatch):
    fake_trt.install(monkeypatch)  # FakeTensorRT + FakeCuda: convert writes a real engine file and fingerprint
    engine = model_dir / "model.engine"
    code, _, err = run_cli(capsys, "convert", str(model_dir / "model.onnx"), "--output", str(engine),
                           "--opt-batch", "4", "--max-batch", "8")
    assert code == 0, err
    fingerprint = hashlib.sha256((model_dir / "model.engine.json").read_bytes()).hexdigest()[:16]

    code, out, _ = run_cli(capsys, "doctor", "--engines", str(model_dir.parent))
    line = rows(out)["model tiny"]
    assert "engine fits (fp16" in line, line
    assert (f"sha256 {sha256_of(engine)[:12]}, backend tensorrt, precision fp16, engine fingerprint "
            f"{fingerprint}") in line, line

    code, out, _ = run_cli(capsys, "inspect", str(engine))
    assert code == 0
    assert (f"provenance (as alerts and results name it): model tiny 0.0.1, sha256 {sha256_of(engine)}, backend "
            f"tensorrt, precision fp16, engine fingerprint {fingerprint}, edge-agent {__version__}") in out, out
    code, out, _ = run_cli(capsys, "inspect", str(engine), "--json")
    assert json.loads(out)["provenance"] == {
        "name": "tiny", "version": "0.0.1", "sha256": sha256_of(engine), "backend": "tensorrt", "precision": "fp16",
        "engine_fingerprint": fingerprint, "agent_version": __version__}


def test_inspect_onnx_names_its_model_sha256_backend_and_precision(capsys, model_dir, tmp_path):
    code, out, _ = run_cli(capsys, "inspect", str(model_dir / "model.onnx"), "--json")
    assert code == 0
    assert json.loads(out)["provenance"] == {
        "name": "tiny", "version": "0.0.1", "sha256": sha256_of(model_dir / "model.onnx"), "backend": "onnxrt",
        "precision": "fp32", "engine_fingerprint": None, "agent_version": __version__}
    loose = tmp_path / "loose.onnx"  # no manifest beside it lists the file
    loose.write_bytes((model_dir / "model.onnx").read_bytes())
    code, out, _ = run_cli(capsys, "inspect", str(loose))
    assert code == 0 and "model none (no manifest.json beside it lists this file)" in out
    assert f"sha256 {sha256_of(loose)}, backend onnxrt, precision fp32, engine fingerprint none" in out


def test_doctor_fails_with_one_sentence_on_a_config_that_does_not_load(tmp_path, capsys, model_dir):
    config = tmp_path / "agent.toml"
    config.write_text("[ingest]\npoll_interval = 0\n")
    code, out, err = run_cli(capsys, "doctor", "--engines", str(model_dir.parent), "--config", str(config))
    header = out.splitlines()[0]
    assert code != 0, out
    assert header.startswith("FAIL  edge-agent "), out
    assert "the configuration does not load: ingest.poll_interval" in header and "Traceback" not in out + err


def test_infer_prints_models_provenance_and_the_config_hash(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("EDGE_AGENT_SERIES_SETTLE", raising=False)
    engines = tmp_path / "engines"
    folder = write_model_folder(engines / "tiny_ich")
    volume = np.stack([np.full((16, 16), v, np.float32) for v in (30, 30, 70, 70, 30, 30)])
    write_series(volume, tmp_path / "series", spacing=(5.0, 1.0, 1.0),
                 headers=SeriesHeaders(series_description="HEAD 5mm", body_part="HEAD", study_description="CT HEAD"))
    code, out, err = run_cli(capsys, "infer", str(tmp_path / "series"), "--engines", str(engines),
                             "--backend", "onnxrt")
    assert code == 0, err
    result = json.loads(out)
    [entry] = result["models"]
    assert (entry["sha256"], entry["backend"], entry["precision"], entry["engine_fingerprint"]) == (
        sha256_of(folder / "model.onnx"), "onnxrt", "fp32", None)
    assert result["provenance"] == {"agent_version": __version__, "config_hash": None}  # no --config: no hash
    config = tmp_path / "agent.toml"
    config.write_text("[series]\nsettle = 7.5\n")
    code, out, err = run_cli(capsys, "infer", str(tmp_path / "series"), "--engines", str(engines),
                             "--backend", "onnxrt", "--config", str(config))
    assert code == 0, err
    assert json.loads(out)["provenance"]["config_hash"] == config_hash(load_config(config))


def test_run_check_names_the_config_hash_that_run_and_doctor_use(tmp_path, capsys, model_dir, monkeypatch):
    monkeypatch.delenv("EDGE_AGENT_SERIES_SETTLE", raising=False)
    config = tmp_path / "agent.toml"
    config.write_text("[series]\nsettle = 7.5\n")
    engines = model_dir.parent
    watch = tmp_path / "incoming"
    watch.mkdir()
    _, out, err = run_cli(capsys, "run", "--check", "--config", str(config), "--engines", str(engines),
                          "--watch", str(watch), "--state-dir", str(tmp_path / "state"))
    assert "Traceback" not in err
    expected = config_hash(load_config(config, overrides={"inference": {"engines": str(engines)},
                                                          "ingest": {"watch": str(watch)},
                                                          "agent": {"state_dir": str(tmp_path / "state")}}))
    first = out.splitlines()[0]
    assert first.startswith("OK  configuration: edge-agent ") and f"config hash {expected} " in first, first
    assert f"config hash {config_hash(load_config(config))}" not in first          # the flags count too
