"""Inference: model manifests, the ``Runner`` interface and its backends, model sets.

- :mod:`edge_agent.inference.manifest` — ``manifest.json`` validation (docs/MANIFEST.md);
- :mod:`edge_agent.inference.runner` — the Polygraphy-style ``Runner`` and :func:`make_runner`;
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
from edge_agent.inference.runner import BACKENDS, Runner, RunnerError, make_runner

__all__ = [
    "AppliesTo", "Artefact", "BACKENDS", "FindingSpec", "Manifest", "ManifestError", "Runner", "RunnerError",
    "Refusal", "TensorSpec", "load_manifest", "make_runner",
]
