"""The ``Runner`` interface every inference backend implements.

Polygraphy's pattern (``polygraphy/backend/base/runner.py``): the public
:meth:`Runner.activate`, :meth:`Runner.infer` and :meth:`Runner.deactivate`
check state and inputs, then call the backend's ``*_impl``; a runner is a
context manager. Backends:

- :class:`edge_agent.inference.onnxrt.OnnxRuntimeRunner` (always available);
- ``edge_agent.inference.trt.TrtRunner`` (TensorRT + pycuda; imported lazily,
  only by :func:`make_runner`, so the package works without them).

A backend subclass implements ``activate_impl()``, ``deactivate_impl()``,
``infer_impl(feed) -> dict``, ``input_specs_impl()`` and
``output_specs_impl()`` (lists of :class:`TensorSpec` discovered from the
model/engine, -1 for dynamic dimensions) and may override
:meth:`Runner.max_batch_size`. Runners whose resources belong to one OS
thread (CUDA contexts) set ``thread_bound = True``: ``infer`` and
``deactivate`` are then refused from any thread but the one that activated.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edge_agent.errors import EdgeAgentError, MissingDependency
from edge_agent.inference.manifest import ManifestError, TensorSpec

if TYPE_CHECKING:
    from edge_agent.inference.manifest import Manifest

BACKENDS = ("auto", "onnxrt", "tensorrt")

log = logging.getLogger("edge_agent.inference")


class RunnerError(EdgeAgentError):
    """A runner was misused (state, inputs) or its model cannot run."""


def shapes_compatible(actual: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    """Same rank and every static dimension equal (-1 matches anything)."""
    return len(actual) == len(expected) and all(a == e or a == -1 or e == -1 for a, e in zip(actual, expected))


class Runner:
    """Base class of the inference backends (see the module docstring)."""

    thread_bound: bool = False
    backend: str = "unknown"  # short backend name shown in results ("onnxrt", "tensorrt")

    def __init__(self, name: str, *, expected_inputs: list[TensorSpec] | tuple[TensorSpec, ...] | None = None,
                 expected_outputs: list[TensorSpec] | tuple[TensorSpec, ...] | None = None):
        self.name = name
        self.expected_inputs = tuple(expected_inputs) if expected_inputs else None
        self.expected_outputs = tuple(expected_outputs) if expected_outputs else None
        self._active = False
        self._owner: threading.Thread | None = None
        self._inputs: tuple[TensorSpec, ...] = ()

    # -- state ---------------------------------------------------------------
    @property
    def is_active(self) -> bool:
        return self._active

    def activate(self) -> None:
        """Load the model/engine; then check its tensors against the manifest."""
        if self._active:
            raise RunnerError(f"Runner {self.name} is already active; deactivate it before activating again.")
        self.activate_impl()
        self._active = True
        self._owner = threading.current_thread()
        try:
            self._inputs = tuple(self.input_specs_impl())
            self._check_against_manifest()
        except BaseException:
            self.deactivate()
            raise

    def deactivate(self) -> None:
        """Free the backend's resources (in the thread that activated, for thread-bound runners)."""
        if not self._active:
            return
        self._check_thread("deactivate")
        try:
            self.deactivate_impl()
        finally:
            self._active = False
            self._owner = None

    def __enter__(self) -> "Runner":
        self.activate()
        return self

    def __exit__(self, *exc) -> None:
        self.deactivate()

    def _check_thread(self, what: str) -> None:
        if self.thread_bound and self._owner is not None and self._owner is not threading.current_thread():
            raise RunnerError(f"Runner {self.name} was activated in thread {self._owner.name!r} and cannot "
                              f"{what} from thread {threading.current_thread().name!r}; use it from one thread.")

    def _require_active(self, what: str) -> None:
        if not self._active:
            raise RunnerError(f"Runner {self.name} is not active; call activate() (or use 'with') before {what}.")

    def _check_against_manifest(self) -> None:
        for label, expected, actual in (("input", self.expected_inputs, self._inputs),
                                        ("output", self.expected_outputs, tuple(self.output_specs_impl())
                                         if self.expected_outputs else ())):
            if not expected:
                continue
            by_name = {t.name: t for t in actual}
            for spec in expected:
                have = by_name.get(spec.name)
                if have is None:
                    raise RunnerError(f"Model of {self.name} has no {label} tensor named {spec.name!r} (it has "
                                      f"{', '.join(sorted(by_name)) or 'none'}); fix the manifest's {label}s.")
                if have.dtype != spec.dtype or not shapes_compatible(have.shape, spec.shape):
                    raise RunnerError(f"Model of {self.name} declares {label} {spec.name!r} as {have.dtype} "
                                      f"{list(have.shape)} but the manifest says {spec.dtype} {list(spec.shape)}; "
                                      "fix the manifest or re-export the model.")

    # -- public API ------------------------------------------------------------
    def input_specs(self) -> list[TensorSpec]:
        """The model's input tensors as the backend sees them (requires an active runner)."""
        self._require_active("asking for its inputs")
        return list(self._inputs)

    def output_specs(self) -> list[TensorSpec]:
        """The model's output tensors as the backend sees them (requires an active runner)."""
        self._require_active("asking for its outputs")
        return list(self.output_specs_impl())

    def max_batch_size(self) -> int | None:
        """Largest batch one ``infer`` call accepts; None = no fixed limit."""
        self._require_active("asking for its batch size")
        first = self._inputs[0].shape[0] if self._inputs and self._inputs[0].shape else -1
        return None if first == -1 else first

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model: ``{input name: array}`` → ``{output name: array}``.

        Every input must be given with the dtype and a shape compatible with
        :meth:`input_specs`; nothing else is accepted.
        """
        self._require_active("infer()")
        self._check_thread("infer")
        specs = {t.name: t for t in self._inputs}
        if set(feed) != set(specs):
            raise RunnerError(f"Runner {self.name} needs inputs {sorted(specs)} but was given {sorted(feed)}.")
        for name, array in feed.items():
            spec = specs[name]
            if not isinstance(array, np.ndarray):
                raise RunnerError(f"Input {name!r} of {self.name} must be a numpy array, not {type(array).__name__}.")
            if array.dtype != np.dtype(spec.dtype):
                raise RunnerError(f"Input {name!r} of {self.name} must be {spec.dtype}, not {array.dtype}.")
            if not shapes_compatible(array.shape, spec.shape):
                raise RunnerError(f"Input {name!r} of {self.name} has shape {list(array.shape)} but the model "
                                  f"takes {list(spec.shape)} (-1 = any).")
        return self.infer_impl(feed)

    def stored_input_dtypes(self) -> tuple[np.dtype, ...]:
        """Stored-pixel dtypes this runner turns into model input itself, on its device (empty: none)."""
        return ()

    def stop_device_preprocessing(self, reason: str) -> None:
        """Give up preprocessing on the device (after a failure); :meth:`stored_input_dtypes` is empty after."""

    def infer_stored(self, stored: np.ndarray, pixel_spacing: tuple[float, float],
                     rescale: tuple) -> dict[str, np.ndarray]:
        """Run the model on stored pixels ``(N, H, W)`` as they came out of the DICOM files.

        ``rescale`` is ``(slope, intercept, padding)`` with ``padding`` a
        ``(lo, hi)`` stored-value range or None (``Slice.rescale``). Only for
        runners whose :meth:`stored_input_dtypes` lists ``stored.dtype``; the
        runner applies the manifest's preprocessing on its device.
        """
        self._require_active("infer_stored()")
        self._check_thread("infer")
        if np.dtype(stored.dtype) not in self.stored_input_dtypes():
            raise RunnerError(f"Runner {self.name} cannot preprocess {stored.dtype} stored pixels itself; "
                              "convert them to HU and call infer().")
        if stored.ndim != 3:
            raise RunnerError(f"Stored pixels for {self.name} must be (N, H, W), not {list(stored.shape)}.")
        return self.infer_stored_impl(stored, pixel_spacing, rescale)

    # -- backend hooks -------------------------------------------------------------
    def activate_impl(self) -> None:
        raise NotImplementedError

    def deactivate_impl(self) -> None:
        raise NotImplementedError

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def infer_stored_impl(self, stored: np.ndarray, pixel_spacing: tuple[float, float],
                          rescale: tuple) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def input_specs_impl(self) -> list[TensorSpec]:
        raise NotImplementedError

    def output_specs_impl(self) -> list[TensorSpec]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {'active' if self._active else 'inactive'}>"


def _trt_module():
    """Import ``edge_agent.inference.trt`` lazily; None with the reason when TensorRT cannot be used here."""
    try:
        from edge_agent.inference import trt  # noqa: PLC0415 - optional backend, imported only on demand
    except ImportError as exc:
        return None, f"the TensorRT backend cannot be imported ({exc})"
    is_available = getattr(trt, "is_available", None)
    if is_available is None or not hasattr(trt, "TrtRunner"):
        return None, "this build has no TensorRT backend"
    if not is_available():
        why = getattr(trt, "why_unavailable", lambda: "TensorRT or pycuda is not installed")()
        return None, str(why).rstrip(".")
    return trt, None


def make_runner(manifest: "Manifest", backend: str = "auto", *, threads: int | None = None, device: int = 0,
                providers: list[str] | None = None, gpu_preprocess: bool = True,
                zero_copy: str = "auto") -> Runner:
    """The runner for a model, not yet active.

    ``backend``: ``"onnxrt"`` (ONNX Runtime; CPU, or CUDA/TensorRT execution
    providers where present — ``providers`` overrides), ``"tensorrt"`` (the
    ``engine`` artefact through TensorRT + pycuda) or ``"auto"`` (TensorRT when
    the manifest lists an engine and TensorRT is usable here, else ONNX Runtime).
    ``threads``: ONNX Runtime intra-op threads (None = its default).
    ``gpu_preprocess``: a TensorRT runner turns stored pixels into the model
    input with the CUDA kernel (``inference/trt/preprocess_kernel.py``).
    ``zero_copy``: ``"auto"`` (mapped pinned memory on integrated GPUs),
    ``"on"`` or ``"off"`` for a TensorRT runner's buffers.
    """
    if backend not in BACKENDS:
        raise RunnerError(f"Unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
    name = f"{manifest.name}@{manifest.version}"
    if backend in ("auto", "tensorrt"):
        engine = manifest.artefacts.get("engine")
        if backend == "tensorrt" and engine is None:
            raise ManifestError(f"Model {manifest.name} has no TensorRT engine in {manifest.path}; build one with "
                                f"'edge-agent convert {manifest.artefacts['onnx'].path}'.")
        if engine is not None:
            trt, why = _trt_module()
            if trt is not None:
                return trt.TrtRunner(engine.path, name=name, expected_inputs=manifest.inputs,
                                     expected_outputs=manifest.outputs, device=device,
                                     fingerprint=engine.fingerprint,
                                     onnx_sha256=manifest.artefacts["onnx"].sha256,
                                     preprocessing=manifest.preprocessing if gpu_preprocess else None,
                                     mapped={"on": True, "off": False}.get(zero_copy, "auto"))
            if backend == "auto":
                log.info("model %s has a TensorRT engine but TensorRT is unusable here (%s); using ONNX Runtime",
                         manifest.name, why)
            else:
                raise MissingDependency(f"Cannot use the TensorRT backend for {manifest.name}: {why}, "
                                        "or run with --backend onnxrt.")
    from edge_agent.inference.onnxrt import OnnxRuntimeRunner  # noqa: PLC0415 - keeps runner.py import-light

    return OnnxRuntimeRunner(Path(manifest.artefacts["onnx"].path), name=name, expected_inputs=manifest.inputs,
                             expected_outputs=manifest.outputs, threads=threads, device=device,
                             providers=providers)
