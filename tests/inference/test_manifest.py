"""Manifest loading: validation with one-sentence errors, sha256 refusal, add_artefact."""

import json

import pytest

from edge_agent.engines import ENGINES_DIR
from edge_agent.inference.manifest import ManifestError, add_artefact, load_manifest, sha256_file


def _edit(folder, change):
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return folder


def test_valid_manifest_loads_every_block(model_folder):
    m = load_manifest(model_folder)
    assert (m.name, m.version, m.synthetic_training) == ("tiny_ich", "0.0.1", True)
    assert m.findings[0].code == "ich" and m.findings[0].severity == "critical"
    assert m.applies_to.modality == ("CT",) and m.applies_to.slice_thickness_mm == (0.5, 6.0)
    assert m.preprocessing.windows == ((40.0, 80.0),) and m.preprocessing.size == (16, 16)
    assert m.inputs[0].shape == (-1, 1, 16, 16) and m.outputs[0].name == "probability"
    assert m.decision.rule == "top_k_mean" and m.decision.k == 2 and m.decision.preliminary.min_slices == 2
    assert m.artefacts["onnx"].path == (model_folder / "model.onnx").resolve()
    assert load_manifest(model_folder / "manifest.json") == m


@pytest.mark.parametrize("change, field", [
    (lambda d: d.update(colour="red"), "'colour' is not a known key"),
    (lambda d: d["applies_to"].update(modalities=["CT"]), "'applies_to.modalities' is not a known key"),
    (lambda d: d.pop("decision"), "'decision' is required but missing"),
    (lambda d: d.update(schema=2), "'schema' is 2 but this edge-agent reads schema 1"),
    (lambda d: d.update(name="Bad Name"), "'name' has an invalid value"),
    (lambda d: d["findings"][0].update(severity="sort of bad"), "'findings[0].severity' must be one of"),
    (lambda d: d["applies_to"].update(min_slices="8"), "'applies_to.min_slices' must be an integer"),
    (lambda d: d["applies_to"].update(min_coverage_mm=float("nan")), "must be a finite number, not nan"),
    (lambda d: d["applies_to"].update(slice_thickness_mm=[5, 1]), "slice_thickness_mm[1]' must be ≥ 5"),
    (lambda d: d["preprocessing"].update(windows=[[40, 0]]), "'preprocessing.windows[0][1]'"),
    (lambda d: d["inputs"][0].update(shape=[-1, 3, 16, 16]), "'inputs[0].shape[1]' is 3 but preprocessing gives 1"),
    (lambda d: d["inputs"][0].update(dtype="float16"), "'inputs[0].dtype' is float16"),
    (lambda d: d["outputs"][0].update(shape=[-1, 2]), "'outputs[0].shape' must be [batch, 1]"),
    (lambda d: d["decision"].update(rule="vote"), "'decision.rule' must be one of top_k_mean, max"),
    (lambda d: d["decision"].update(threshold=2), "decision.threshold must lie in [0, 1]"),
    (lambda d: d["decision"]["preliminary"].pop("threshold"), "'decision.preliminary.threshold' is required"),
    (lambda d: d["decision"].update(slice_threshold="low"), "'decision.slice_threshold' must be a finite number"),
    (lambda d: d["decision"].update(slice_threshold=0.99), "must not exceed decision.threshold"),
    (lambda d: d["artefacts"].pop("onnx"), "'artefacts' must be an object with at least an 'onnx' entry"),
    (lambda d: d["artefacts"]["onnx"].update(sha256="abc"), "'artefacts.onnx.sha256' has an invalid value"),
    (lambda d: d["artefacts"]["onnx"].update(path="../../etc/passwd"), "must be a path inside the model folder"),
])
def test_invalid_manifests_name_the_field_in_one_sentence(model_folder, change, field):
    _edit(model_folder, change)
    with pytest.raises(ManifestError) as info:
        load_manifest(model_folder)
    message = str(info.value)
    assert field in message
    assert message.endswith(".") and "\n" not in message and "Traceback" not in message


def test_slice_threshold_is_read_and_defaults_to_the_series_threshold(model_folder):
    default = load_manifest(model_folder).decision
    assert default.slice_threshold is None and default.slice_cut == default.threshold
    _edit(model_folder, lambda d: d["decision"].update(slice_threshold=0.25))
    assert load_manifest(model_folder).decision.slice_cut == 0.25


def test_tampered_artefact_is_refused_but_inspectable(model_folder):
    onnx_path = model_folder / "model.onnx"
    onnx_path.write_bytes(onnx_path.read_bytes() + b"\0")
    with pytest.raises(ManifestError, match="does not match the sha256"):
        load_manifest(model_folder)
    assert load_manifest(model_folder, verify=False).name == "tiny_ich"


def test_missing_artefact_and_missing_manifest_and_bad_json(model_folder, tmp_path):
    (model_folder / "model.onnx").unlink()
    with pytest.raises(ManifestError, match="is missing"):
        load_manifest(model_folder)
    with pytest.raises(ManifestError, match="No model manifest at"):
        load_manifest(tmp_path / "nowhere")
    (model_folder / "manifest.json").write_text("{ not json")
    with pytest.raises(ManifestError, match="is not valid JSON"):
        load_manifest(model_folder)


def test_documented_example_keys_are_accepted(tmp_path):
    """The example block of docs/MANIFEST.md parses (artefact check off: its sha is a placeholder)."""
    from edge_agent.inference.manifest import parse_manifest
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "MANIFEST.md").read_text()
    block = doc.split("```json", 1)[1].split("```", 1)[0]
    data = json.loads(block.replace('"<hex>"', '"' + "0" * 64 + '"'))
    m = parse_manifest(data, tmp_path, verify=False)
    assert m.name == "ich" and m.decision.k == 2 and m.preprocessing.pixel_spacing_mm == 1.8
    assert m.decision.slice_cut == 0.3


def test_add_artefact_records_sha_and_keeps_manifest_valid(model_folder):
    engine = model_folder / "model.engine"
    engine.write_bytes(b"fake engine bytes")  # a file's bytes; no TensorRT involved
    fp = model_folder / "model.engine.json"
    fp.write_text("{}")
    m = add_artefact(model_folder, "engine", engine, fingerprint=fp)
    assert m.artefacts["engine"].sha256 == sha256_file(engine)
    assert m.artefacts["engine"].fingerprint == fp.resolve()
    assert load_manifest(model_folder).artefacts["engine"].path == engine.resolve()
    with pytest.raises(ManifestError, match="outside the model folder"):
        add_artefact(model_folder, "engine", model_folder.parent / "elsewhere.engine")


SHIPPED = sorted(p.parent for p in ENGINES_DIR.glob("*/manifest.json"))


@pytest.mark.parametrize("folder", SHIPPED or [None], ids=[p.name for p in SHIPPED] or ["none"])
def test_shipped_manifests_validate(folder):
    if folder is None:
        pytest.skip("no shipped models in engines/ yet")
    m = load_manifest(folder)
    assert m.synthetic_training is True  # shipped demo models carry the disclaimer
    assert m.findings
    if m.plugin is None:  # a network; a plug-in (coronary_calcium) names its step instead
        assert m.artefacts["onnx"].path.is_file()
    else:
        assert m.artefacts == {} and m.preprocessing is None
