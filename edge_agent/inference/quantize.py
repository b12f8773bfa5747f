"""INT8 calibration: FP32 ONNX → Q/DQ ONNX that TensorRT builds as INT8.

Explicit quantisation is the road that lasts (implicit TensorRT calibrators
are deprecated since 10.1 and gone from Python in 11). onnxruntime's
``quantize_static`` writes a Q/DQ model that TensorRT's ONNX parser accepts
only when it is **symmetric and signed** (zero points 0, QDQ format, no
dynamic quantisation — onnx-tensorrt ``onnxOpImporters.cpp``), so
:data:`TENSORRT_SETTINGS` fixes exactly those options. Calibration data are
real DICOM series passed through the very same preprocessing as inference
(:func:`edge_agent.preprocess.prepare_volume`: for a 2.5-D model each slice
with its neighbours, picked by the series' positions along the normal).

The quantised model also runs on ONNX Runtime CPU (its Q/DQ arithmetic as
written, :data:`ORT_QDQ_CONFIG`), which is how :func:`compare` measures what
quantisation cost: per-slice probability differences and agreement,
per-series decisions under the manifest's rule, and AUC (against known
labels, else against the FP32 decisions). A model that
loses more than ``tolerance`` is refused and not written.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)

from edge_agent.decision import DecisionRule
from edge_agent.decision.rules import series_probability
from edge_agent.errors import EdgeAgentError
from edge_agent.inference.onnxrt import ORT_QDQ_CONFIG
from edge_agent.preprocess import PreprocessSpec, prepare_volume

log = logging.getLogger("edge_agent.quantize")

#: quantize_static options TensorRT's ONNX parser accepts (docs/TENSORRT.md, the INT8 section).
TENSORRT_SETTINGS = dict(
    quant_format=QuantFormat.QDQ,
    activation_type=QuantType.QInt8,
    weight_type=QuantType.QInt8,
    per_channel=True,
    reduce_range=False,
    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False},
)
METHODS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
           "percentile": CalibrationMethod.Percentile}


class CalibrationError(EdgeAgentError):
    """Calibration cannot run (no data) or its result loses too much; nothing was written.

    ``comparison`` holds the :class:`Comparison` when the model was refused.
    """

    comparison: "Comparison | None" = None


@dataclass
class SeriesInput:
    """One preprocessed series: model input ``(N, C, rows, cols)`` and an optional known label."""

    series_instance_uid: str
    inputs: np.ndarray
    label: bool | None = None


@dataclass
class Comparison:
    """What INT8 costs against FP32 on a validation set (all numbers on probabilities)."""

    slices: int
    series: int
    slice_max_abs_diff: float
    slice_mean_abs_diff: float
    slice_agreement: float        # fraction of slices on the same side of the slice threshold
    series_agreement: float       # fraction of series with the same decision
    series_max_abs_diff: float
    auc_reference: str            # "labels" | "fp32-decisions" | "none"
    auc_fp32: float | None
    auc_int8: float | None
    tolerance: float
    failures: list[str] = field(default_factory=list)
    per_series: list[dict] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def prepare_series(series: Iterable, spec: PreprocessSpec, labels: dict[str, bool] | None = None) -> list[SeriesInput]:
    """``edge_agent.dicom`` Series (``.hu``, ``.pixel_spacing``/``.spacing``) → :class:`SeriesInput` list.

    The inputs are the model's real input (:func:`edge_agent.preprocess.prepare_volume`): with
    ``spec.context`` each slice's own channels, then its neighbours' below and above, chosen by the series'
    ``positions`` along the normal (equally spaced when it has none).
    """
    out = []
    for s in series:
        spacing = getattr(s, "pixel_spacing", None) or tuple(s.spacing[1:])
        uid = s.series_instance_uid
        positions = getattr(s, "positions", None)
        if positions is not None and len(positions) != len(s.hu):
            positions = None
        out.append(SeriesInput(uid, prepare_volume(s.hu, spacing, spec, positions), (labels or {}).get(uid)))
    return out


class _DropMessage(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


class _Reader(CalibrationDataReader):
    """Feeds calibration batches to onnxruntime's calibrator (``progress(done, total)`` after each one)."""

    def __init__(self, input_name: str, batches: Sequence[np.ndarray],
                 progress: Callable[[int, int], None] | None = None):
        self._input_name = input_name
        self._iter = iter(batches)
        self._total, self._done, self._progress = len(batches), 0, progress

    def get_next(self) -> dict | None:
        if self._progress is not None:  # the calibrator asks for the next batch once the last one has run
            self._progress(self._done, self._total)
        batch = next(self._iter, None)
        if batch is None:
            return None
        self._done += 1
        return {self._input_name: batch}


def _batches(series: Sequence[SeriesInput], batch: int, max_slices: int | None) -> list[np.ndarray]:
    """Equal-sized batches (the histogram calibrators need that): the last one wraps around to the start."""
    stacked = np.concatenate([s.inputs for s in series], axis=0)
    if max_slices is not None and stacked.shape[0] > max_slices:
        pick = np.linspace(0, stacked.shape[0] - 1, max_slices).round().astype(int)
        stacked = stacked[pick]
    batch = min(batch, stacked.shape[0])
    short = -stacked.shape[0] % batch
    if short:
        stacked = np.concatenate([stacked, stacked[:short]], axis=0)
    return [stacked[i:i + batch] for i in range(0, stacked.shape[0], batch)]


def quantize(onnx_in: str | Path, onnx_out: str | Path, calibration: Sequence[SeriesInput], *,
             method: str = "minmax", batch: int = 8, max_slices: int | None = 512,
             progress: Callable[[str, int, int], None] | None = None) -> None:
    """Write a symmetric signed INT8 Q/DQ model calibrated on ``calibration`` (TENSORRT_SETTINGS)."""
    if not calibration:
        raise CalibrationError("No calibration series were found; point --data at folders with DICOM series "
                               "the model applies to.")
    if method not in METHODS:
        raise CalibrationError(f"--method must be one of {', '.join(METHODS)}.")
    model = onnx.load(str(onnx_in))
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise CalibrationError(f"Calibration supports models with one input; {Path(onnx_in).name} has {len(inputs)}.")
    reader = _Reader(inputs[0], _batches(calibration, batch, max_slices),
                     None if progress is None else lambda done, total: progress("calibrating", done, total))
    # onnxruntime logs "consider pre-processing" on the root logger; it does not apply to these models.
    quiet = _DropMessage("pre-processing")
    logging.getLogger().addFilter(quiet)
    try:
        quantize_static(str(onnx_in), str(onnx_out), reader, calibrate_method=METHODS[method],
                        **{k: v for k, v in TENSORRT_SETTINGS.items() if k != "extra_options"},
                        extra_options=dict(TENSORRT_SETTINGS["extra_options"]))
    except Exception as exc:  # noqa: BLE001 - onnxruntime.quantization raises untyped errors
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CalibrationError(f"onnxruntime could not quantise {Path(onnx_in).name} with --method {method} "
                               f"({type(exc).__name__}: {first}); try --method minmax or check the model.") from None
    finally:
        logging.getLogger().removeFilter(quiet)


def qdq_summary(onnx_path: str | Path) -> dict:
    """Counts of Q/DQ nodes and whether every zero point is 0 and every quantised type int8 (TensorRT's rule)."""
    model = onnx.load(str(onnx_path))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    q = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    zero_points = [inits[n.input[2]] for n in q + dq if len(n.input) > 2 and n.input[2] in inits]
    return {
        "quantize_linear": len(q),
        "dequantize_linear": len(dq),
        "symmetric": all(int(np.abs(z).max(initial=0)) == 0 for z in zero_points),
        "signed_int8": all(z.dtype == np.int8 for z in zero_points),
    }




def _session(path: str | Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    for key, value in ORT_QDQ_CONFIG.items():
        opts.add_session_config_entry(key, value)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _probabilities(session: ort.InferenceSession, inputs: np.ndarray, batch: int = 32) -> np.ndarray:
    name = session.get_inputs()[0].name
    parts = [session.run(None, {name: inputs[i:i + batch]})[0] for i in range(0, inputs.shape[0], batch)]
    out = np.concatenate(parts, axis=0).astype(np.float64)
    return out[:, 0] if out.ndim == 2 else out.reshape(out.shape[0], -1)[:, 0]


def auc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """ROC AUC by the Mann–Whitney statistic (ties count half); None without both classes."""
    s, y = np.asarray(scores, float), np.asarray(labels, bool)
    pos, neg = s[y], s[~y]
    if pos.size == 0 or neg.size == 0:
        return None
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (pos.size * neg.size))


def compare(fp32_path: str | Path, int8_path: str | Path, validation: Sequence[SeriesInput], rule: DecisionRule,
            tolerance: float = 0.02, progress: Callable[[str, int, int], None] | None = None) -> Comparison:
    """Run both models on ORT CPU over ``validation`` and judge INT8 against FP32 (see module docstring)."""
    if not validation:
        raise CalibrationError("No validation series were found; point --validation at DICOM series.")
    fp32, int8 = _session(fp32_path), _session(int8_path)
    slice_diffs, slice_same, rows, exact = [], [], [], []
    for n, s in enumerate(validation):
        if progress is not None:
            progress("comparing FP32 and INT8", n, len(validation))
        p32, p8 = _probabilities(fp32, s.inputs), _probabilities(int8, s.inputs)
        slice_diffs.append(np.abs(p32 - p8))
        slice_same.append((p32 >= rule.slice_cut) == (p8 >= rule.slice_cut))  # the slice's call
        s32, s8 = series_probability(np.clip(p32, 0, 1), rule), series_probability(np.clip(p8, 0, 1), rule)
        exact.append((s32, s8))
        rows.append({"series_instance_uid": s.series_instance_uid, "slices": int(p32.size), "label": s.label,
                     "fp32_probability": round(s32, 6), "int8_probability": round(s8, 6),
                     "fp32_positive": s32 >= rule.threshold, "int8_positive": s8 >= rule.threshold})
    if progress is not None:
        progress("comparing FP32 and INT8", len(validation), len(validation))
    diffs, same = np.concatenate(slice_diffs), np.concatenate(slice_same)
    decisions_same = [r["fp32_positive"] == r["int8_positive"] for r in rows]
    if all(r["label"] is not None for r in rows):
        reference, labels = "labels", [bool(r["label"]) for r in rows]
    else:
        reference, labels = "fp32-decisions", [r["fp32_positive"] for r in rows]
    # Ranked at 1e-4 resolution: closer probabilities are ties (no threshold can tell them apart).
    auc32 = auc([round(e[0], 4) for e in exact], labels)
    auc8 = auc([round(e[1], 4) for e in exact], labels)
    if auc32 is None:
        reference = "none"
    result = Comparison(
        slices=int(diffs.size), series=len(rows), slice_max_abs_diff=float(diffs.max()),
        slice_mean_abs_diff=float(diffs.mean()), slice_agreement=float(same.mean()),
        series_agreement=float(np.mean(decisions_same)),
        series_max_abs_diff=float(max(abs(a - b) for a, b in exact)),
        auc_reference=reference, auc_fp32=auc32, auc_int8=auc8, tolerance=float(tolerance), per_series=rows)
    if result.slice_mean_abs_diff > tolerance:
        result.failures.append(f"mean slice probability difference {result.slice_mean_abs_diff:.4f} > {tolerance}")
    if 1.0 - result.series_agreement > tolerance:
        result.failures.append(f"{sum(not x for x in decisions_same)} of {len(rows)} series decisions changed")
    if auc32 is not None and auc8 is not None and auc32 - auc8 > tolerance:
        result.failures.append(f"AUC fell from {auc32:.3f} to {auc8:.3f}")
    return result


def calibrate(onnx_path: str | Path, output: str | Path, calibration: Sequence[SeriesInput],
              validation: Sequence[SeriesInput], rule: DecisionRule, *, tolerance: float = 0.02,
              method: str = "minmax", progress: Callable[[str, int, int], None] | None = None) -> Comparison:
    """Quantise, compare with FP32, and write ``output`` only if the INT8 model is within ``tolerance``.

    ``progress(stage, done, total)`` is called as the calibration batches and validation series go by.

    Raises :class:`CalibrationError` (nothing written) when it is not.
    """
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{output.stem}-", suffix=".onnx.tmp", dir=output.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        quantize(onnx_path, tmp, calibration, method=method, progress=progress)
        result = compare(onnx_path, tmp, validation, rule, tolerance, progress=progress)
        if not result.passed:
            error = CalibrationError(f"The INT8 model loses more than the tolerance {tolerance} "
                                     f"({'; '.join(result.failures)}), so {output.name} was not written; calibrate "
                                     "with more representative --data, try --method percentile, or keep FP16.")
            error.comparison = result
            raise error
        os.replace(tmp, output)
        return result
    finally:
        tmp.unlink(missing_ok=True)
