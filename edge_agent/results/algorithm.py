"""Provenance of a model as it runs: the bytes that run, the backend, the precision, the engine fingerprint.

The one place every output takes its model provenance from (alerts, results,
the SR, log lines, ``inspect`` and ``doctor``; docs/ALERTS.md, "Provenance").

``sha256`` is that of the artefact the runner executes — the TensorRT engine
on the ``tensorrt`` backend, the ONNX model otherwise (both recorded in the
manifest and checked at load); a plug-in model (no network) has none, so its
``sha256`` is that of its ``manifest.json``, which holds the plug-in's
parameters. ``precision`` comes from the engine's fingerprint
(``model.engine.json``) or, for ONNX, from the graph: int8 when it has Q/DQ
nodes, fp16 when its weights are float16, else fp32; a plug-in has none
(empty). ``engine_fingerprint`` is the first 16 hex digits of the sha256 of
the engine's fingerprint file (``sha256sum model.engine.json | cut -c1-16``):
it names what the engine was built from and for (TensorRT version, GPU, L4T,
profiles); None for ONNX and plug-ins.

Everything is computed once per model and backend (:func:`algorithm_for` is
cached): no file is hashed or parsed per alert.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

from edge_agent.results.content import Algorithm

#: Hex digits kept of the fingerprint file's sha256 (``engine_fingerprint``) and of the config hash.
SHORT_HEX = 16
#: Hex digits of an artefact sha256 shown in log lines and ``doctor``.
LOG_HEX = 12


@functools.lru_cache(maxsize=32)
def _onnx_precision(path: str, sha256: str) -> str:  # sha256: a changed file is looked at again
    try:
        import onnx  # noqa: PLC0415 - only where a model's provenance is asked for

        model = onnx.load(path, load_external_data=False)
    except Exception:  # noqa: BLE001 - unknown beats a failed result
        return ""
    ops = {n.op_type for n in model.graph.node}
    if ops & {"QuantizeLinear", "DequantizeLinear"}:
        return "int8"
    if any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer):
        return "fp16"
    return "fp32"


def onnx_precision(path: str | Path, sha256: str = "") -> str:
    """int8 (Q/DQ nodes), fp16 (float16 weights) or fp32 of an ONNX file; empty when it cannot be read."""
    return _onnx_precision(str(path), sha256)


def engine_fingerprint_id(path: str | Path) -> str | None:
    """The short id of an engine fingerprint file: the first 16 hex digits of its sha256; None if unreadable."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:SHORT_HEX]
    except OSError:
        return None


def engine_precision(path: str | Path) -> str:
    """The precision an engine's fingerprint file records; empty when it cannot be read."""
    try:
        return str(json.loads(Path(path).read_text()).get("precision") or "")
    except (OSError, ValueError, AttributeError):
        return ""


def _key(manifest: Any, backend: str) -> tuple:
    artefacts = getattr(manifest, "artefacts", None) or {}
    return (str(getattr(manifest, "folder", "")), str(manifest.name), str(manifest.version), backend,
            bool(getattr(manifest, "synthetic_training", False)), getattr(manifest, "plugin", None) is not None,
            tuple(sorted((k, str(a.path), a.sha256, str(a.fingerprint or "")) for k, a in artefacts.items())))


@functools.lru_cache(maxsize=64)
def _algorithm(key: tuple, manifest_path: str) -> Algorithm:
    folder, name, version, backend, synthetic, plugin, artefacts = key
    by_kind = {k: (Path(p), sha, Path(fp) if fp else None) for k, p, sha, fp in artefacts}
    sha256, precision, fingerprint = "", "", None
    if plugin:
        try:
            sha256 = hashlib.sha256(Path(manifest_path).read_bytes()).hexdigest()
        except OSError:
            sha256 = ""
    elif backend == "tensorrt" and "engine" in by_kind:
        path, sha256, fp = by_kind["engine"]
        fp_file = fp or Path(str(path) + ".json")
        precision, fingerprint = engine_precision(fp_file), engine_fingerprint_id(fp_file)
    elif "onnx" in by_kind:
        path, sha256, _ = by_kind["onnx"]
        precision = onnx_precision(path, sha256)
    return Algorithm(name, version, sha256, backend, precision, synthetic, fingerprint)


def algorithm_for(manifest: Any, backend: str | None) -> Algorithm:
    """The :class:`Algorithm` of a model (its manifest) running on ``backend``; cached, never raises."""
    backend = str(backend or "")
    try:
        path = getattr(manifest, "path", None)
        return _algorithm(_key(manifest, backend), str(path) if path is not None else "")
    except Exception:  # noqa: BLE001 - provenance never costs an alert or a result
        return Algorithm(str(getattr(manifest, "name", "")), str(getattr(manifest, "version", "")), backend=backend,
                         synthetic_training=bool(getattr(manifest, "synthetic_training", False)))


def algorithm_of(model: Any) -> Algorithm:
    """The :class:`Algorithm` of a loaded ``edge_agent.inference.models.Model`` as it runs now."""
    return algorithm_for(model.manifest, getattr(model.runner, "backend", ""))


def has_provenance(manifest: Any) -> bool:
    """Whether ``manifest`` is a real one (artefacts or a plug-in) whose provenance can be told."""
    return getattr(manifest, "artefacts", None) is not None or getattr(manifest, "plugin", None) is not None


def model_provenance(algorithm: Algorithm) -> dict:
    """``{name, version, sha256, backend, precision, engine_fingerprint}`` (unknown values as None)."""
    return {"name": algorithm.name, "version": algorithm.version, "sha256": algorithm.sha256 or None,
            "backend": algorithm.backend or None, "precision": algorithm.precision or None,
            "engine_fingerprint": algorithm.engine_fingerprint}


def provenance_words(algorithm: Algorithm) -> str:
    """The provenance of a log line: ``sha256 ab12cd34ef56, onnxrt fp32`` (+ ``, engine 0123…`` on TensorRT)."""
    words = f"sha256 {(algorithm.sha256 or 'unknown')[:LOG_HEX]}, {algorithm.backend or 'unknown'}"
    if algorithm.precision:
        words += f" {algorithm.precision}"
    if algorithm.engine_fingerprint:
        words += f", engine {algorithm.engine_fingerprint}"
    return words


def agent_provenance(config_hash: str | None = None) -> dict:
    """``{agent_version, config_hash}``: this agent's version and the hash of its effective configuration."""
    from edge_agent import __version__  # noqa: PLC0415

    return {"agent_version": __version__, "config_hash": config_hash}


def file_provenance(path: str | Path, *, engine: bool, sha256: str, fingerprint_file: str | Path | None = None) -> dict:
    """What ``edge-agent inspect`` names a model file by — the same fields as an alert's ``model``:

    ``name``/``version`` of the manifest beside the file when it lists the file as an artefact (else None),
    ``sha256``, ``backend`` (tensorrt for an engine, onnxrt for ONNX), ``precision``, ``engine_fingerprint``
    (an engine whose readable fingerprint is ``fingerprint_file``) and ``agent_version``.
    """
    from edge_agent import __version__  # noqa: PLC0415

    path = Path(path)
    name = version = None
    try:
        from edge_agent.inference.manifest import MANIFEST_NAME, load_manifest  # noqa: PLC0415

        beside = path.parent / MANIFEST_NAME
        if beside.is_file():
            m = load_manifest(beside, verify=False)
            if any(Path(a.path).resolve() == path.resolve() for a in m.artefacts.values()):
                name, version = m.name, m.version
    except Exception:  # noqa: BLE001 - a broken manifest beside it does not stop inspect
        pass
    if engine:  # fingerprint_file: the engine's readable fingerprint; None: none is known
        precision = (engine_precision(fingerprint_file) or None) if fingerprint_file else None
        fingerprint = engine_fingerprint_id(fingerprint_file) if fingerprint_file else None
    else:
        precision, fingerprint = onnx_precision(path, sha256) or None, None
    return {"name": name, "version": version, "sha256": sha256 or None,
            "backend": "tensorrt" if engine else "onnxrt", "precision": precision,
            "engine_fingerprint": fingerprint, "agent_version": __version__}
