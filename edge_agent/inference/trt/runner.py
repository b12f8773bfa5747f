"""TensorRT backend: :class:`TrtRunner` (named-tensor API, pycuda buffers), and :func:`load_runner` (the
registry's ``tensorrt`` loader, :mod:`edge_agent.inference.backends`).

Context ownership (the rules in docs/TENSORRT.md): the runner retains the
device's *primary* context (what TensorRT and other CUDA libraries expect;
never ``pycuda.autoinit``) and is thread-bound — the thread that activates it
is the only one that may infer or deactivate. That thread pushes the context
around every operation and pops it afterwards, so its context stack is empty
between calls and at exit. Engine, execution context, stream and buffers are
created once in :meth:`activate` and freed explicitly in :meth:`deactivate`,
by that thread, never in ``__del__``.

Inference: ``set_input_shape`` per input (checked against optimisation
profile 0), async H2D copies from pinned memory, ``execute_async_v3`` on the
runner's own non-default stream, async D2H copies, one ``synchronize``.
With ``mapped=True`` the host buffers are mapped pinned memory whose device
pointers TensorRT reads directly (Jetson's shared DRAM: no copies).

GPU preprocessing: given the manifest's ``preprocessing``, the runner also
compiles the preprocessing kernel at activation and :meth:`infer_stored`
uploads stored pixels (2 bytes each) and lets the kernel write the model
input straight into the engine's input buffer, on the runner's stream. If the
kernel cannot be built (no nvcc, say), the runner says so once and the
model's input is prepared on the CPU instead.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edge_agent.inference.manifest import TensorSpec
from edge_agent.inference.runner import DevicePreprocessing, Runner, RunnerError, manifest_args
from edge_agent.inference.trt import import_cuda, import_tensorrt
from edge_agent.inference.trt.buffers import IOBuffers
from edge_agent.inference.trt.loader import IOTensor, deserialize, io_tensors, last_errors
from edge_agent.preprocess import PreprocessSpec

if TYPE_CHECKING:
    from edge_agent.inference.backends import TrtOptions
    from edge_agent.inference.manifest import Manifest

log = logging.getLogger("edge_agent.trt")


class TrtRunner(Runner, DevicePreprocessing):
    """Runs a TensorRT engine built by ``edge-agent convert``.

    ``engine_path``: the serialized engine; its fingerprint (``fingerprint``,
    default ``<engine>.json``) must match this machine, else activation is
    refused with a sentence that says to run ``convert``. ``onnx_sha256``:
    when given, the engine must have been built from that ONNX file.
    ``device``: CUDA device ordinal. ``mapped``: zero-copy host buffers —
    True, False, or ``"auto"`` (on when the device is integrated with the
    CPU's memory and can map host memory: a Jetson).
    ``preprocessing``: the manifest's preprocessing, to run on the GPU
    (None: the caller feeds prepared input only).
    """

    thread_bound = True
    backend = "tensorrt"

    def __init__(self, engine_path: str | Path, *, name: str | None = None, expected_inputs=None,
                 expected_outputs=None, device: int = 0, fingerprint: str | Path | None = None,
                 onnx_sha256: str | None = None, mapped: bool | str = False,
                 preprocessing: PreprocessSpec | None = None) -> None:
        self.engine_path = Path(engine_path)
        super().__init__(name or self.engine_path.stem, expected_inputs=expected_inputs,
                         expected_outputs=expected_outputs)
        self.device = int(device)
        self.fingerprint_file = fingerprint
        self.onnx_sha256 = onnx_sha256
        if mapped not in (True, False, "auto"):
            raise RunnerError(f"mapped must be True, False or 'auto', not {mapped!r}.")
        self.mapped_setting = mapped
        self.mapped = mapped is True  # "auto" is decided at activation, from the device
        self.preprocessing = preprocessing
        self.preprocess_problem: str | None = None  # DevicePreprocessing: why it is off (None: on, or not asked for)
        self._pre = None
        self._events = None  # CUDA events timing the kernel and the engine on the stream (GPU preprocessing)
        self.fingerprint = None
        self._cuda = self._cuda_ctx = None
        self._runtime = self._engine = self._context = self._stream = None
        self._buffers: IOBuffers | None = None
        self._tensors: list[IOTensor] = []

    # -- context discipline ---------------------------------------------------------
    def _push(self) -> None:
        self._cuda_ctx.push()

    def _pop(self) -> None:
        self._cuda.Context.pop()

    # -- Runner hooks ---------------------------------------------------------------
    def activate_impl(self) -> None:
        trt = import_tensorrt()
        cuda = self._cuda = import_cuda()
        cuda.init()
        if self.device >= cuda.Device.count():
            raise RunnerError(f"CUDA device {self.device} does not exist ({cuda.Device.count()} found); "
                              "pick another --device.")
        device = cuda.Device(self.device)
        if self.mapped_setting == "auto":
            self.mapped = _integrated(cuda, device)
        self._cuda_ctx = device.retain_primary_context()
        self._push()
        try:
            self._runtime, self._engine, self.fingerprint = deserialize(
                self.engine_path, onnx_sha256=self.onnx_sha256, fingerprint_file=self.fingerprint_file)
            self._tensors = io_tensors(self._engine)
            self._context = self._engine.create_execution_context()
            if self._context is None:
                raise RunnerError(f"TensorRT could not create an execution context for {self.engine_path.name} "
                                  f"({last_errors()}); free GPU memory or rebuild with a smaller workspace.")
            self._stream = cuda.Stream()
            self._allocate(trt)
            self._start_preprocessing()
        except BaseException:
            self._release()
            self._pop()
            self._detach()
            raise
        self._pop()
        log.info("TensorRT engine %s active on %s (%s I/O buffers, %.1f MiB; preprocessing on the %s)",
                 self.engine_path.name, cuda.Device(self.device).name(),
                 "mapped zero-copy" if self.mapped else "pinned+device", self._buffers.bytes_allocated / 2**20,
                 "GPU" if self._pre is not None else "CPU")

    def _allocate(self, trt) -> None:
        """One buffer per I/O tensor, sized for profile 0's maximum shapes."""
        ctx = self._context
        self._buffers = IOBuffers(self._cuda, mapped=self.mapped)
        for t in self._tensors:
            if t.is_input:
                if not ctx.set_input_shape(t.name, t.max_shape):
                    raise RunnerError(f"Engine {self.engine_path.name} refused its own maximum shape "
                                      f"{list(t.max_shape)} for {t.name!r}; rebuild it with 'edge-agent convert'.")
        for t in self._tensors:
            shape = t.max_shape if t.is_input else tuple(int(d) for d in ctx.get_tensor_shape(t.name))
            if any(d < 0 for d in shape):
                raise RunnerError(f"Output {t.name!r} of {self.engine_path.name} has no upper bound {list(shape)}; "
                                  "data-dependent output shapes are not supported.")
            buf = self._buffers.allocate(t.name, t.dtype, shape)
            if not ctx.set_tensor_address(t.name, buf.device_ptr):
                raise RunnerError(f"TensorRT refused the buffer address for {t.name!r} ({last_errors()}).")

    def _start_preprocessing(self) -> None:
        """Compile the preprocessing kernel for the one image input (context pushed); off with a reason if not."""
        spec = self.preprocessing
        if spec is None:
            return
        if spec.context is not None:  # a 2.5-D input needs neighbour slices: Model prepares it on the CPU
            self.preprocess_problem = ("the model needs neighbour slices (preprocessing.context): its input is "
                                       "prepared on the CPU")
            log.debug("model %s: %s", self.name, self.preprocess_problem)
            return
        inputs = [t for t in self._tensors if t.is_input]
        t = inputs[0]
        expected = (len(spec.windows), *spec.size)
        if len(inputs) != 1 or len(t.max_shape) != 4 or tuple(t.max_shape[1:]) != expected:
            self.preprocess_problem = (f"the engine's inputs do not take one (N, {', '.join(map(str, expected))}) "
                                       "image tensor as the manifest's preprocessing makes")
        elif t.dtype not in ("float32", "float16"):
            self.preprocess_problem = f"the engine's input is {t.dtype}; the kernel writes float32 or float16"
        else:
            from edge_agent.inference.trt.preprocess_kernel import GpuPreprocessor  # noqa: PLC0415

            pre = None
            try:
                pre = GpuPreprocessor(PreprocessSpec(spec.windows, spec.size, spec.pixel_spacing_mm, t.dtype),
                                      max_slices=int(t.max_shape[0]), raw_dtype=None, stream=self._stream,
                                      mapped=self.mapped)
                pre.prepare()
                cuda = self._cuda
                events = (cuda.Event(), cuda.Event(), cuda.Event())
                self._pre, self._events = pre, events
            except Exception as exc:  # noqa: BLE001 - nvcc missing or failing, out of memory: CPU path instead
                self.preprocess_problem = f"the preprocessing kernel could not be built ({_short(exc)})"
                if pre is not None:
                    try:
                        pre.free()
                    except Exception:  # noqa: BLE001 - what is left goes with the context at deactivation
                        log.warning("model %s: freeing a half-built preprocessor failed", self.name, exc_info=True)
        if self.preprocess_problem:
            log.warning("model %s: GPU preprocessing is off because %s; its input is prepared on the CPU",
                        self.name, self.preprocess_problem)

    def stop_device_preprocessing(self, reason: str) -> None:
        """Free the kernel and its buffers (owning thread); stored pixels then go through the CPU path."""
        self._check_thread("stop device preprocessing")
        if self._pre is None:
            return
        self._push()
        try:
            self._pre.free()
        except Exception:  # noqa: BLE001 - a broken context may refuse; the buffers go with the context
            log.warning("model %s: freeing the GPU preprocessing buffers failed", self.name, exc_info=True)
        finally:
            self._pre = self._events = None
            self._pop()
        self.preprocess_problem = reason

    def stored_input_dtypes(self) -> tuple[np.dtype, ...]:
        if self._pre is None:
            return ()
        return tuple(np.dtype(d) for d in self._pre.RAW_DTYPES)

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        buffers, stream = self._buffers, self._stream
        self._push()
        try:
            for t in self._tensors:
                if not t.is_input:
                    continue
                array = np.ascontiguousarray(feed[t.name])
                self._set_shape(t, array.shape)
                buffers.upload(t.name, array, stream)
            return self._execute()
        finally:
            self._pop()

    def infer_stored_impl(self, stored: np.ndarray, pixel_spacing: tuple[float, float],
                          rescale: tuple) -> dict[str, np.ndarray]:
        """Stored pixels → kernel → engine input buffer → engine → outputs, all on the runner's stream."""
        t = next(t for t in self._tensors if t.is_input)
        n = int(stored.shape[0])
        batch = max(n, int(t.min_shape[0]))  # a fixed-batch engine runs full; the caller keeps the first n rows
        slope, intercept, padding = rescale
        lo, hi = padding if padding is not None else (None, None)
        start, prepared, done = self._events
        self._push()
        try:
            self._set_shape(t, (batch, *t.max_shape[1:]))
            start.record(self._stream)
            self._pre.run(np.ascontiguousarray(stored), pixel_spacing, slope=float(slope),
                          intercept=float(intercept), padding_value=lo, padding_limit=hi,
                          out_ptr=self._buffers.tensors[t.name].device_ptr)
            prepared.record(self._stream)
            outputs = self._execute(mark=done)
            # Runner.last_timings, stream time, no extra synchronisation: upload + kernel, then engine + downloads.
            self.last_timings = {"preprocess": prepared.time_since(start), "inference": done.time_since(prepared)}
            return outputs
        finally:
            self._pop()

    def _set_shape(self, t: IOTensor, shape: tuple[int, ...]) -> None:
        self._check_profile(t, shape)
        if not self._context.set_input_shape(t.name, shape):
            raise RunnerError(f"TensorRT refused shape {list(shape)} for input {t.name!r} ({last_errors()}).")

    def _execute(self, mark=None) -> dict[str, np.ndarray]:
        """Enqueue the engine and the output downloads on the stream, wait, return copies (context pushed).

        ``mark``: a CUDA event recorded on the stream after the downloads.
        """
        ctx, buffers, stream = self._context, self._buffers, self._stream
        if not ctx.execute_async_v3(stream.handle):
            raise RunnerError(f"TensorRT inference failed for {self.name} ({last_errors()}).")
        views = {t.name: buffers.start_download(t.name, tuple(int(d) for d in ctx.get_tensor_shape(t.name)), stream)
                 for t in self._tensors if not t.is_input}
        if mark is not None:
            mark.record(stream)
        stream.synchronize()
        return {name: view.copy() for name, view in views.items()}

    def _check_profile(self, t: IOTensor, shape: tuple[int, ...]) -> None:
        lo, hi = t.min_shape, t.max_shape
        if len(shape) != len(hi) or any(s < a or s > b for s, a, b in zip(shape, lo, hi)):
            raise RunnerError(f"Input {t.name!r} of {self.name} has shape {list(shape)} outside the engine's "
                              f"profile {list(lo)}..{list(hi)}; send smaller batches or rebuild with "
                              "'edge-agent convert --max-batch N'.")

    def deactivate_impl(self) -> None:
        self._push()
        try:
            self._release()
        finally:
            self._pop()
            self._detach()

    def _release(self) -> None:
        """Free buffers, then TensorRT objects in reverse order of creation (context current)."""
        if self._pre is not None:
            self._pre.free()
        self._pre = None
        self._events = None  # destroyed now, while the context is current
        if self._buffers is not None:
            self._buffers.free()
        self._buffers = None
        self._stream = None
        self._context = None
        self._engine = None
        self._runtime = None

    def _detach(self) -> None:
        if self._cuda_ctx is not None:
            self._cuda_ctx.detach()  # releases our retain of the primary context
        self._cuda_ctx = None

    def input_specs_impl(self) -> list[TensorSpec]:
        return [TensorSpec(t.name, t.shape, t.dtype) for t in self._tensors if t.is_input]

    def output_specs_impl(self) -> list[TensorSpec]:
        return [TensorSpec(t.name, t.shape, t.dtype) for t in self._tensors if not t.is_input]

    def max_batch_size(self) -> int | None:
        """Profile 0's largest batch for the first input."""
        self._require_active("asking for its batch size")
        first = next(t for t in self._tensors if t.is_input)
        return int(first.max_shape[0])


def load_runner(manifest: "Manifest", *, device: int = 0, options: "TrtOptions") -> TrtRunner:
    """The runner of ``manifest``'s ``engine`` artefact as ``options`` say, not yet active."""
    engine = manifest.artefacts["engine"]
    return TrtRunner(engine.path, **manifest_args(manifest), device=device, fingerprint=engine.fingerprint,
                     onnx_sha256=manifest.artefacts["onnx"].sha256,
                     preprocessing=manifest.preprocessing if options.gpu_preprocess else None, mapped=options.mapped)


def _integrated(cuda, device) -> bool:
    """Whether the GPU shares the CPU's memory and can map host memory (Jetson), so zero-copy pays."""
    attrs = getattr(cuda, "device_attribute", None)
    try:
        return bool(device.get_attribute(attrs.INTEGRATED)) and bool(device.get_attribute(attrs.CAN_MAP_HOST_MEMORY))
    except Exception:  # noqa: BLE001 - an older pycuda or driver without the attribute: copy
        return False


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
