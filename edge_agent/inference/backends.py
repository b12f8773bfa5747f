"""The inference backends by name: whether each can run here (and why not), and the loader of its runner.

As pydicom's pixel decoders and Frigate's detectors do, each backend is an
entry — a name, a probe that says without raising what is missing, and the
``"module:function"`` of its loader, imported on first use — so importing
this module imports neither onnxruntime nor TensorRT, and the base
:mod:`edge_agent.inference.runner` imports no backend (the backends import
it). :func:`make_runner` picks a model's backend:

- ``onnxrt``: ONNX Runtime (:mod:`edge_agent.inference.onnxrt`; CPU, or
  CUDA/TensorRT execution providers where present), always installed;
- ``tensorrt``: the manifest's ``engine`` through TensorRT + pycuda
  (:mod:`edge_agent.inference.trt.runner`), with :class:`TrtOptions`.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from edge_agent.errors import MissingDependency
from edge_agent.inference.manifest import ManifestError
from edge_agent.inference.runner import Runner, RunnerError

if TYPE_CHECKING:
    from edge_agent.inference.manifest import Manifest

log = logging.getLogger("edge_agent.inference")


@dataclass(frozen=True)
class TrtOptions:
    """How TensorRT runners run: one object from the config (``[inference]``) down to the runner.

    ``gpu_preprocess``: a TensorRT runner turns stored pixels into the model
    input with the CUDA kernel (``inference/trt/preprocess_kernel.py``).
    ``zero_copy``: ``"auto"`` (mapped pinned memory on integrated GPUs),
    ``"on"`` or ``"off"`` for a TensorRT runner's buffers.
    """

    gpu_preprocess: bool = True
    zero_copy: str = "auto"

    @classmethod
    def from_config(cls, inference) -> "TrtOptions":
        """From the config's ``[inference]`` section (``gpu_preprocess`` auto | off, ``zero_copy``)."""
        return cls(gpu_preprocess=inference.gpu_preprocess != "off", zero_copy=inference.zero_copy)

    @property
    def mapped(self) -> bool | str:
        """``TrtRunner``'s ``mapped``: True, False or ``"auto"``."""
        return {"on": True, "off": False}.get(self.zero_copy, "auto")


@dataclass(frozen=True)
class Backend:
    """One backend: ``missing()`` is None when it can run here, else the sentence saying what to install."""

    name: str
    title: str
    loader: str  # "module:function" taking (manifest, **options) and returning an inactive Runner
    missing: Callable[[], str | None]

    def is_available(self) -> tuple[bool, str]:
        """(usable here, a sentence: what is missing, or that it is installed); never raises."""
        why = self.missing()
        return why is None, why or f"{self.title} is installed."

    def load(self, manifest: "Manifest", **options) -> Runner:
        """The backend's runner for ``manifest``, not yet active (imports the backend now)."""
        module, _, function = self.loader.partition(":")
        return getattr(importlib.import_module(module), function)(manifest, **options)


def _onnxrt_missing() -> str | None:
    try:
        importlib.import_module("onnxruntime")
    except Exception as exc:  # noqa: BLE001 - ImportError, or a broken install's OSError
        return (f"ONNX Runtime cannot be imported ({type(exc).__name__}: {exc}); reinstall edge-agent with its "
                "dependencies (pip install onnxruntime).")
    return None


def _tensorrt_missing() -> str | None:
    from edge_agent.inference import trt  # noqa: PLC0415 - the package imports neither tensorrt nor pycuda

    return None if trt.is_available() else trt.why_unavailable() or "TensorRT or pycuda is not installed."


REGISTRY: dict[str, Backend] = {b.name: b for b in (
    Backend("onnxrt", "ONNX Runtime", "edge_agent.inference.onnxrt:load_runner", _onnxrt_missing),
    Backend("tensorrt", "TensorRT", "edge_agent.inference.trt.runner:load_runner", _tensorrt_missing),
)}

#: What ``--backend`` and ``inference.backend`` accept.
BACKENDS = ("auto", *REGISTRY)


def get(name: str) -> Backend:
    """The backend called ``name``; an unknown name is one sentence listing the known ones."""
    backend = REGISTRY.get(name)
    if backend is None:
        raise RunnerError(f"Unknown backend {name!r}; choose one of {', '.join(BACKENDS)}.")
    return backend


def make_runner(manifest: "Manifest", backend: str = "auto", *, threads: int | None = None, device: int = 0,
                providers: list[str] | None = None, trt_options: TrtOptions = TrtOptions()) -> Runner:
    """The runner for a model, not yet active.

    ``backend``: ``"onnxrt"`` (ONNX Runtime; CPU, or CUDA/TensorRT execution
    providers where present — ``providers`` overrides), ``"tensorrt"`` (the
    ``engine`` artefact through TensorRT + pycuda, run as ``trt_options`` say)
    or ``"auto"`` (TensorRT when the manifest lists an engine and TensorRT is
    usable here, else ONNX Runtime). ``threads``: ONNX Runtime intra-op
    threads (None = its default). ``device``: the CUDA device of either.
    """
    if backend != "auto":
        get(backend)
    if backend in ("auto", "tensorrt"):
        engine = manifest.artefacts.get("engine")
        if backend == "tensorrt" and engine is None:
            raise ManifestError(f"Model {manifest.name} has no TensorRT engine in {manifest.path}; build one with "
                                f"'edge-agent convert {manifest.artefacts['onnx'].path}'.")
        if engine is not None:
            usable, why = REGISTRY["tensorrt"].is_available()
            if usable:
                return REGISTRY["tensorrt"].load(manifest, device=device, options=trt_options)
            if backend == "tensorrt":
                raise MissingDependency(f"Cannot use the TensorRT backend for {manifest.name}: {why.rstrip('.')}, "
                                        "or run with --backend onnxrt.")
            log.info("model %s has a TensorRT engine but TensorRT is unusable here (%s); using ONNX Runtime",
                     manifest.name, why.rstrip("."))
    return REGISTRY["onnxrt"].load(manifest, threads=threads, device=device, providers=providers)
