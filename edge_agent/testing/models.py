"""Tiny real ONNX models and their manifests, with what they compute in numpy (tests and benchmarks).

* :func:`tiny_onnx` / :func:`write_model_folder`: input ``(N, C, H, W)`` → mean over C, H, W →
  ``sigmoid(mean * w_f + b_f)`` for each finding f → ``(N, F)``. With one window (40, 80) a slice filled
  with 70 HU has mean 0.875 and one at 30 HU 0.375, so ``w = 20, b = -12.5`` scores them about 0.99 and
  0.0067 — an easy, exact reference in numpy (:func:`tiny_reference`).
* :func:`context_onnx` / :func:`write_context_model`: a 2.5-D model (``preprocessing.context``). Input
  ``(N, 3, H, W)``: channel 0 the slice's own window, 1 the neighbour below's, 2 the neighbour above's (the
  channel order of docs/MANIFEST.md). Output ``sigmoid(sum_c W[c] * mean(x[:, c]) + B)`` per slice. Every
  window is [0, 200] HU, i.e. (HU + 100) / 200 clipped to [0, 1]; slices filled with one HU value between
  -100 and 100 make each channel mean exactly that number, so the expected probability is computed here
  from the HU the test wrote and the neighbour indices it expects — never by the code under test.
  ``W`` weighs the neighbours more than the slice itself and with opposite signs, so a wrong neighbour shows.
* :func:`tiny_cnn` / :func:`manifest_for` / :func:`converted_model`: a tiny real CNN (TensorRT, calibration,
  ``engine``/``bench`` CLI tests), and its folder with an engine built through the (fake) TensorRT builder.

Imports onnx (a dependency of the agent, but not of ``import edge_agent``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

def save_graph(graph, path: Path, producer: str | None = "edge-agent-tests") -> Path:
    """Check ``graph`` as an opset-17, IR-8 model and save it at ``path`` (folders made); returns ``path``."""
    kw = {"producer_name": producer} if producer else {}
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], **kw)
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def write_manifest(folder: Path, manifest: dict, onnx_name: str = "model.onnx") -> Path:
    """``manifest.json`` in ``folder`` with the sha256 of ``folder/onnx_name`` filled in; returns its path."""
    manifest["artefacts"]["onnx"]["sha256"] = hashlib.sha256((folder / onnx_name).read_bytes()).hexdigest()
    path = folder / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2))
    return path


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
    return save_graph(helper.make_graph(nodes, "tiny", [inp], [out], initializer=[w, b]), path)


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
    write_manifest(folder, manifest_dict(name, **manifest_kw), onnx_path.name)
    return folder


# --- a 2.5-D model --------------------------------------------------------------------------------
CONTEXT_W = (2.0, 6.0, -5.0)
CONTEXT_B = -0.5
CONTEXT_WINDOW = (0.0, 200.0)
CONTEXT_NAME = "tiny_ctx"


def context_onnx(path: Path, *, size: int = 16, weights=CONTEXT_W, bias=CONTEXT_B, channels: int = 3) -> Path:
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
    return save_graph(helper.make_graph(nodes, "tiny_ctx", [inp], [out], initializer=[w, b]), path)


def context_manifest(*, sha: str = "0" * 64, offset_mm: float = 5.0, size: int = 16, channels: int = 3,
                     decision: dict | None = None) -> dict:
    return {
        "schema": 1, "name": CONTEXT_NAME, "version": "0.0.1", "description": "tiny 2.5-D test model (synthetic)",
        "synthetic_training": True,
        "findings": [{"code": "lung_nodule", "label": "Lung nodule", "severity": "urgent"}],
        "applies_to": {"modality": ["CT"], "body_part": ["CHEST"], "min_slices": 4},
        "preprocessing": {"windows": [list(CONTEXT_WINDOW)], "size": [size, size], "pixel_spacing_mm": None,
                          "dtype": "float32", "context": {"offset_mm": offset_mm, "windows": [list(CONTEXT_WINDOW)]}},
        "inputs": [{"name": "input", "shape": [-1, channels, size, size], "dtype": "float32"}],
        "outputs": [{"name": "probability", "shape": [-1, 1], "dtype": "float32"}],
        "decision": decision or {"rule": "max", "threshold": 0.5},
        "artefacts": {"onnx": {"path": "model.onnx", "sha256": sha}},
    }


def write_context_model(folder: Path, **manifest_kw) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    onnx_path = context_onnx(folder / "model.onnx", size=manifest_kw.get("size", 16))
    write_manifest(folder, context_manifest(**manifest_kw), onnx_path.name)
    return folder


def context_win(hu: float) -> float:
    c, w = CONTEXT_WINDOW
    return min(1.0, max(0.0, (hu - (c - w / 2)) / w))


def expected_neighbours(n: int, k: int) -> tuple[list[int], list[int]]:
    """A regular series whose offset is ``k`` slices: ``i ± k``; near an end the end slice; at the end itself."""
    below = [i if i == 0 else max(i - k, 0) for i in range(n)]
    above = [i if i == n - 1 else min(i + k, n - 1) for i in range(n)]
    return below, above


def expected_probabilities(values_hu, below, above) -> np.ndarray:
    w = CONTEXT_W
    z = [w[0] * context_win(values_hu[i]) + w[1] * context_win(values_hu[below[i]])
         + w[2] * context_win(values_hu[above[i]]) + CONTEXT_B
         for i in range(len(values_hu))]
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


# --- a tiny CNN (TensorRT and calibration tests) --------------------------------------------------
def tiny_cnn(path: Path, *, channels: int = 3, size: int = 32, seed: int = 0, dynamic: bool = True) -> Path:
    """Conv(3x3) + Relu + GlobalAveragePool + Flatten + Gemm + Sigmoid: ``input`` → ``probability`` (N, 1).

    Weights are chosen so the score rises with brightness in the first window
    (a blood-like signal), so decisions vary across phantoms.
    """
    rng = np.random.default_rng(seed)
    w = (rng.normal(0, 0.2, (4, channels, 3, 3)) + 0.1).astype(np.float32)
    w[:, 0] += 0.3
    b = rng.normal(0, 0.05, 4).astype(np.float32)
    g = np.array([[4.5, 3.0, 2.4, 3.6]], np.float32)
    gb = np.array([-14.0], np.float32)  # phantoms: plain ≈ 0.2, bright blob ≈ 0.8
    batch = "N" if dynamic else 1
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("GlobalAveragePool", ["r"], ["p"]),
         helper.make_node("Flatten", ["p"], ["f"]),
         helper.make_node("Gemm", ["f", "g", "gb"], ["logit"], transB=1),
         helper.make_node("Sigmoid", ["logit"], ["probability"])],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, channels, size, size])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, [batch, 1])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b"),
         numpy_helper.from_array(g, "g"), numpy_helper.from_array(gb, "gb")])
    return save_graph(graph, path, producer=None)


def manifest_for(folder: Path, onnx_name: str = "model.onnx", *, size: int = 32, threshold: float = 0.5) -> Path:
    """A valid manifest.json (docs/MANIFEST.md) beside a tiny model in ``folder``."""
    manifest = {
        "schema": 1, "name": "tiny", "version": "0.0.1",
        "description": "tiny test CNN (synthetic; not a medical device)", "synthetic_training": True,
        "findings": [{"code": "ich", "label": "test", "severity": "critical"}],
        "applies_to": {"modality": ["CT"], "body_part": ["HEAD"]},
        "preprocessing": {"windows": [[40, 80], [80, 200], [600, 2800]], "size": [size, size],
                          "pixel_spacing_mm": 6.0, "dtype": "float32"},
        "inputs": [{"name": "input", "shape": [-1, 3, size, size], "dtype": "float32"}],
        "outputs": [{"name": "probability", "shape": [-1, 1], "dtype": "float32"}],
        "decision": {"rule": "top_k_mean", "k": 2, "threshold": threshold},
        "artefacts": {"onnx": {"path": onnx_name, "sha256": ""}},
    }
    return write_manifest(folder, manifest, onnx_name)


def add_engine(folder: Path) -> Path:
    """Build ``folder/model.engine`` from ``folder/model.onnx`` (input 3 x 32 x 32) and record it in the manifest.

    Needs TensorRT importable — in tests, the fakes of :mod:`edge_agent.testing.fake_trt` installed first.
    """
    from edge_agent.inference.manifest import add_artefact
    from edge_agent.inference.trt.builder import BuildOptions, build_engine
    from edge_agent.inference.trt.fingerprint import fingerprint_path

    engine = folder / "model.engine"
    build_engine(folder / "model.onnx", engine, BuildOptions(timing_cache=folder / "timing.cache",
                                                             static_dims={"input": (3, 32, 32)}, opt_batch=4,
                                                             max_batch=8))
    add_artefact(folder, "engine", engine, fingerprint_path(engine))
    return folder


def converted_model(folder: Path) -> Path:
    """A model folder (tiny CNN, manifest) whose engine was built by ``build_engine`` and recorded in the manifest.

    Needs TensorRT importable — in tests, the fakes of :mod:`edge_agent.testing.fake_trt` installed first.
    """
    folder.mkdir(parents=True)
    tiny_cnn(folder / "model.onnx")
    manifest_for(folder)
    return add_engine(folder)
