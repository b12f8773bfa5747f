"""TensorRT backend: the only place ``tensorrt`` and ``pycuda`` are imported.

Like pydicom's pixel decoders, the backend states its dependencies and answers
:func:`is_available` / :func:`why_unavailable` without raising (the registry,
:mod:`edge_agent.inference.backends`, asks them), so the package imports and
the ONNX Runtime CPU path works on a machine without them. Code that needs
them calls :func:`import_tensorrt` / :func:`import_cuda`, which raise
:class:`~edge_agent.errors.MissingDependency` with a sentence saying what to
install. The runner is :class:`edge_agent.inference.trt.runner.TrtRunner`.

On a Jetson, TensorRT's Python bindings come from JetPack
(``python3-libnvinfer``); never pip-install x86 TensorRT wheels there, and
create the venv with ``--system-site-packages`` so they are visible.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from edge_agent.errors import MissingDependency

#: What the backend needs (name → why), shown by ``doctor`` and ``inspect``.
DEPENDENCIES = {
    "tensorrt": "TensorRT >= 8.5 Python bindings (JetPack's python3-libnvinfer on a Jetson)",
    "pycuda": "pycuda (pip install pycuda; builds against the CUDA toolkit)",
}

TENSORRT_HINT = ("TensorRT is not installed (import tensorrt failed); on a Jetson install JetPack's "
                 "python3-libnvinfer and create the venv with --system-site-packages.")
PYCUDA_HINT = ("pycuda is not installed (import pycuda.driver failed); install it with "
               "'pip install pycuda' with the CUDA toolkit's nvcc on PATH.")


def _try_import(name: str) -> tuple[ModuleType | None, str | None]:
    try:
        return importlib.import_module(name), None
    except Exception as exc:  # noqa: BLE001 - ImportError, OSError (libnvinfer.so), CUDA init errors
        return None, f"{type(exc).__name__}: {exc}"


def import_tensorrt() -> ModuleType:
    """Return the ``tensorrt`` module or raise :class:`MissingDependency` (exit 3)."""
    module, _err = _try_import("tensorrt")
    if module is None:
        raise MissingDependency(TENSORRT_HINT)
    return module


def import_cuda() -> ModuleType:
    """Return ``pycuda.driver`` (never ``pycuda.autoinit``) or raise :class:`MissingDependency`."""
    module, _err = _try_import("pycuda.driver")
    if module is None:
        raise MissingDependency(PYCUDA_HINT)
    return module


def tensorrt_version() -> str | None:
    """TensorRT's version string (``"10.3.0"``), or None when it cannot be imported."""
    module, _ = _try_import("tensorrt")
    return None if module is None else str(getattr(module, "__version__", "unknown"))


def tensorrt_major() -> int:
    """Major version of the imported TensorRT (raises MissingDependency if absent)."""
    version = str(getattr(import_tensorrt(), "__version__", "0"))
    try:
        return int(version.split(".")[0])
    except ValueError:
        return 0


def why_unavailable() -> str | None:
    """None when TensorRT and pycuda import; otherwise one sentence saying what is missing."""
    if _try_import("tensorrt")[0] is None:
        return TENSORRT_HINT
    if _try_import("pycuda.driver")[0] is None:
        return PYCUDA_HINT
    return None


def is_available() -> bool:
    """True when the TensorRT runner can be used on this machine (both imports succeed)."""
    return why_unavailable() is None


__all__ = ["DEPENDENCIES", "import_cuda", "import_tensorrt", "is_available", "tensorrt_major", "tensorrt_version",
           "why_unavailable"]
