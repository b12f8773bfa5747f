"""The backend registry (inference/backends.py) and the import shape: the base Runner imports no backend."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest

from edge_agent.inference import backends
from edge_agent.inference.backends import REGISTRY, TrtOptions, get
from edge_agent.inference.onnxrt import OnnxRuntimeRunner
from edge_agent.inference.runner import DevicePreprocessing, RunnerError
from edge_agent.inference.trt import TENSORRT_HINT

INFERENCE = Path(backends.__file__).parent
BACKEND_MODULES = ("edge_agent.inference.onnxrt", "edge_agent.inference.trt", "edge_agent.inference.backends",
                   "onnxruntime", "tensorrt", "pycuda")


def _imports(path: Path, top_level_only: bool = False) -> set[str]:
    """Every module ``path`` imports (``from X import y`` gives X and X.y), at any depth or at module level."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.If):  # if TYPE_CHECKING: ... at module level
            out.update(n.module for n in ast.walk(node) if isinstance(n, ast.ImportFrom) and n.module)
    return out


def _is_backend(module: str) -> bool:
    return any(module == b or module.startswith(b + ".") for b in BACKEND_MODULES)


def test_the_base_runner_imports_no_backend():
    found = sorted(m for m in _imports(INFERENCE / "runner.py") if _is_backend(m))
    assert found == [], f"runner.py imports {found}"


def test_the_backends_import_the_base_and_the_registry_no_backend_at_module_level():
    assert "edge_agent.inference.runner" in _imports(INFERENCE / "onnxrt.py", top_level_only=True)
    assert "edge_agent.inference.runner" in _imports(INFERENCE / "trt" / "runner.py", top_level_only=True)
    assert sorted(m for m in _imports(INFERENCE / "backends.py", top_level_only=True) if _is_backend(m)) == []


def test_importing_the_package_imports_no_heavy_backend():
    code = ("import sys, edge_agent.inference, edge_agent.inference.backends, edge_agent.inference.models\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorrt', 'pycuda', 'onnxruntime')"
            " or m.startswith('edge_agent.inference.trt.')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_unknown_backend_is_one_sentence_naming_the_known_ones():
    with pytest.raises(RunnerError) as info:
        get("cuda")
    assert str(info.value) == "Unknown backend 'cuda'; choose one of auto, onnxrt, tensorrt."
    assert backends.BACKENDS == ("auto", *REGISTRY) and set(REGISTRY) == {"onnxrt", "tensorrt"}


def test_onnxrt_is_available_and_loads_a_runner(model_folder):
    from edge_agent.inference.manifest import load_manifest

    usable, why = get("onnxrt").is_available()
    assert usable and why == "ONNX Runtime is installed."
    runner = get("onnxrt").load(load_manifest(model_folder), threads=1)
    assert isinstance(runner, OnnxRuntimeRunner) and not isinstance(runner, DevicePreprocessing)
    assert runner.name == "tiny_ich@0.0.1" and runner.threads == 1 and runner.last_timings == {}


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_tensorrt_unavailable_here_gives_the_projects_sentence():
    assert get("tensorrt").is_available() == (False, TENSORRT_HINT)


def test_tensorrt_options_are_one_frozen_object():
    class Inference:  # the config's [inference] section
        gpu_preprocess, zero_copy = "off", "on"

    options = TrtOptions.from_config(Inference())
    assert options == TrtOptions(gpu_preprocess=False, zero_copy="on") and options.mapped is True
    assert TrtOptions().mapped == "auto" and TrtOptions(zero_copy="off").mapped is False
    with pytest.raises(FrozenInstanceError):
        options.zero_copy = "off"
