"""Inference: model manifests, the ``Runner`` interface and its backends, model sets.

- :mod:`edge_agent.inference.manifest` — ``manifest.json`` validation (docs/MANIFEST.md);
- :mod:`edge_agent.inference.runner` — the Polygraphy-style ``Runner`` base (no backend) and the
  ``DevicePreprocessing`` interface of runners that prepare stored pixels on their device;
- :mod:`edge_agent.inference.backends` — the registry of backends (name → loader, ``is_available()``
  with a reason), :func:`make_runner` and ``TrtOptions``;
- :mod:`edge_agent.inference.onnxrt` — ONNX Runtime (CPU; CUDA/TensorRT EPs where present);
- ``edge_agent.inference.trt`` — TensorRT + pycuda, imported only on demand;
- :mod:`edge_agent.inference.models` — a folder of models, routing series to them;
- :mod:`edge_agent.inference.applicability` — header rules keeping a model off series it was not made
  for (kernel table in :mod:`edge_agent.inference.kernels`, the ``applies_to`` parser in
  :mod:`edge_agent.inference.applies_to`).

Importing this package imports neither onnxruntime nor TensorRT.
"""

from edge_agent.inference.applicability import Refusal
from edge_agent.inference.manifest import (
    AppliesTo,
    Artefact,
    FindingSpec,
    Manifest,
    ManifestError,
    TensorSpec,
    load_manifest,
)
from edge_agent.inference.backends import BACKENDS, TrtOptions, make_runner
from edge_agent.inference.runner import DevicePreprocessing, Runner, RunnerError

__all__ = [
    "AppliesTo", "Artefact", "BACKENDS", "DevicePreprocessing", "FindingSpec", "Manifest", "ManifestError", "Runner",
    "RunnerError", "Refusal", "TensorSpec", "TrtOptions", "load_manifest", "make_runner",
]
