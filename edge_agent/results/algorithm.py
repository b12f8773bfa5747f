"""Algorithm identification of a loaded model: the bytes that run, the backend, the precision.

``sha256`` is that of the artefact the runner executes — the TensorRT engine
on the ``tensorrt`` backend, the ONNX model otherwise (both recorded in the
manifest and checked at load). ``precision`` comes from the engine's
fingerprint (``model.engine.json``) or, for ONNX, from the graph: int8 when it
has Q/DQ nodes, fp16 when its weights are float16, else fp32.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from edge_agent.results.content import Algorithm


@functools.lru_cache(maxsize=32)
def _onnx_precision(path: str, sha256: str) -> str:  # sha256: a changed file is looked at again
    try:
        import onnx  # noqa: PLC0415 - only when a PACS destination is configured

        model = onnx.load(path, load_external_data=False)
    except Exception:  # noqa: BLE001 - unknown beats a failed result
        return ""
    ops = {n.op_type for n in model.graph.node}
    if ops & {"QuantizeLinear", "DequantizeLinear"}:
        return "int8"
    if any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer):
        return "fp16"
    return "fp32"


def _engine_precision(artefact: Any) -> str:
    path = artefact.fingerprint or Path(str(artefact.path) + ".json")
    try:
        return str(json.loads(Path(path).read_text()).get("precision") or "")
    except (OSError, ValueError, AttributeError):
        return ""


def algorithm_of(model: Any) -> Algorithm:
    """The :class:`Algorithm` of a loaded ``edge_agent.inference.models.Model`` as it runs now."""
    m = model.manifest
    backend = str(getattr(model.runner, "backend", "") or "")
    if backend == "tensorrt" and "engine" in m.artefacts:
        artefact = m.artefacts["engine"]
        precision = _engine_precision(artefact)
    else:
        artefact = m.artefacts.get("onnx")
        precision = _onnx_precision(str(artefact.path), artefact.sha256) if artefact is not None else ""
    return Algorithm(m.name, m.version, artefact.sha256 if artefact is not None else "", backend, precision,
                     bool(m.synthetic_training))
