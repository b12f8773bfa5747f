"""The ``Runner`` interface every inference backend implements.

Polygraphy's pattern (``polygraphy/backend/base/runner.py``): the public
:meth:`Runner.activate`, :meth:`Runner.infer` and :meth:`Runner.deactivate`
check state and inputs, then call the backend's ``*_impl``; a runner is a
context manager. This module is the base only: it imports no backend. The
backends (:mod:`edge_agent.inference.onnxrt`, ``edge_agent.inference.trt``)
import it, and :mod:`edge_agent.inference.backends` names them and picks one
for a model (:func:`~edge_agent.inference.backends.make_runner`).

A backend subclass implements ``activate_impl()``, ``deactivate_impl()``,
``infer_impl(feed) -> dict``, ``input_specs_impl()`` and
``output_specs_impl()`` (lists of :class:`TensorSpec` discovered from the
model/engine, -1 for dynamic dimensions) and may override
:meth:`Runner.max_batch_size`. Runners whose resources belong to one OS
thread (CUDA contexts) set ``thread_bound = True``: ``infer`` and
``deactivate`` are then refused from any thread but the one that activated.
A runner that prepares stored pixels on its device (TensorRT) also
implements :class:`DevicePreprocessing`; callers check it with ``isinstance``.
"""

from __future__ import annotations

import abc
import threading
from typing import TYPE_CHECKING

import numpy as np

from edge_agent.errors import EdgeAgentError
from edge_agent.inference.manifest import TensorSpec

if TYPE_CHECKING:
    from edge_agent.inference.manifest import Manifest


class RunnerError(EdgeAgentError):
    """A runner was misused (state, inputs) or its model cannot run."""


def shapes_compatible(actual: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    """Same rank and every static dimension equal (-1 matches anything)."""
    return len(actual) == len(expected) and all(a == e or a == -1 or e == -1 for a, e in zip(actual, expected))


def manifest_args(manifest: "Manifest") -> dict:
    """What every backend's runner takes from a manifest: its name (``name@version``) and expected tensors."""
    return {"name": f"{manifest.name}@{manifest.version}", "expected_inputs": manifest.inputs,
            "expected_outputs": manifest.outputs}


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
        #: ms per stage ("preprocess", "inference") of the last call, where the backend times it on its device;
        #: empty: the caller times the call itself.
        self.last_timings: dict[str, float] = {}

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

    # -- backend hooks -------------------------------------------------------------
    def activate_impl(self) -> None:
        raise NotImplementedError

    def deactivate_impl(self) -> None:
        raise NotImplementedError

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def input_specs_impl(self) -> list[TensorSpec]:
        raise NotImplementedError

    def output_specs_impl(self) -> list[TensorSpec]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {'active' if self._active else 'inactive'}>"


class DevicePreprocessing(abc.ABC):
    """What a :class:`Runner` has that turns stored pixels into its model's input itself, on its device.

    Only the TensorRT runner has it (the CUDA kernel, ``inference/trt/preprocess_kernel.py``); callers
    check ``isinstance(runner, DevicePreprocessing)``, then :meth:`stored_input_dtypes`, which is empty
    while device preprocessing is off (``preprocess_problem`` says why). Mix it into a ``Runner``
    subclass: :meth:`infer_stored` checks state and thread as :meth:`Runner.infer` does.
    """

    preprocess_problem: str | None = None  # why device preprocessing is off (None: on, or not asked for)

    @abc.abstractmethod
    def stored_input_dtypes(self) -> tuple[np.dtype, ...]:
        """Stored-pixel dtypes this runner turns into model input itself, on its device (empty: none now)."""

    @abc.abstractmethod
    def stop_device_preprocessing(self, reason: str) -> None:
        """Give up preprocessing on the device (after a failure); :meth:`stored_input_dtypes` is empty after."""

    def infer_stored(self, stored: np.ndarray, pixel_spacing: tuple[float, float],
                     rescale: tuple) -> dict[str, np.ndarray]:
        """Run the model on stored pixels ``(N, H, W)`` as they came out of the DICOM files.

        ``rescale`` is ``(slope, intercept, padding)`` with ``padding`` a
        ``(lo, hi)`` stored-value range or None (``Slice.rescale``). Only for
        dtypes :meth:`stored_input_dtypes` lists; the runner applies the
        manifest's preprocessing on its device.
        """
        self._require_active("infer_stored()")
        self._check_thread("infer")
        if np.dtype(stored.dtype) not in self.stored_input_dtypes():
            raise RunnerError(f"Runner {self.name} cannot preprocess {stored.dtype} stored pixels itself; "
                              "convert them to HU and call infer().")
        if stored.ndim != 3:
            raise RunnerError(f"Stored pixels for {self.name} must be (N, H, W), not {list(stored.shape)}.")
        return self.infer_stored_impl(stored, pixel_spacing, rescale)

    @abc.abstractmethod
    def infer_stored_impl(self, stored: np.ndarray, pixel_spacing: tuple[float, float],
                          rescale: tuple) -> dict[str, np.ndarray]:
        """The backend's stored pixels → outputs (inputs checked)."""
