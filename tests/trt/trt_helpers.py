"""Shared test artefacts for the TensorRT/calibration tests: a tiny real CNN as ONNX, phantom series.

Imported by tests/trt, tests/gpu and tests/cli (which put this folder on sys.path).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edge_agent.dicom.synth import SeriesHeaders, write_series


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
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def phantom_series(out_dir: Path, *, seed: int, bright: bool, slices: int = 6, matrix: int = 48,
                   signed: bool = False, padding: bool = True) -> list[Path]:
    """A small head-like CT series: water ellipse in air, with a bright blob when ``bright``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:matrix, :matrix]
    c = (matrix - 1) / 2
    inside = ((yy - c) / (0.42 * matrix)) ** 2 + ((xx - c) / (0.36 * matrix)) ** 2 <= 1
    vol = np.full((slices, matrix, matrix), -1000.0, np.float32)
    vol[:, inside] = 35.0
    vol += rng.normal(0, 4, vol.shape).astype(np.float32)
    if bright:
        blob = ((yy - c - 5) ** 2 + (xx - c + 4) ** 2) <= (matrix // 6) ** 2
        vol[1:-1, blob] = 75.0
    outside = np.broadcast_to(((yy - c) ** 2 + (xx - c) ** 2) > (0.49 * matrix) ** 2, vol.shape)
    headers = SeriesHeaders(signed=signed, padding_value=(-2000 if signed else 0) if padding else None,
                            rescale_intercept=-1024.0)
    if padding and not signed:
        vol = np.maximum(vol, -1023.0)  # keep stored value 0 reserved for padding
    return write_series(vol, out_dir, spacing=(5.0, 4.0, 4.0), headers=headers,
                        outside_mask=outside if padding else None)


def manifest_for(folder: Path, onnx_name: str = "model.onnx", *, size: int = 32, threshold: float = 0.5) -> Path:
    """A valid manifest.json (docs/MANIFEST.md) beside a tiny model in ``folder``."""
    import hashlib

    digest = hashlib.sha256((folder / onnx_name).read_bytes()).hexdigest()
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
        "artefacts": {"onnx": {"path": onnx_name, "sha256": digest}},
    }
    path = folder / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2))
    return path


def converted_model(folder: Path) -> Path:
    """A model folder (tiny CNN, manifest) whose engine was built by ``build_engine`` and recorded in the manifest.

    Needs TensorRT importable — in tests, the fakes of fake_trt.py installed first.
    """
    from edge_agent.inference.manifest import add_artefact
    from edge_agent.inference.trt.builder import BuildOptions, build_engine
    from edge_agent.inference.trt.fingerprint import fingerprint_path

    folder.mkdir(parents=True)
    tiny_cnn(folder / "model.onnx")
    manifest_for(folder)
    engine = folder / "model.engine"
    build_engine(folder / "model.onnx", engine, BuildOptions(timing_cache=folder / "timing.cache",
                                                             static_dims={"input": (3, 32, 32)}, opt_batch=4,
                                                             max_batch=8))
    add_artefact(folder, "engine", engine, fingerprint_path(engine))
    return folder
