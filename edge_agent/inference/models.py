"""The loaded models and which series each one applies to.

:class:`ModelSet` loads every ``<name>/manifest.json`` under an engines
folder (the shipped ``edge_agent.engines`` by default), makes a runner for
each (activated lazily, in the thread that first scores with it) and routes
series to models by the manifests' ``applies_to`` rules (docs/MANIFEST.md).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from edge_agent.errors import EdgeAgentError
from edge_agent.inference import applicability
from edge_agent.inference.applicability import Refusal
from edge_agent.inference.manifest import (
    MANIFEST_NAME, Manifest, ManifestError, load_manifest, override_alert_at, override_applies_to,
)
from edge_agent.inference.backends import TrtOptions, make_runner
from edge_agent.inference.runner import DevicePreprocessing, Runner, RunnerError
from edge_agent.preprocess import context_planes, prepare_slices, prepare_volume, volume_batches

DEFAULT_BATCH = 16

log = logging.getLogger("edge_agent.inference")


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip().upper()


@dataclass
class Model:
    """One model: its manifest and its runner (activated on first use)."""

    manifest: Manifest
    runner: Runner
    batch_size: int = DEFAULT_BATCH
    fallback: Callable[[], Runner] | None = None  # backend "auto": ONNX Runtime if the first runner cannot start
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _told_cpu: bool = field(default=False, repr=False)  # the "needs neighbour slices" line was logged

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def context(self):
        """The manifest's ``preprocessing.context`` (a 2.5-D model's neighbour slices), or None."""
        pp = self.manifest.preprocessing
        return None if pp is None else pp.context

    def ensure_active(self) -> None:
        """Activate the runner in the calling thread if it is not active yet."""
        with self._lock:
            if self.runner.is_active:
                return
            try:
                self.runner.activate()
            except EdgeAgentError as exc:
                if self.fallback is None:
                    raise
                log.warning("model %s: %s backend cannot start (%s); falling back to ONNX Runtime",
                            self.name, self.runner.backend, exc)
                self.runner, self.fallback = self.fallback(), None
                self.runner.activate()

    def preprocess(self, hu: np.ndarray, pixel_spacing: tuple[float, float],
                   positions: np.ndarray | None = None) -> np.ndarray:
        """HU slices ``(N, H, W)`` → the model input ``(N, C, rows, cols)`` (manifest preprocessing).

        A 2.5-D model (``preprocessing.context``) takes the slices as one series: ``positions`` (mm along the
        normal; None: equally spaced) pick each slice's neighbours (:func:`edge_agent.preprocess.prepare_volume`).
        """
        return prepare_volume(hu, pixel_spacing, self.manifest.preprocessing, positions)

    def prepare_context(self, hu: np.ndarray, pixel_spacing: tuple[float, float], *, own: bool = True
                        ) -> tuple[np.ndarray | None, np.ndarray]:
        """A 2.5-D model's two parts of each slice's input: (its own channels or None, its context planes).

        ``prepare_slices`` and ``context_planes`` of the manifest's preprocessing; the daemon keeps these
        (not the HU) until the slice and its neighbours are scored (:meth:`infer_batched` on
        :func:`edge_agent.preprocess.stack_context` of them).
        """
        spec = self.manifest.preprocessing
        return (prepare_slices(hu, pixel_spacing, spec) if own else None), context_planes(hu, pixel_spacing, spec)

    def tell_cpu_input(self) -> None:
        """Once per model: a 2.5-D model on TensorRT does not use the GPU stored-pixel preprocessing."""
        if not self._told_cpu and isinstance(self.runner, DevicePreprocessing):
            self._told_cpu = True
            log.info("model %s needs neighbour slices: its input is prepared on the CPU", self.name)

    def _batch(self) -> tuple[int, int | None]:
        """(slices per runner call, the runner's fixed batch limit or None)."""
        limit = self.runner.max_batch_size()
        return max(1, min(self.batch_size, limit) if limit else self.batch_size), limit

    def _probabilities(self, outputs: dict[str, np.ndarray], n: int) -> np.ndarray:
        """The first ``n`` rows of the manifest's output as ``(n, F)`` float32, checked against the findings."""
        n_findings = len(self.manifest.findings)
        out = np.asarray(outputs[self.manifest.outputs[0].name], dtype=np.float32)[:n].reshape(n, -1)
        if out.shape[1] != n_findings:
            raise RunnerError(f"Model {self.name} returned {out.shape[1]} scores per slice but its manifest "
                              f"lists {n_findings} findings; fix the manifest or the model.")
        return out

    def infer_batched(self, x: np.ndarray) -> np.ndarray:
        """Model input ``(N, C, rows, cols)`` → per-slice probabilities ``(N, F)`` float32, in batches."""
        self.ensure_active()
        batch, limit = self._batch()
        input_name = self.manifest.inputs[0].name
        parts = [np.zeros((0, len(self.manifest.findings)), dtype=np.float32)]
        for start in range(0, x.shape[0], batch):
            chunk = np.ascontiguousarray(x[start:start + batch])
            if limit and chunk.shape[0] < limit and self.runner.input_specs()[0].shape[0] == limit:
                pad = np.zeros((limit - chunk.shape[0], *chunk.shape[1:]), dtype=chunk.dtype)
                chunk = np.concatenate([chunk, pad])
            parts.append(self._probabilities(self.runner.infer({input_name: chunk}), min(batch, x.shape[0] - start)))
        return np.concatenate(parts)

    def score_images(self, slices: Sequence[Any], timings: dict[str, float] | None = None) -> np.ndarray:
        """Slices (``edge_agent.dicom.Slice``: HU, or stored values + rescale) → probabilities ``(N, F)``.

        Stored int16/uint16 pixels go to the runner's own device preprocessing
        when it has one (TensorRT: the CUDA kernel; one launch per image size,
        pixel spacing and rescale), timed on the runner's stream (``preprocess``:
        upload + kernel, ``inference``: engine + downloads); everything else
        becomes HU and is prepared on the CPU
        (the reference), one group per image size and pixel spacing. Rows
        come back in the order of ``slices``.
        """
        self.ensure_active()
        out = np.zeros((len(slices), len(self.manifest.findings)), dtype=np.float32)
        if self.context is not None:  # 2.5-D: the slices are one stack, scored with their neighbours among them
            return self._score_stack(slices, out, timings)
        on_device = self.runner.stored_input_dtypes() if isinstance(self.runner, DevicePreprocessing) else ()
        groups: dict[tuple, list[int]] = {}
        for i, s in enumerate(slices):
            stored = getattr(s, "stored", None)
            device = (stored is not None and s.rescale is not None and stored.dtype in on_device
                      and getattr(s, "hu", None) is None)
            key = (device, (s.rows, s.columns), tuple(float(v) for v in s.pixel_spacing),
                   tuple(s.rescale) if device else None)
            groups.setdefault(key, []).append(i)
        for (device, _shape, spacing, rescale), index in groups.items():
            if device:
                try:
                    out[index] = self._score_stored(np.stack([slices[i].stored for i in index]), spacing, rescale,
                                                    timings)
                    continue
                except RunnerError:
                    raise
                except Exception as exc:  # noqa: BLE001 - a kernel launch or copy failed: keep scoring, on the CPU
                    log.error("model %s: GPU preprocessing failed (%s: %s); its input is prepared on the CPU from "
                              "now on", self.name, type(exc).__name__, exc)
                    self.runner.stop_device_preprocessing(f"it failed: {type(exc).__name__}: {exc}")
            hu = np.stack([_hu(slices[i]) for i in index])
            out[index] = self.score_slices(hu, spacing, timings=timings)
        return out

    def _score_stack(self, slices: Sequence[Any], out: np.ndarray, timings: dict[str, float] | None) -> np.ndarray:
        """A 2.5-D model on a set of slices: HU on the CPU (never the device kernel), neighbours chosen among
        the slices of the same image size and pixel spacing by their positions along the normal."""
        self.tell_cpu_input()
        groups: dict[tuple, list[int]] = {}
        for i, s in enumerate(slices):
            groups.setdefault(((s.rows, s.columns), tuple(float(v) for v in s.pixel_spacing)), []).append(i)
        for (_shape, spacing), index in groups.items():
            positions = _positions_along_normal([slices[i] for i in index])
            hu = np.stack([_hu(slices[i]) for i in index])
            out[index] = self.score_slices(hu, spacing, timings=timings, positions=positions)
        return out

    def _score_stored(self, stored: np.ndarray, spacing: tuple[float, float], rescale: tuple,
                      timings: dict[str, float] | None) -> np.ndarray:
        batch, _limit = self._batch()
        parts = [np.zeros((0, len(self.manifest.findings)), dtype=np.float32)]
        for start in range(0, stored.shape[0], batch):
            chunk = stored[start:start + batch]
            t0 = time.perf_counter()
            parts.append(self._probabilities(self.runner.infer_stored(chunk, spacing, rescale), chunk.shape[0]))
            if timings is not None:
                # the runner's stream timings where it has them (GPU: upload + kernel, engine), else wall time
                spent = self.runner.last_timings or {"inference": (time.perf_counter() - t0) * 1000.0}
                for stage, ms in spent.items():
                    timings[stage] = timings.get(stage, 0.0) + ms
        return np.concatenate(parts)

    # -- slices with their per-slice numbers (evidence/domain for a network, the step's features for a plug-in)
    def slice_features(self, hu: np.ndarray, pixel_spacing: tuple[float, float],
                       geometry: dict | None = None) -> dict | None:
        """One slice's evidence/domain numbers (docs/EVIDENCE.md), None when the manifest declares neither."""
        evidence, domain = getattr(self.manifest, "evidence", None), getattr(self.manifest, "domain", None)
        if evidence is None and domain is None:
            return None
        from edge_agent.evidence import slice_features  # noqa: PLC0415 - only models that declare checks

        f = slice_features(np.asarray(hu, dtype=np.float32), tuple(pixel_spacing), evidence, domain)
        if geometry is not None and geometry.get("ipp") is not None:
            f["ipp"] = [float(v) for v in geometry["ipp"]]
        return f

    def _features_of(self, slices: Sequence[Any], timings: dict[str, float] | None) -> list[dict | None]:
        t0 = time.perf_counter()
        out = [self.slice_features(_hu(s), tuple(s.pixel_spacing), _geometry(s)) for s in slices]
        if timings is not None and any(f is not None for f in out):
            timings["evidence"] = timings.get("evidence", 0.0) + (time.perf_counter() - t0) * 1000.0
        return out

    def analyse_images(self, slices: Sequence[Any], timings: dict[str, float] | None = None
                       ) -> tuple[np.ndarray, list[dict | None]]:
        """Slices as they land → (probabilities ``(N, F)``, each slice's features or None); the daemon's step."""
        probabilities = self.score_images(slices, timings=timings)
        return probabilities, self._features_of(slices, timings)

    def slice_features_of(self, slices: Sequence[Any], timings: dict[str, float] | None = None) -> list[dict | None]:
        """Each slice's evidence/domain numbers (None each when the manifest declares neither), from its HU."""
        return self._features_of(slices, timings)

    def analyse_volume(self, hu: np.ndarray, pixel_spacing: tuple[float, float],
                       geometries: Sequence[dict | None] | None = None,
                       timings: dict[str, float] | None = None,
                       positions: np.ndarray | None = None) -> tuple[np.ndarray, list[dict | None]]:
        """A whole series in HU ``(N, H, W)`` → (probabilities, features); ``infer``'s step.

        ``positions``: mm along the normal of each slice, which a 2.5-D model needs to pick neighbours
        (None: equally spaced).
        """
        probabilities = self.score_slices(hu, pixel_spacing, timings=timings, positions=positions)
        geometries = list(geometries) if geometries is not None else [None] * len(hu)
        t0 = time.perf_counter()
        features = [self.slice_features(hu[i], pixel_spacing, geometries[i]) for i in range(len(hu))]
        if timings is not None and any(f is not None for f in features):
            timings["evidence"] = timings.get("evidence", 0.0) + (time.perf_counter() - t0) * 1000.0
        return probabilities, features

    def score_slices(self, hu: np.ndarray, pixel_spacing: tuple[float, float],
                     timings: dict[str, float] | None = None, positions: np.ndarray | None = None) -> np.ndarray:
        """Preprocess + batched inference: HU ``(N, H, W)`` → probabilities ``(N, F)``.

        Slices are prepared one batch at a time, so memory stays flat for long
        series. When ``timings`` is given, ``preprocess`` and ``inference``
        wall times (ms) are added to it. A 2.5-D model (``preprocessing.context``)
        scores the slices as one series, each with its neighbours at ±offset
        along the normal: ``positions`` (mm, any order; None: equally spaced,
        ``offset_mm`` apart) pick them, as :func:`edge_agent.preprocess.prepare_volume`
        does; every slice's context planes are prepared first (small), the own
        channels one batch at a time.
        """
        hu = np.asarray(hu)
        if hu.ndim == 2:
            hu = hu[None]
        self.ensure_active()
        if self.context is not None:
            self.tell_cpu_input()
            n = hu.shape[0]
            if positions is not None and np.shape(positions) != (n,):
                raise RunnerError(f"Model {self.name} was given {np.size(positions)} slice positions for {n} slices.")
        batches = volume_batches(hu, pixel_spacing, self.manifest.preprocessing, positions, max(1, self.batch_size))
        parts, t_pre, t_inf = [], 0.0, 0.0
        while True:
            t0 = time.perf_counter()
            x = next(batches, None)
            t1 = time.perf_counter()
            t_pre += t1 - t0
            if x is None:
                break
            parts.append(self.infer_batched(x[1]))
            t_inf += time.perf_counter() - t1
        if timings is not None:
            timings["preprocess"] = timings.get("preprocess", 0.0) + t_pre * 1000.0
            timings["inference"] = timings.get("inference", 0.0) + t_inf * 1000.0
        if not parts:
            return np.zeros((0, len(self.manifest.findings)), dtype=np.float32)
        return np.concatenate(parts)


class PluginRunner(Runner):
    """Stands in for a network's runner: a plug-in needs no session, device or tensors."""

    backend = "plugin"

    def activate_impl(self) -> None:
        pass

    def deactivate_impl(self) -> None:
        pass

    def input_specs_impl(self) -> list:
        return []

    def output_specs_impl(self) -> list:
        return []


class PluginModel(Model):
    """A model whose findings a named non-neural step computes (manifest ``plugin``, ``edge_agent.plugins``).

    Every slice goes through the step's ``slice_features`` as it lands (HU and geometry, never kept) and
    ``slice_scores``; the series decider calls its ``measure`` at settle.
    """

    def __init__(self, manifest: Manifest):
        from edge_agent import plugins  # noqa: PLC0415

        super().__init__(manifest, PluginRunner(manifest.name))
        self.step = plugins.get(manifest.plugin.name)

    def slice_features(self, hu: np.ndarray, pixel_spacing: tuple[float, float],
                       geometry: dict | None = None) -> dict:
        return self.step.slice_features(np.asarray(hu, dtype=np.float32), tuple(float(v) for v in pixel_spacing),
                                        self.manifest.plugin.params, geometry)

    def _scores(self, features: list[dict]) -> np.ndarray:
        out = np.zeros((len(features), len(self.manifest.findings)), dtype=np.float32)
        for i, f in enumerate(features):
            out[i] = self.step.slice_scores(f, self.manifest.plugin.params)
        return out

    def analyse_images(self, slices: Sequence[Any], timings: dict[str, float] | None = None
                       ) -> tuple[np.ndarray, list[dict]]:
        self.ensure_active()
        t0 = time.perf_counter()
        features = [self.slice_features(_hu(s), tuple(s.pixel_spacing), _geometry(s)) for s in slices]
        if timings is not None:
            timings["inference"] = timings.get("inference", 0.0) + (time.perf_counter() - t0) * 1000.0
        return self._scores(features), features

    def analyse_volume(self, hu: np.ndarray, pixel_spacing: tuple[float, float],
                       geometries: Sequence[dict | None] | None = None,
                       timings: dict[str, float] | None = None,
                       positions: np.ndarray | None = None) -> tuple[np.ndarray, list[dict]]:
        self.ensure_active()
        geometries = list(geometries) if geometries is not None else [None] * len(hu)
        t0 = time.perf_counter()
        features = [self.slice_features(hu[i], pixel_spacing, geometries[i]) for i in range(len(hu))]
        if timings is not None:
            timings["inference"] = timings.get("inference", 0.0) + (time.perf_counter() - t0) * 1000.0
        return self._scores(features), features

    def score_images(self, slices: Sequence[Any], timings: dict[str, float] | None = None) -> np.ndarray:
        return self.analyse_images(slices, timings)[0]

    def score_slices(self, hu: np.ndarray, pixel_spacing: tuple[float, float],
                     timings: dict[str, float] | None = None, positions: np.ndarray | None = None) -> np.ndarray:
        hu = np.asarray(hu)
        return self.analyse_volume(hu[None] if hu.ndim == 2 else hu, pixel_spacing, timings=timings)[0]

    def preprocess(self, hu: np.ndarray, pixel_spacing: tuple[float, float],
                   positions: np.ndarray | None = None) -> np.ndarray:
        raise RunnerError(f"Model {self.name} is the {self.manifest.plugin.name} plug-in: it has no network input.")

    def infer_batched(self, x: np.ndarray) -> np.ndarray:
        raise RunnerError(f"Model {self.name} is the {self.manifest.plugin.name} plug-in: it has no network to run.")


def _positions_along_normal(slices: Sequence[Any]) -> np.ndarray | None:
    """Each slice's ImagePositionPatient projected on its slice normal (mm), None when a slice lacks them."""
    out = []
    for s in slices:
        position, orientation = getattr(s, "position", None), getattr(s, "orientation", None)
        if position is None or orientation is None:
            return None
        o = np.asarray(orientation, dtype=np.float64)
        out.append(float(np.dot(np.asarray(position, dtype=np.float64), np.cross(o[:3], o[3:]))))
    return np.asarray(out, dtype=np.float64)


def _geometry(s: Any) -> dict | None:
    """ImagePositionPatient and ImageOrientationPatient of a slice, where it has them."""
    position, orientation = getattr(s, "position", None), getattr(s, "orientation", None)
    if position is None:
        return None
    return {"ipp": [float(v) for v in position],
            "orientation": None if orientation is None else [float(v) for v in orientation]}


def _hu(s: Any) -> np.ndarray:
    hu = s.hu_pixels() if hasattr(s, "hu_pixels") else s.hu
    if hu is None:
        raise RunnerError(f"Slice {getattr(s, 'sop_instance_uid', '?')} has no pixels left to score.")
    return hu


def applies(manifest: Manifest, info: Any) -> bool:
    """Whether a series (or one of its slices) is the kind the model is for (docs/MANIFEST.md).

    Modality listed, and BodyPartExamined listed or a description keyword in
    the series/study description (when the manifest lists neither, any series
    of the modality), and no exclude keyword in the descriptions.
    """
    rule = manifest.applies_to
    if _text(getattr(info, "modality", None)) not in rule.modality:
        return False
    descriptions = " ".join((_text(getattr(info, "series_description", None)),
                             _text(getattr(info, "study_description", None))))
    if any(word in descriptions for word in rule.exclude_keywords):
        return False
    if not rule.body_part and not rule.description_keywords:
        return True
    return (_text(getattr(info, "body_part", None)) in rule.body_part
            or any(word in descriptions for word in rule.description_keywords))


@dataclass(frozen=True)
class ScoredSlices:
    """The slices a model scored, as :meth:`ModelSet.check_series` reads them when the streaming pipeline
    decides (it holds scores and positions, not a :class:`~edge_agent.dicom.Series`): the header rules that
    can change with the slices received (thickness, tilt) and the coverage."""

    sop_instance_uids: Sequence[str]
    positions: np.ndarray
    slice_thickness: float | None = None
    gantry_tilt: float = 0.0
    tilt_corrected: bool = False
    spacing: Sequence[float] | None = None


def _slice_reason(manifest: Manifest, info: Any) -> Refusal | None:
    """The first applicability rule that refuses ``info`` (header only, any one slice shows it), or None."""
    return applicability.refusal(manifest.applies_to, info, manifest.name)


def _coverage_reason(model: Model, series: Any) -> str | None:
    """Too few slices or too short a coverage for ``model`` (a plain str), or None."""
    rule = model.manifest.applies_to
    n = len(getattr(series, "sop_instance_uids", ()) or ())
    if n < rule.min_slices:
        return f"{n} slice{'s' if n != 1 else ''} is fewer than the {rule.min_slices} model {model.name} needs"
    cover = coverage_mm(series)
    if cover < rule.min_coverage_mm:
        return (f"the series covers {cover:.0f} mm, less than the {rule.min_coverage_mm:g} mm model "
                f"{model.name} needs")
    return None


def coverage_mm(series: Any) -> float:
    """Extent the series covers along the slice normal: first-to-last centre distance plus one slice spacing."""
    positions = np.asarray(getattr(series, "positions", ()), dtype=np.float64)
    if positions.size == 0:
        return 0.0
    spacing = getattr(series, "spacing", None)
    step = float(spacing[0]) if spacing is not None and len(spacing) else 0.0
    if positions.size > 1 and not step:
        step = float(np.median(np.diff(np.sort(positions))))
    return float(positions.max() - positions.min()) + abs(step)


class ModelSet:
    """The models an agent or ``infer`` run uses; see :meth:`load`."""

    def __init__(self, models: list[Model]):
        self.models = list(models)

    def __iter__(self):
        return iter(self.models)

    def __len__(self) -> int:
        return len(self.models)

    def __getitem__(self, name: str) -> Model:
        for model in self.models:
            if model.name == name:
                return model
        raise KeyError(name)

    @classmethod
    def load(cls, engines_dir: str | Path | None = None, backend: str = "auto", threads: int | None = None, *,
             device: int = 0, names: list[str] | None = None, batch_size: int = DEFAULT_BATCH,
             verify: bool = True, trt_options: TrtOptions = TrtOptions(),
             overrides: dict[str, dict] | None = None, alert_at: dict[str, str] | None = None) -> "ModelSet":
        """Load every model folder (``<name>/manifest.json``) under ``engines_dir``.

        ``engines_dir`` may also be one model folder. None = the shipped
        models (``edge_agent.engines``). ``names`` keeps only those models.
        ``trt_options``: how TensorRT runners run (GPU preprocessing, zero-copy; ``TrtOptions``).
        ``overrides``: ``{model name: {applies_to key: value}}``, a site's
        ``[models.<name>.applies_to]`` (``Config.applies_to_overrides()``);
        each key replaces the manifest's. ``alert_at``: ``{model name: grade}``,
        a site's ``[models.<name>] alert_at`` for graded plug-in findings
        (``Config.alert_at_overrides()``). Naming a model that is not in
        ``engines_dir`` is an error (a typo would otherwise go unnoticed).
        Runners are created but not activated.
        """
        if engines_dir is None:
            from edge_agent.engines import ENGINES_DIR  # noqa: PLC0415 - resolves the installed data folder

            engines_dir = ENGINES_DIR
        root = Path(engines_dir)
        if not root.is_dir():
            raise ManifestError(f"Engines folder {root} does not exist; pass --engines with a folder that holds "
                                f"<model>/{MANIFEST_NAME}.")
        folders = [root] if (root / MANIFEST_NAME).is_file() else sorted(
            p for p in root.iterdir() if p.is_dir() and (p / MANIFEST_NAME).is_file())
        manifests = [load_manifest(f, verify=verify) for f in folders]
        if overrides or alert_at:
            unknown = sorted((set(overrides or ()) | set(alert_at or ())) - {m.name for m in manifests})
            if unknown:
                raise ManifestError(f"The config sets [models.{unknown[0]}] but {root} has no model named "
                                    f"{unknown[0]!r} (there are: {', '.join(m.name for m in manifests) or 'none'}).")
            manifests = [override_applies_to(m, overrides[m.name], "config") if (overrides or {}).get(m.name)
                         else m for m in manifests]
            manifests = [override_alert_at(m, alert_at[m.name], "config") if (alert_at or {}).get(m.name) else m
                         for m in manifests]
        if names:
            unknown = sorted(set(names) - {m.name for m in manifests})
            if unknown:
                raise ManifestError(f"No model named {unknown[0]!r} in {root} (there are: "
                                    f"{', '.join(m.name for m in manifests) or 'none'}).")
            manifests = [m for m in manifests if m.name in names]
        if not manifests:
            raise ManifestError(f"No model manifests found in {root}; it must hold <model>/{MANIFEST_NAME} "
                                "folders (see docs/MANIFEST.md).")
        seen: set[str] = set()
        for m in manifests:
            if m.name in seen:
                raise ManifestError(f"Two models in {root} are named {m.name!r}; give each model a unique name.")
            seen.add(m.name)
        models = []
        for m in manifests:
            if m.plugin is not None:  # a named non-neural step: no backend to choose
                models.append(PluginModel(m))
                continue
            runner = make_runner(m, backend, threads=threads, device=device, trt_options=trt_options)
            fallback = None
            if backend == "auto" and runner.backend != "onnxrt":
                def fallback(m=m):
                    return make_runner(m, "onnxrt", threads=threads, device=device)
            models.append(Model(m, runner, batch_size=batch_size, fallback=fallback))
        return cls(models)

    def route(self, info: Any) -> list[tuple[Model, str | None]]:
        """The models that apply to ``info`` (a Slice or a Series), each with a refusal reason or None.

        The reason covers what the header of one slice shows: the
        applicability rules (kernel, thickness, tilt, contrast, gating, kVp,
        age, QA; docs/MANIFEST.md), as a :class:`Refusal` (a ``str`` that
        also carries its ``rule``). Use :meth:`check_series` for a complete
        series.
        """
        return [(m, _slice_reason(m.manifest, info)) for m in self.models if applies(m.manifest, info)]

    def check_series(self, model: Model, series: Any) -> str | None:
        """Why ``model`` cannot analyse this complete series (None when it can).

        An applicability refusal comes back as a :class:`Refusal`; too few
        slices or too short a coverage as a plain ``str``.
        """
        reason = _slice_reason(model.manifest, series)
        if reason:
            return reason
        return _coverage_reason(model, series)

    def explain(self, info: Any) -> list[dict]:
        """Per model, every rule checked on ``info`` and its verdict (``edge-agent infer --explain``).

        Each entry: ``model``, ``version``, ``outcome`` (``applies`` |
        ``not_for_this_series`` (routing) | ``refused`` (an applicability
        rule) | ``incomplete`` (coverage)), ``reason`` (None when it
        applies), ``rules``: ``[{rule, result, detail}]`` with ``result``
        ``matched`` | ``not_matched`` | ``refused`` | ``not_checked``.
        No patient attribute is named, Patient Age included.
        """
        out = []
        for model in self.models:
            m = model.manifest
            checks = applicability.checks(m.applies_to, info, m.name)
            rules = applicability.routing_checks(m.applies_to, info) + [c.to_dict() for c in checks]
            routed = applies(m, info)
            refusal = next((c.detail for c in checks if c.result == "refused"), None)
            coverage = None
            if getattr(info, "sop_instance_uids", None) is not None:
                coverage = _coverage_reason(model, info)
                rules.append({"rule": "coverage", "result": "refused" if coverage else "matched",
                              "detail": coverage or "enough slices and coverage"})
            outcome = ("not_for_this_series" if not routed else "refused" if refusal else
                       "incomplete" if coverage else "applies")
            reason = None
            if outcome == "not_for_this_series":
                reason = next(r["detail"] for r in rules if r["result"] == "not_matched")
            elif outcome != "applies":
                reason = str(refusal or coverage)
            out.append({"model": m.name, "version": m.version, "outcome": outcome, "reason": reason,
                        "rules": rules})
        return out

    def close(self) -> None:
        """Deactivate every active runner (call from the thread that used them)."""
        errors = []
        for model in self.models:
            try:
                model.runner.deactivate()
            except RunnerError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    def __enter__(self) -> "ModelSet":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
