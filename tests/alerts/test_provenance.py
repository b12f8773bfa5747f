"""Provenance everywhere (issue 14 §4): every alert, result, SR and decided/ALERT log line names the model, its
version, the sha256 of the artefact that ran, the backend, the precision, the engine fingerprint, the agent's
version and its config hash.

Real parts: the streaming pipeline on real DICOM files with a real tiny ONNX model (fp32, and a Q/DQ one for
int8) on ONNX Runtime, the shipped JSON Schemas, highdicom's SR; the sha256 is checked against hashlib of the
file on disk, not against what the agent says.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge_agent.testing.models import manifest_dict, write_model_folder  # noqa: E402

from edge_agent import __version__  # noqa: E402
from edge_agent.alerts.payloads import PayloadError, build_alert, build_result, utc_now, validate_payload  # noqa: E402
from edge_agent.config import Config, config_hash, load_config  # noqa: E402
from edge_agent.dicom.synth import SeriesHeaders, write_series  # noqa: E402
from edge_agent.inference.manifest import load_manifest  # noqa: E402
from edge_agent.inference.models import ModelSet  # noqa: E402
from edge_agent.results.algorithm import agent_provenance, algorithm_for  # noqa: E402
from edge_agent.service.pipeline import SeriesPipeline  # noqa: E402
from edge_agent.testing.outputs import RecordingOutputs, ingested_file  # noqa: E402
from edge_agent.testing.wait import wait

DECISION = {"rule": "top_k_mean", "k": 2, "threshold": 0.9, "preliminary": {"min_slices": 1, "threshold": 0.6}}


class ProvenanceOutputs(RecordingOutputs):
    """The recorder with the agent's provenance, as the agent's outputs carry it."""

    def __init__(self, provenance):
        super().__init__()
        self.provenance = provenance


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def qdq_model_folder(folder: Path) -> Path:
    """The tiny model of edge_agent/testing/models.py with an int8 Q/DQ pair on its input (what calibrate makes)."""
    folder.mkdir(parents=True, exist_ok=True)
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 16, 16])
    out = helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["N", 1])
    inits = [numpy_helper.from_array(np.asarray([[20.0]], np.float32), "w"),
             numpy_helper.from_array(np.asarray([-12.5], np.float32), "b"),
             numpy_helper.from_array(np.asarray(1 / 127, np.float32), "scale"),
             numpy_helper.from_array(np.asarray(0, np.int8), "zero")]
    nodes = [helper.make_node("QuantizeLinear", ["input", "scale", "zero"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["dq"]),
             helper.make_node("ReduceMean", ["dq"], ["m4"], axes=[1, 2, 3], keepdims=1),
             helper.make_node("Flatten", ["m4"], ["m"], axis=1),
             helper.make_node("MatMul", ["m", "w"], ["z0"]),
             helper.make_node("Add", ["z0", "b"], ["z"]),
             helper.make_node("Sigmoid", ["z"], ["probability"])]
    model = helper.make_model(helper.make_graph(nodes, "tiny_qdq", [inp], [out], initializer=inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(folder / "model.onnx"))
    data = manifest_dict("tiny_ich", onnx_sha=sha256_of(folder / "model.onnx"), decision=DECISION)
    (folder / "manifest.json").write_text(json.dumps(data, indent=2))
    return folder


def series_files(tmp_path, values_hu):
    volume = np.stack([np.full((16, 16), v, np.float32) for v in values_hu])
    headers = SeriesHeaders(series_description="HEAD 5mm", body_part="HEAD", study_description="CT HEAD")
    return headers, write_series(volume, tmp_path / "series", spacing=(5.0, 1.0, 1.0), headers=headers)


ingested = ingested_file


class Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture
def log_lines():
    """The messages of the series story and the pipeline's ALERT lines (whatever earlier CLI tests set up)."""
    handler = Lines()
    loggers = [logging.getLogger(n) for n in ("edge_agent.series", "edge_agent.service.pipeline")]
    before = [(lg.level, lg.disabled) for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
        lg.disabled = False
    yield handler.lines
    for lg, (level, disabled) in zip(loggers, before):
        lg.removeHandler(handler)
        lg.setLevel(level)
        lg.disabled = disabled


def run_series(engines: Path, tmp_path: Path, provenance: dict, values=(30, 30, 70, 70, 30, 30, 30, 30)):
    out = ProvenanceOutputs(provenance)
    pipeline = SeriesPipeline(lambda: ModelSet.load(engines, backend="onnxrt", threads=1),
                              tmp_path / "series.sqlite3", out, site="s", device="d", settle=0.3, batch=4)
    pipeline.start()
    try:
        _, paths = series_files(tmp_path, list(values))
        for p in paths:
            pipeline.submit(ingested(p))
        wait(lambda: out.results)
    finally:
        pipeline.stop()
    return out


@pytest.mark.parametrize("kind", ["fp32", "int8"])
def test_alerts_results_and_log_lines_name_the_bytes_that_ran(tmp_path, log_lines, kind):
    engines = tmp_path / "engines"
    folder = (write_model_folder(engines / "tiny_ich", decision=DECISION) if kind == "fp32"
              else qdq_model_folder(engines / "tiny_ich"))
    on_disk = sha256_of(folder / "model.onnx")  # independently of the agent
    provenance = agent_provenance(config_hash(Config()))
    out = run_series(engines, tmp_path, provenance)

    assert [a["state"] for a in out.alerts] == ["preliminary", "final"]
    for alert in out.alerts:
        validate_payload("alert", alert)
        assert alert["model"] == {"name": "tiny_ich", "version": "0.0.1", "synthetic_training": True,
                                  "sha256": on_disk, "backend": "onnxrt", "precision": kind,
                                  "engine_fingerprint": None}
        assert alert["provenance"] == {"agent_version": __version__, "config_hash": provenance["config_hash"]}

    [result] = out.results
    [entry] = result["models"]
    assert (entry["sha256"], entry["backend"], entry["precision"], entry["engine_fingerprint"]) == (
        on_disk, "onnxrt", kind, None)
    payload = build_result(site="s", device="d", series={}, result=result, timestamps={"decided": utc_now()},
                           provenance=out.provenance)
    assert payload["result"]["provenance"] == provenance and payload["result"]["models"][0]["sha256"] == on_disk

    short = on_disk[:12]
    decided = [line for line in log_lines if " decided: " in line]
    assert decided and f"tiny_ich 0.0.1 [synthetic-trained] (sha256 {short}, onnxrt {kind}): ich p=" in decided[-1]
    alerts = [line for line in log_lines if line.startswith("ALERT ")]
    assert len(alerts) == 2
    assert all(f"model=tiny_ich 0.0.1 (sha256 {short}, onnxrt {kind})" in line for line in alerts), alerts


def test_provenance_is_computed_once_per_model_not_per_alert(tmp_path, monkeypatch):
    folder = write_model_folder(tmp_path / "engines" / "tiny_ich")
    m = load_manifest(folder)
    first = algorithm_for(m, "onnxrt")
    again = load_manifest(folder)  # what a reload of the models gives (read before file reads are forbidden)
    import edge_agent.results.algorithm as algorithm

    def no_more_reads(*_a, **_k):
        raise AssertionError("provenance read a file again")

    monkeypatch.setattr(algorithm, "onnx_precision", no_more_reads)
    monkeypatch.setattr(algorithm.hashlib, "sha256", no_more_reads)
    assert algorithm_for(again, "onnxrt") == first  # a reloaded, equal manifest: cached
    assert algorithm_for(m, "onnxrt") is first
    monkeypatch.undo()
    assert first.sha256 == hashlib.sha256((folder / "model.onnx").read_bytes()).hexdigest()


def test_a_plugin_model_names_its_manifest_and_no_precision():
    from edge_agent.engines import ENGINES_DIR

    m = load_manifest(Path(ENGINES_DIR) / "coronary_calcium")
    a = algorithm_for(m, "plugin")
    assert a.sha256 == sha256_of(m.path) and a.backend == "plugin"
    assert a.precision == "" and a.engine_fingerprint is None


def test_tensorrt_provenance_names_the_engine_and_its_fingerprint(tmp_path):
    folder = write_model_folder(tmp_path / "tiny_ich")
    engine, fingerprint = folder / "model.engine", folder / "model.engine.json"
    engine.write_bytes(b"not really an engine, but bytes with a sha256")
    fingerprint.write_text(json.dumps({"precision": "int8", "engine_sha256": sha256_of(engine)}))
    data = json.loads((folder / "manifest.json").read_text())
    data["artefacts"]["engine"] = {"path": "model.engine", "sha256": sha256_of(engine),
                                   "fingerprint": "model.engine.json"}
    (folder / "manifest.json").write_text(json.dumps(data))
    m = load_manifest(folder)
    trt = algorithm_for(m, "tensorrt")
    assert (trt.sha256, trt.backend, trt.precision) == (sha256_of(engine), "tensorrt", "int8")
    assert trt.engine_fingerprint == hashlib.sha256(fingerprint.read_bytes()).hexdigest()[:16]
    ort = algorithm_for(m, "onnxrt")  # the fall-back names the ONNX bytes, not the engine's
    assert (ort.sha256, ort.precision, ort.engine_fingerprint) == (sha256_of(folder / "model.onnx"), "fp32", None)
    alert = build_alert(site="s", device="d", series={"study_instance_uid": "1.2", "series_instance_uid": "1.3"},
                        model={"name": "tiny_ich", "version": "0.0.1", "synthetic_training": False,
                               "sha256": trt.sha256, "backend": "tensorrt", "precision": "int8",
                               "engine_fingerprint": trt.engine_fingerprint},
                        finding={"code": "ich", "probability": 0.9, "positive": True}, state="final", revision=1,
                        timestamps={"raised": utc_now()})
    assert alert["model"]["engine_fingerprint"] == trt.engine_fingerprint


def test_config_hash_changes_with_a_setting_not_with_credentials(tmp_path, monkeypatch):
    for name in ("EDGE_AGENT_MQTT_PASSWORD", "EDGE_AGENT_SERIES_SETTLE"):
        monkeypatch.delenv(name, raising=False)
    config = tmp_path / "agent.toml"
    config.write_text('[mqtt]\nbroker = "mqtts://broker:8883"\npassword_file = "/etc/edge-agent/one"\n'
                      '[series]\nsettle = 5.0\n')
    base = config_hash(load_config(config))
    assert len(base) == 16 and int(base, 16) >= 0
    assert config_hash(load_config(config)) == base                      # stable
    monkeypatch.setenv("EDGE_AGENT_MQTT_PASSWORD", "s3cret")
    assert config_hash(load_config(config)) == base                      # a password is not a setting
    changed = config.read_text().replace("/etc/edge-agent/one", "/etc/edge-agent/two")
    config.write_text(changed + '[dicom]\ntls_key = "/etc/k.pem"\ntls_cert = "/etc/c.pem"\n')
    assert config_hash(load_config(config)) == base                      # credentials and TLS material neither
    config.write_text(changed.replace("settle = 5.0", "settle = 6.0"))
    assert config_hash(load_config(config)) != base                      # a setting is
    monkeypatch.setenv("EDGE_AGENT_SERIES_SETTLE", "5.0")
    assert config_hash(load_config(config)) == base                      # the effective value counts
    cfg = load_config(config)
    from edge_agent.config import ModelSettings

    cfg.models = {"ich": ModelSettings(mode="shadow")}
    assert config_hash(cfg) != base                                       # [models.<name>] tables count


def test_schemas_take_the_new_fields_and_refuse_malformed_ones():
    args = dict(site="s", device="d", series={"study_instance_uid": "1.2", "series_instance_uid": "1.3"},
                finding={"code": "ich", "probability": 0.9, "positive": True}, state="final", revision=1,
                timestamps={"raised": utc_now()})
    model = {"name": "ich", "version": "1", "synthetic_training": False, "sha256": "a" * 64, "backend": "onnxrt",
             "precision": "fp16", "engine_fingerprint": None}
    alert = build_alert(model=model, provenance={"agent_version": "9.9", "config_hash": "0123456789abcdef"}, **args)
    assert alert["provenance"] == {"agent_version": "9.9", "config_hash": "0123456789abcdef"}
    old = build_alert(model={"name": "ich", "version": "1", "synthetic_training": False}, **args)
    assert "sha256" not in old["model"] and old["provenance"] == {"agent_version": __version__, "config_hash": None}
    for bad, where in (({**model, "sha256": "xyz"}, "model/sha256"), ({**model, "precision": "fp8"}, "model/precision"),
                       ({**model, "engine_fingerprint": "short"}, "model/engine_fingerprint")):
        with pytest.raises(PayloadError, match=where):
            build_alert(model=bad, **args)
    with pytest.raises(PayloadError, match="provenance/config_hash"):
        build_alert(model=model, provenance={"agent_version": "1", "config_hash": "not hex!"}, **args)

    result = {"series_instance_uid": "1.3", "study_instance_uid": "1.2", "slices": 8, "status": "analysed",
              "findings": [], "models": [{"name": "ich", "version": "1", "backend": "onnxrt", "status": "analysed",
                                          **{k: model[k] for k in ("sha256", "precision", "engine_fingerprint")}}]}
    payload = build_result(site="s", device="d", series={}, result=result, timestamps={})
    assert payload["schema"] == "edge-agent/result/2"
    assert payload["result"]["provenance"]["agent_version"] == __version__
    with pytest.raises(PayloadError, match="result/models/0/precision"):
        build_result(site="s", device="d", series={}, timestamps={},
                     result={**result, "models": [{**result["models"][0], "precision": "double"}]})
    # still a valid version-1 result: provenance sits inside `result`, which version 1 leaves open
    from importlib import resources

    import jsonschema

    v1 = json.loads(resources.files("edge_agent").joinpath("schemas", "result-1.json").read_text())
    jsonschema.validate({**payload, "schema": "edge-agent/result/1"}, v1)


def test_the_sr_names_engine_fingerprint_agent_version_and_config_hash(tmp_path):
    import pydicom

    from edge_agent.results.content import Algorithm, ModelResult
    from edge_agent.results.delivery import encode
    from edge_agent.results.sr import build_sr
    from edge_agent.results.study import read_study_header
    from edge_agent.service.simulator import ROUTINE_HEAD, render

    _, paths = render("ich", 61, tmp_path, slices=6, **ROUTINE_HEAD)
    ds = pydicom.dcmread(paths[0], stop_before_pixels=True)
    algorithm = Algorithm("ich", "2.0.0", "ab" * 32, "tensorrt", "fp16", True, "0123456789abcdef")
    result = ModelResult(ds.SeriesInstanceUID, ds.StudyInstanceUID, algorithm,
                         [{"code": "ich", "label": "Intracranial haemorrhage", "probability": 0.93, "positive": True,
                           "threshold": 0.5, "key_slices": [{"sop_instance_uid": ds.SOPInstanceUID,
                                                             "probability": 0.9}],
                           "volume_ml": None, "diameter_mm": None}], "HEAD")
    sr = build_sr(result, read_study_header(paths[0]), revision=1, site="s", device="d", decided_at=1.8e9,
                  provenance={"agent_version": __version__, "config_hash": "fedcba9876543210"})
    back = pydicom.dcmread(__import__("io").BytesIO(encode(sr)))
    texts = []

    def walk(items):
        for item in items:
            if getattr(item, "ValueType", "") == "TEXT":
                texts.append(item.TextValue)
            walk(item.get("ContentSequence", []))

    walk(back.ContentSequence)
    for expected in (f"sha256={'ab' * 32}", "backend=tensorrt", "precision=fp16",
                     "engine_fingerprint=0123456789abcdef", f"agent_version={__version__}",
                     "config_hash=fedcba9876543210", "threshold=0.5"):
        assert expected in texts, (expected, texts)
    # An ONNX result (no engine fingerprint) keeps the digest it had before the field existed: an upgrade
    # sends no new SR revision for an unchanged answer.
    onnx_result = ModelResult(result.series_instance_uid, result.study_instance_uid,
                              Algorithm("ich", "2.0.0", "ab" * 32, "onnxrt", "fp32", True), result.findings, "HEAD")
    before = {"series": result.series_instance_uid, "findings": result.findings,
              "algorithm": {"name": "ich", "version": "2.0.0", "sha256": "ab" * 32, "backend": "onnxrt",
                            "precision": "fp32", "synthetic_training": True}}
    assert onnx_result.digest() == hashlib.sha256(
        json.dumps(before, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert result.digest() != onnx_result.digest()
