"""ONNX Runtime backend: :class:`OnnxRuntimeRunner`, and :func:`load_runner` (the registry's ``onnxrt`` loader).

CPU by default; the CUDA and TensorRT execution providers are used where the
installed onnxruntime has them (onnxruntime-gpu, JetPack builds) — see
https://onnxruntime.ai/docs/execution-providers/ . ONNX Runtime is the only
inference dependency that must exist everywhere, so it is imported here, at
module level.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from edge_agent.inference.manifest import TensorSpec
from edge_agent.inference.runner import Runner, RunnerError, manifest_args

if TYPE_CHECKING:
    from edge_agent.inference.manifest import Manifest

#: Session config for judging a Q/DQ model on ORT CPU: run its Q/DQ arithmetic as written (DQ → float op → Q, what
#: TensorRT's INT8 computes) instead of fusing it into ORT's QLinearConv/QGemm. Those fused kernels run u8 x s8 on
#: x86, and on CPUs without VNNI (AVX2 only) their int16 pair sums saturate with full 8-bit weights; since ORT 1.21
#: they are used for Conv/Gemm with a float bias too (QuantizeBias False no longer keeps them out), which turned a
#: 0.01 loss into a 0.21 one on such CPUs. Unknown keys are ignored by older ORT, which did not fuse these anyway.
ORT_QDQ_CONFIG = {"session.disable_quant_qdq": "1"}

# Preference order when providers are chosen automatically.
PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
_DEVICE_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")

# ONNX tensor element types (onnxruntime's type strings) → numpy dtype names.
_ORT_DTYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int32)": "int32", "tensor(int64)": "int64",
    "tensor(bool)": "bool",
}


def available_providers() -> list[str]:
    """Execution providers this onnxruntime build offers."""
    return list(ort.get_available_providers())


def default_providers() -> list[str]:
    """CUDA/TensorRT EPs where present, CPU always last."""
    have = set(available_providers())
    return [p for p in PREFERRED_PROVIDERS if p in have or p == "CPUExecutionProvider"]


def _spec(node) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) and d > 0 else -1 for d in (node.shape or []))
    return TensorSpec(node.name, shape, _ORT_DTYPES.get(node.type, node.type))


class OnnxRuntimeRunner(Runner):
    """Runs an ONNX model with onnxruntime.

    ``threads``: intra-op threads (None = onnxruntime's default, one per
    physical core). ``providers``: execution providers in order of
    preference (None = :func:`default_providers`); an unavailable one is an
    error. ``device``: the CUDA device for the CUDA/TensorRT providers.
    Batches of any size go through in one call (dynamic batch axis).
    """

    backend = "onnxrt"

    def __init__(self, model_path: str | Path, *, name: str | None = None, threads: int | None = None,
                 providers: list[str] | None = None, device: int = 0, expected_inputs=None, expected_outputs=None):
        self.model_path = Path(model_path)
        super().__init__(name or self.model_path.stem, expected_inputs=expected_inputs,
                         expected_outputs=expected_outputs)
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise RunnerError(f"threads must be a whole number ≥ 1, not {threads!r}.")
        self.threads = threads
        self.device = device
        self.requested_providers = list(providers) if providers else None
        self.session: ort.InferenceSession | None = None
        self._output_names: list[str] = []

    @property
    def providers(self) -> list[str]:
        """Providers the active session really uses (empty when inactive)."""
        return list(self.session.get_providers()) if self.session is not None else []

    def _provider_list(self) -> list:
        wanted = self.requested_providers or default_providers()
        have = set(available_providers())
        missing = [p for p in wanted if p not in have]
        if missing:
            raise RunnerError(f"onnxruntime here has no {', '.join(missing)} (it has {', '.join(sorted(have))}); "
                              "choose available providers or install the matching onnxruntime build.")
        return [(p, {"device_id": self.device}) if p in _DEVICE_PROVIDERS else p for p in wanted]

    def activate_impl(self) -> None:
        if not self.model_path.is_file():
            raise RunnerError(f"ONNX model {self.model_path} does not exist; check the model folder.")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        for key, value in ORT_QDQ_CONFIG.items():  # an INT8 (Q/DQ) model computes as written, on every CPU
            options.add_session_config_entry(key, value)
        if self.threads is not None:
            options.intra_op_num_threads = self.threads
        options.log_severity_level = 3  # errors only: provider fallbacks are reported via .providers
        try:
            self.session = ort.InferenceSession(str(self.model_path), sess_options=options,
                                                providers=self._provider_list())
        except RunnerError:
            raise
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RunnerError(f"onnxruntime cannot load {self.model_path} ({first}); "
                              "re-export the model or check the file.") from None
        self._output_names = [o.name for o in self.session.get_outputs()]

    def deactivate_impl(self) -> None:
        self.session = None
        self._output_names = []

    def input_specs_impl(self) -> list[TensorSpec]:
        return [_spec(i) for i in self.session.get_inputs()]

    def output_specs_impl(self) -> list[TensorSpec]:
        return [_spec(o) for o in self.session.get_outputs()]

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            outputs = self.session.run(self._output_names, feed)
        except Exception as exc:  # noqa: BLE001
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RunnerError(f"onnxruntime failed running {self.name} ({first}).") from None
        return dict(zip(self._output_names, outputs))


def load_runner(manifest: "Manifest", *, threads: int | None = None, device: int = 0,
                providers: list[str] | None = None) -> OnnxRuntimeRunner:
    """The runner of ``manifest``'s ``onnx`` artefact, not yet active (:mod:`edge_agent.inference.backends`)."""
    return OnnxRuntimeRunner(Path(manifest.artefacts["onnx"].path), **manifest_args(manifest), threads=threads,
                             device=device, providers=providers)
