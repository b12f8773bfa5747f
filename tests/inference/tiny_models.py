"""Tiny real ONNX models and manifests written by the tests.

The model: input ``(N, C, H, W)`` → mean over C, H, W → ``sigmoid(mean * w_f + b_f)``
for each finding f → ``(N, F)``. With one window (40, 80) a slice filled with
70 HU has mean 0.875 and one at 30 HU 0.375, so ``w = 20, b = -12.5``
scores them about 0.99 and 0.0067 — an easy, exact reference in numpy.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def tiny_onnx(path: Path, *, channels: int = 1, size: tuple[int, int] = (16, 16), weights=(20.0,),
              biases=(-12.5,), batch: int | str = "N", input_name: str = "input",
              output_name: str = "probability") -> Path:
    """Write the tiny model described in the module docstring; returns ``path``."""
    f = len(weights)
    inp = helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch, channels, *size])
    out = helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [batch, f])
    w = numpy_helper.from_array(np.asarray([weights], dtype=np.float32), "w")
    b = numpy_helper.from_array(np.asarray(biases, dtype=np.float32), "b")
    nodes = [
        helper.make_node("ReduceMean", [input_name], ["m4"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Flatten", ["m4"], ["m"], axis=1),
        helper.make_node("MatMul", ["m", "w"], ["z0"]),
        helper.make_node("Add", ["z0", "b"], ["z"]),
        helper.make_node("Sigmoid", ["z"], [output_name]),
    ]
    graph = helper.make_graph(nodes, "tiny", [inp], [out], initializer=[w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edge-agent-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def tiny_reference(x: np.ndarray, weights=(20.0,), biases=(-12.5,)) -> np.ndarray:
    """What the tiny model computes, in numpy."""
    m = x.reshape(x.shape[0], -1).mean(axis=1, dtype=np.float64)[:, None]
    return 1.0 / (1.0 + np.exp(-(m * np.asarray(weights)[None] + np.asarray(biases)[None])))


def manifest_dict(name: str = "tiny_ich", *, onnx_sha: str = "0" * 64, findings=None, size=(16, 16),
                  windows=((40, 80),), batch: int = -1, applies_to: dict | None = None,
                  decision: dict | None = None) -> dict:
    findings = findings or [{"code": "ich", "label": "Intracranial haemorrhage", "severity": "critical"}]
    return {
        "schema": 1,
        "name": name,
        "version": "0.0.1",
        "description": "tiny test model (synthetic)",
        "synthetic_training": True,
        "findings": findings,
        "applies_to": applies_to if applies_to is not None else {
            "modality": ["CT"], "body_part": ["HEAD", "BRAIN"], "description_keywords": ["HEAD", "BRAIN"],
            "exclude_keywords": ["CTA", "ANGIO"], "slice_thickness_mm": [0.5, 6.0], "min_slices": 4,
            "min_coverage_mm": 10.0, "max_gantry_tilt_deg": 30.0},
        "preprocessing": {"windows": [list(w) for w in windows], "size": list(size), "pixel_spacing_mm": None,
                          "dtype": "float32"},
        "inputs": [{"name": "input", "shape": [batch, len(windows), *size], "dtype": "float32"}],
        "outputs": [{"name": "probability", "shape": [batch, len(findings)], "dtype": "float32"}],
        "decision": decision if decision is not None else {
            "rule": "top_k_mean", "k": 2, "threshold": 0.5, "preliminary": {"min_slices": 2, "threshold": 0.8}},
        "artefacts": {"onnx": {"path": "model.onnx", "sha256": onnx_sha}},
    }


def write_model_folder(folder: Path, name: str = "tiny_ich", *, weights=(20.0,), biases=(-12.5,),
                       model_batch: int | str = "N", **manifest_kw) -> Path:
    """A model folder: model.onnx + manifest.json with the right sha256."""
    folder.mkdir(parents=True, exist_ok=True)
    windows = manifest_kw.get("windows", ((40, 80),))
    size = manifest_kw.get("size", (16, 16))
    onnx_path = tiny_onnx(folder / "model.onnx", channels=len(windows), size=size, weights=weights,
                          biases=biases, batch=model_batch)
    sha = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    data = manifest_dict(name, onnx_sha=sha, **manifest_kw)
    (folder / "manifest.json").write_text(json.dumps(data, indent=2))
    return folder
