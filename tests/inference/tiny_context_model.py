"""A tiny real 2.5-D ONNX model and its manifest (``preprocessing.context``), and its expected output in numpy.

Input ``(N, 3, H, W)``: channel 0 the slice's own window, 1 the neighbour below's, 2 the neighbour above's
(the channel order of docs/MANIFEST.md). Output ``sigmoid(sum_c W[c] * mean(x[:, c]) + B)`` per slice.
Every window is [0, 200] HU, i.e. (HU + 100) / 200 clipped to [0, 1]; slices filled with one HU value
between -100 and 100 make each channel mean exactly that number, so the expected probability is computed
here from the HU the test wrote and the neighbour indices it expects — never by the code under test.
``W`` weighs the neighbours more than the slice itself and with opposite signs, so a wrong neighbour shows.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

W = (2.0, 6.0, -5.0)
B = -0.5
WINDOW = (0.0, 200.0)
NAME = "tiny_ctx"


def context_onnx(path: Path, *, size: int = 16, weights=W, bias=B, channels: int = 3) -> Path:
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", channels, size, size])
    out = helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["N", 1])
    w = numpy_helper.from_array(np.asarray(weights, dtype=np.float32).reshape(channels, 1), "w")
    b = numpy_helper.from_array(np.asarray([bias], dtype=np.float32), "b")
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["m4"], axes=[2, 3], keepdims=0),  # (N, C)
        helper.make_node("MatMul", ["m4", "w"], ["z0"]),
        helper.make_node("Add", ["z0", "b"], ["z"]),
        helper.make_node("Sigmoid", ["z"], ["probability"]),
    ]
    graph = helper.make_graph(nodes, "tiny_ctx", [inp], [out], initializer=[w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edge-agent-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def context_manifest(*, sha: str = "0" * 64, offset_mm: float = 5.0, size: int = 16, channels: int = 3,
                     decision: dict | None = None) -> dict:
    return {
        "schema": 1, "name": NAME, "version": "0.0.1", "description": "tiny 2.5-D test model (synthetic)",
        "synthetic_training": True,
        "findings": [{"code": "lung_nodule", "label": "Lung nodule", "severity": "urgent"}],
        "applies_to": {"modality": ["CT"], "body_part": ["CHEST"], "min_slices": 4},
        "preprocessing": {"windows": [list(WINDOW)], "size": [size, size], "pixel_spacing_mm": None,
                          "dtype": "float32", "context": {"offset_mm": offset_mm, "windows": [list(WINDOW)]}},
        "inputs": [{"name": "input", "shape": [-1, channels, size, size], "dtype": "float32"}],
        "outputs": [{"name": "probability", "shape": [-1, 1], "dtype": "float32"}],
        "decision": decision or {"rule": "max", "threshold": 0.5},
        "artefacts": {"onnx": {"path": "model.onnx", "sha256": sha}},
    }


def write_context_model(folder: Path, **manifest_kw) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    onnx_path = context_onnx(folder / "model.onnx", size=manifest_kw.get("size", 16))
    sha = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(context_manifest(sha=sha, **manifest_kw), indent=2))
    return folder


def win(hu: float) -> float:
    c, w = WINDOW
    return min(1.0, max(0.0, (hu - (c - w / 2)) / w))


def expected_neighbours(n: int, k: int) -> tuple[list[int], list[int]]:
    """A regular series whose offset is ``k`` slices: ``i ± k``; near an end the end slice; at the end itself."""
    below = [i if i == 0 else max(i - k, 0) for i in range(n)]
    above = [i if i == n - 1 else min(i + k, n - 1) for i in range(n)]
    return below, above


def expected_probabilities(values_hu, below, above) -> np.ndarray:
    z = [W[0] * win(values_hu[i]) + W[1] * win(values_hu[below[i]]) + W[2] * win(values_hu[above[i]]) + B
         for i in range(len(values_hu))]
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))
