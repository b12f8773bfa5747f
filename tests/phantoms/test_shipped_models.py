"""The shipped demo models: manifests match their artefacts, and the models separate fresh phantoms.

The ONNX models are run with ONNX Runtime directly (what ships), on phantom seeds from the
evaluation range (never used in training).
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edge_agent.engines import ENGINES_DIR
from edge_agent.phantoms import chest_phantom, head_phantom
from edge_agent.preprocess import PreprocessSpec, prepare_volume

MODELS = ("ich", "lung_nodule")
EVAL_SEED0 = 3_000_000


def _manifest(name: str) -> dict:
    return json.loads((ENGINES_DIR / name / "manifest.json").read_text())


@pytest.mark.parametrize("name", MODELS)
def test_manifest_matches_the_model_file(name):
    m = _manifest(name)
    path = ENGINES_DIR / name / m["artefacts"]["onnx"]["path"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == m["artefacts"]["onnx"]["sha256"]
    assert path.stat().st_size <= 10 * 1024 * 1024
    assert m["schema"] == 1 and m["name"] == name and m["synthetic_training"] is True
    assert m["findings"][0]["code"] == name
    assert (ENGINES_DIR / name / "README.md").read_text().count("synthetic") >= 1


@pytest.mark.parametrize("name", MODELS)
def test_manifest_loads_with_the_project_loader(name):
    from edge_agent.inference import load_manifest

    loaded = load_manifest(ENGINES_DIR / name / "manifest.json")
    assert loaded.name == name
    assert loaded.preprocessing == PreprocessSpec.from_dict(_manifest(name)["preprocessing"])


@pytest.mark.parametrize("name", MODELS)
def test_onnx_graph_has_the_contract_io(name):
    m = _manifest(name)
    model = onnx.load(str(ENGINES_DIR / name / "model.onnx"))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    (inp,), (out,) = model.graph.input, model.graph.output
    assert inp.name == "input" and out.name == "probability"
    dims = [d.dim_value or d.dim_param for d in inp.type.tensor_type.shape.dim]
    assert isinstance(dims[0], str) and dims[1:] == m["inputs"][0]["shape"][1:]
    session = ort.InferenceSession(str(ENGINES_DIR / name / "model.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((3, *m["inputs"][0]["shape"][1:]), dtype=np.float32)
    (p,) = session.run(["probability"], {"input": x})
    assert p.shape == (3, 1) and p.dtype == np.float32 and np.all((p >= 0) & (p <= 1))


def _series_score(name: str, session, ph) -> float:
    m = _manifest(name)
    spec = PreprocessSpec.from_dict(m["preprocessing"])
    x = prepare_volume(ph.volume_hu, ph.spacing[1:], spec, ph.slice_positions)  # a 2.5-D model's neighbours too
    probs = session.run(["probability"], {"input": x})[0][:, 0]
    k = int(m["decision"].get("k", 1))
    return float(np.sort(probs)[::-1][:k].mean())


def test_ich_model_scores_bleeds_above_normal_heads():
    session = ort.InferenceSession(str(ENGINES_DIR / "ich" / "model.onnx"), providers=["CPUExecutionProvider"])
    threshold = _manifest("ich")["decision"]["threshold"]
    bleeds, normals = [], []
    for i, kind in enumerate(("iph", "sdh", "edh", "ivh")):
        seed = EVAL_SEED0 + 900_000 + i
        bleeds.append(_series_score("ich", session, head_phantom(seed, bleed=kind, volume_ml=10.0, slices=24)))
        normals.append(_series_score("ich", session, head_phantom(seed, bleed=None, slices=24)))
    assert all(b > n for b, n in zip(bleeds, normals)), (bleeds, normals)
    assert sum(b >= threshold for b in bleeds) >= 3
    assert sum(n < threshold for n in normals) >= 3


def test_lung_nodule_model_scores_nodules_above_clear_chests():
    session = ort.InferenceSession(str(ENGINES_DIR / "lung_nodule" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    pos, neg = [], []
    for i, kind in enumerate(("solid", "solid", "ground_glass")):
        seed = EVAL_SEED0 + 950_000 + i
        pos.append(_series_score("lung_nodule", session, chest_phantom(seed, nodule=kind, diameter_mm=16.0,
                                                                        slices=20, thickness_mm=5.0)))
        neg.append(_series_score("lung_nodule", session, chest_phantom(seed, nodule=None, slices=20,
                                                                        thickness_mm=5.0)))
    assert np.mean(pos) > np.mean(neg) and sum(p > n for p, n in zip(pos, neg)) >= 2, (pos, neg)
