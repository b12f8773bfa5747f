"""The streaming series pipeline: score slices as they land, warn early, decide at completion.

One thread (``pipeline``) owns the models — and with them any CUDA context —
and everything below: decoded files arrive on a bounded queue (the ingest
blocks when it is full: backpressure, never unbounded growth); each slice is
preprocessed and scored as soon as it lands, its pixels are then dropped and
only its score is kept (``SeriesStore``); a **preliminary** alert goes out the
moment a model's preliminary rule is met; the **final** result when the
series has been quiet for ``settle`` seconds (or open for ``max_open``). A
series that reopens is re-decided with all its slices and its alert updated
under the same ``alert_id`` (higher revision: final again, or retracted).

A 2.5-D model (manifest ``preprocessing.context``) scores a slice with its
neighbours at ±``offset_mm`` along the normal, so a slice waits for them:
on arrival its pixels still go, but its preprocessed planes stay in the
series' :class:`~edge_agent.service.context.ContextWindow` (bounded: a
window around the slices still to be scored, never the series' HU) until it
and the slices that may take it as a neighbour are scored — as soon as its
neighbours have landed, the rest at settle (the ends of the series repeat
the slice itself). Not persisted: after a restart the ingest re-emits the
files of every series not marked done, so slices scored before come back
as neighbours (planes only, not scored again) and the others are scored as
they land; a series reopened after its final decision has lost its planes,
so its late slices see only each other (usually none: the slice itself).

Every series runs inside an error boundary: a failure is logged and recorded
in that series' result; the pipeline goes on with the next.

Each series' story is told on the ``edge_agent.series`` logger (shown at the
default verbosity): one line when it opens (scanner, description, modality,
which models apply or why none) and one when it is decided (each model's
status, probability, alert or not, time since its last slice). No patient
attribute is in either; free header text goes through
:func:`edge_agent.logs.header_text`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Callable, Protocol

import numpy as np

from edge_agent.alerts.payloads import DISCLAIMER, alert_id, build_alert, utc_iso
from edge_agent.boundary import DISK_FULL_RETRY_S, disk_full
from edge_agent.decision.series import (
    AlertAction, ModelOutcome, SeriesContext, decide_model, final_actions, preliminary_actions, series_result,
)
from edge_agent.errors import EdgeAgentError
from edge_agent.inference.applicability import Refusal
from edge_agent.logs import SERIES_LOG, header_text
from edge_agent.results.algorithm import algorithm_for, model_provenance, provenance_words
from edge_agent.service.analyse import no_model_reason
from edge_agent.service.context import ContextWindow
from edge_agent.service.state import THUMBNAIL_MEMORY_S, AlertState, Outcome, SeriesStore, SliceScore

log = logging.getLogger(__name__)
story = logging.getLogger(SERIES_LOG)

#: Final series (scores, alert revisions) are kept this long for reopening by late or resent slices.
SERIES_MEMORY_S = 7 * 24 * 3600


class Outputs(Protocol):
    """Where the pipeline's decisions go (the app wires the outbox, ingest and metrics)."""

    def raise_alert(self, payload: dict) -> None: ...
    def publish_result(self, payload: dict) -> None: ...
    def series_done(self, series_instance_uid: str) -> None: ...
    def observe(self, stage: str, seconds: float) -> None: ...
    def count(self, name: str, state: str | None = None) -> None: ...


@dataclass
class OpenSeries:
    series_instance_uid: str
    info: dict
    normal: np.ndarray
    shape: tuple[int, int]
    routes: list  # [(Model, reason | None)]
    first_received: float
    last_arrival: float  # monotonic
    opened: float  # monotonic
    slices: int = 0
    sops: set = field(default_factory=set)  # SOP Instance UIDs counted in ``slices`` (a retried batch counts once)
    retry_at: float = 0.0  # monotonic: a final decision that hit a full disk is tried again then
    warnings: list[str] = field(default_factory=list)
    decisive: dict[str, float] = field(default_factory=dict)  # alert_id -> complete_at of the decisive slice
    # model name -> {SOP Instance UID: score}: what the state DB holds, kept here so that each
    # batch costs O(batch), not a re-read of the whole series (loaded from the DB on first use).
    scores: dict[str, dict[str, SliceScore]] = field(default_factory=dict)
    # The original study's header (patient/study attributes, for DICOM results in that study; never logged),
    # read from this opening's first file when results go to PACS; None otherwise.
    study: Any = field(default=None, repr=False)
    # model name -> PreviewCache: thumbnails of the few best-scoring slices (alert key-image previews)
    previews: dict = field(default_factory=dict, repr=False)
    # model name -> ContextWindow of a 2.5-D model: the preprocessed planes (never HU) of the slices that
    # are still to be scored or that a pending slice may still take as its neighbour (bounded; service/context.py)
    context: dict[str, ContextWindow] = field(default_factory=dict, repr=False)


def evidence_boxes(features) -> list[tuple[float, float, float, float]]:
    """The regions a slice's evidence numbers locate, ``(r0, c0, r1, c1)`` in the slice's pixels: each component
    ``[area, mean, r0, c0, r1, c1]`` of a ``comps`` list and each ``box`` ``[r0, c0, r1, c1]``, at any depth."""
    out: list = []
    if isinstance(features, dict):
        for key, value in features.items():
            if key == "comps" and isinstance(value, list):
                out += [tuple(float(v) for v in c[2:6]) for c in value if isinstance(c, list) and len(c) >= 6]
            elif key == "box" and isinstance(value, list) and len(value) == 4:
                out.append(tuple(float(v) for v in value))
            else:
                out += evidence_boxes(value)
    elif isinstance(features, list):
        for value in features:
            if isinstance(value, dict):
                out += evidence_boxes(value)
    return out


def series_info(first) -> dict:
    """The non-PHI description of a series, from its first slice."""
    return {
        "study_instance_uid": first.study_instance_uid,
        "series_instance_uid": first.series_instance_uid,
        "accession_number": first.accession_number or "",
        "modality": first.modality or "",
        "body_part": first.body_part or "",
        "series_description": first.series_description or "",
        "study_description": getattr(first, "study_description", "") or "",
        "slice_thickness": first.slice_thickness,
        "gantry_tilt": float(getattr(first, "gantry_tilt", 0.0) or 0.0),
        "scanner": " ".join(str(getattr(first, a, "") or "").strip()
                            for a in ("manufacturer", "manufacturer_model")).strip(),
        "orientation": [float(v) for v in first.orientation],
        "pixel_spacing": [float(v) for v in first.pixel_spacing],
    }


def routes_words(routes: list, info: dict) -> str:
    """Which models apply to a series, or why none does (the applicability refusal), in words."""
    if not routes:
        return no_model_reason(info.get("modality"), info.get("body_part"))
    words = []
    for model, reason in routes:
        m = model.manifest
        if reason is None:
            words.append(f"{m.name} {m.version} applies")
        else:
            words.append(f"{m.name} {m.version} {'refused' if isinstance(reason, Refusal) else 'cannot decide'}: "
                         f"{reason}")
    return "models: " + "; ".join(words)


def opened_words(info: dict, routes: list) -> str:
    """The series-opened line after its UID: scanner, description, modality, models. Never a patient attribute."""
    thickness = info.get("slice_thickness")
    what = " ".join(v for v in (info.get("modality") or "modality unknown", info.get("body_part") or "") if v)
    return (f"scanner {header_text(info.get('scanner')) or 'unknown'}, "
            f"\"{header_text(info.get('series_description'))}\", {what}"
            + (f", {thickness:g} mm slices" if isinstance(thickness, (int, float)) else "")
            + f"; {routes_words(routes, info)}")


def series_context(info: dict) -> SeriesContext:
    """What the evidence and domain checks need of the series' header (kept in the state DB's info)."""
    return SeriesContext(slice_thickness_mm=info.get("slice_thickness"), orientation=info.get("orientation"),
                         pixel_spacing=info.get("pixel_spacing"))


class SeriesPipeline:
    """Owns the models and the open series; fed by :meth:`submit` from the ingest threads."""

    def __init__(self, load_models: Callable[[], Any], store_path, outputs: Outputs, *, site: str, device: str,
                 settle: float = 5.0, max_open: float = 1800.0, queue_size: int = 256, batch: int = 16,
                 heartbeat: Callable[[str], None] | None = None, mode_for: Callable[[str], str] | None = None,
                 study_header: Callable[[str], Any] | None = None, previews: Any = None):
        self._load_models = load_models
        self._store_path = store_path
        self.outputs = outputs
        self.site, self.device = site, device
        self.settle, self.max_open, self.batch = settle, max_open, batch
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._open: dict[str, OpenSeries] = {}
        self._heartbeat = heartbeat or (lambda _name: None)
        self._mode_for = mode_for or (lambda _name: "live")  # model name -> live | shadow
        self._study_header = study_header  # path -> the study's header, when results go to PACS
        # PreviewSettings: every alert revision gets a key-image preview (outputs.publish_preview); None: none
        self.previews = previews if hasattr(outputs, "publish_preview") else None
        self._held: list = []  # files of a batch that met a full disk, retried first
        self._paused_until = 0.0  # monotonic; 0: not paused
        self.models = None
        self.store: SeriesStore | None = None

    # -- lifecycle ---------------------------------------------------------------
    def start(self, timeout: float = 120.0) -> None:
        self._thread = threading.Thread(target=self._run, name="pipeline", daemon=True)
        self._thread.start()
        self._ready.wait(timeout)
        if self._error is not None:
            raise self._error
        if not self._ready.is_set():
            raise TimeoutError("the pipeline did not become ready")

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the queued files (scores persist; open series resume after restart), then stop."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, item, timeout: float | None = None) -> None:
        """Queue one decoded file (an ``IngestedFile``); blocks while the queue is full."""
        while True:
            try:
                self._queue.put(item, timeout=0.5 if timeout is None else timeout)
                return
            except queue.Full:
                if timeout is not None or self._stop.is_set():
                    raise

    def threads(self) -> list[threading.Thread]:
        """The long-lived threads this part runs (the agent supervises them)."""
        return [self._thread] if self._thread is not None else []

    def queue_depth(self) -> int:
        return self._queue.qsize()

    def open_series(self) -> int:
        return len(self._open)

    # -- the thread ----------------------------------------------------------------
    def _run(self) -> None:
        try:
            self.models = self._load_models()  # activates runners in this thread (CUDA context owner)
            self.store = SeriesStore(self._store_path)
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self._error = exc
            self._ready.set()
            return
        self._warm()
        self._ready.set()
        next_prune = 0.0
        try:
            while True:
                self._heartbeat("pipeline")
                try:
                    self._step()
                    if time.monotonic() >= next_prune:  # the state DB keeps a week of final series, no more
                        next_prune = time.monotonic() + 3600.0
                        self._prune()
                except (KeyboardInterrupt, SystemExit):
                    raise
                except BaseException as exc:  # noqa: BLE001 - the thread's last boundary: log, breathe, go on
                    log.exception("pipeline step failed (%s: %s); carrying on", type(exc).__name__, exc)
                    time.sleep(0.5)
                if self._stop.is_set() and self._queue.empty() and not self._held:
                    break
        finally:
            try:
                self.models.close()
            finally:
                self.store.close()

    def _warm(self) -> None:
        """Do the first-use work now (runner sessions, the evidence code), not while the first bleed waits."""
        for model in self.models:
            try:
                model.ensure_active()
                if getattr(model.manifest, "evidence", None) or getattr(model.manifest, "domain", None):
                    from edge_agent.evidence import preload

                    preload()
            except Exception as exc:  # noqa: BLE001 - it is tried again, per series, on first use
                log.warning("model %s could not be prepared at start (%s); trying again on first use", model.name, exc)

    def _step(self) -> None:
        items = self._take()
        if items:
            self._process(items)
        self._finalise_due()

    def _prune(self) -> None:
        try:
            forgotten = self.store.prune_final(time.time() - SERIES_MEMORY_S)
            self.store.forget_thumbnails(time.time() - THUMBNAIL_MEMORY_S)
        except Exception:  # noqa: BLE001 - housekeeping must never stop the pipeline
            log.exception("pruning the series state DB failed; retrying in an hour")
            return
        if forgotten:
            log.info("forgot %d series final for more than %d days", forgotten, SERIES_MEMORY_S // 86400)

    def _next_due(self) -> float:
        """Seconds until the next open series is due for its final decision (at most 0.1)."""
        if not self._open:
            return 0.1
        now = time.monotonic()
        due = min(min(s.last_arrival + self.settle, s.opened + self.max_open) for s in self._open.values())
        return min(0.1, max(0.001, due - now))

    def _pause(self, exc: BaseException) -> None:
        """The state disk is full: stop taking files (the queue fills, the ingest waits) and retry later."""
        if not self._paused_until:
            log.error("the state disk is full (%s); intake is paused and resumes by itself when space returns", exc)
        self._paused_until = time.monotonic() + DISK_FULL_RETRY_S

    def _take(self) -> list:
        if self._paused_until:
            if time.monotonic() < self._paused_until:
                time.sleep(min(0.1, self._paused_until - time.monotonic()))
                return []
            held, self._held = self._held, []
            if held:
                return held
            self._paused_until = 0.0
            log.warning("the state disk has space again; intake resumed")
        try:
            items = [self._queue.get(timeout=self._next_due())]
        except queue.Empty:
            return []
        while len(items) < self.batch:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return items

    def _process(self, items: list) -> None:
        by_series: dict[str, list] = {}
        for item in items:
            by_series.setdefault(item.series_instance_uid, []).append(item)
        for uid, files in by_series.items():
            try:
                self._ingest_files(uid, files)
            except Exception as exc:  # noqa: BLE001 - error boundary per series
                if disk_full(exc):  # nothing of this batch counts yet: keep its pixels, try it again later
                    self._held.extend(files)
                    self._pause(exc)
                    continue
                for f in files:
                    for s in f.slices:
                        s.drop_pixels()
                log.exception("series %s: failed to process %d file(s): %s", uid, len(files), exc)
                series = self._open.get(uid)
                if series is not None:
                    series.warnings.append(f"processing error: {type(exc).__name__}: {exc}")

    # -- arrival and scoring ----------------------------------------------------------
    def _open_series(self, uid: str, first, received_at: float) -> OpenSeries:
        info = series_info(first)
        orientation = np.asarray(first.orientation, float)
        normal = np.cross(orientation[:3], orientation[3:])
        previous = self.store.touch_series(uid, info, received_at)
        stored = self.store.series_info(uid)
        first_received = stored[1] if stored else received_at
        routes = self.models.route(first)
        now = time.monotonic()
        series = OpenSeries(uid, info, normal, (first.rows, first.columns), routes, first_received, now, now)
        self._open[uid] = series
        if self._study_header is not None:
            try:
                series.study = self._study_header(first.path)
            except Exception as exc:  # noqa: BLE001 - no DICOM result for this series; its alerts go on
                log.warning("series %s: %s", uid, exc)
        how = {"final": "reopened by late or resent slices", "open": "resumed (open before a restart)"}.get(
            previous, "opened")
        story.info("series %s %s: %s", uid, how, opened_words(info, routes),
                   extra={"event": "series_opened", "data": {
                       "series_instance_uid": uid, "how": how, "modality": info.get("modality"),
                       "models": [m.manifest.name for m, reason in routes if reason is None]}})
        return series

    def _ingest_files(self, uid: str, files: list) -> None:
        slices = [(f, s) for f in files for s in f.slices]
        series = self._open.get(uid)
        if series is None:
            series = self._open_series(uid, slices[0][1], min(f.received_at for f in files))
        else:
            self.store.touch_series(uid, series.info, max(f.received_at for f in files))
        # The quiet period counts from the scanner's last write, not from when the file got here
        # (a stable-file wait before it would otherwise add to every final result).
        last_written = max((getattr(f, "written_at", 0.0) or f.complete_at) for f in files)
        arrival = time.monotonic() - min(max(0.0, time.time() - last_written), self.settle / 2)
        series.last_arrival = max(series.last_arrival, arrival)
        good = []
        for f, s in slices:
            if (s.rows, s.columns) != series.shape:
                series.warnings.append(f"slice {s.sop_instance_uid} left out: {s.rows}x{s.columns} differs from "
                                       f"the series' {series.shape[0]}x{series.shape[1]}")
                continue
            good.append((f, s))
        for model, reason in series.routes:
            if reason is None and good:
                self._score(series, model, good)
        series.sops.update(s.sop_instance_uid for _, s in good)
        series.slices = max(series.slices, len(series.sops))
        for _, s in slices:
            s.drop_pixels()  # every model has scored it: the pixels go, memory stays flat

    def _known_scores(self, series: OpenSeries, name: str) -> dict[str, SliceScore]:
        known = series.scores.get(name)
        if known is None:  # first batch since the series opened (or reopened after a restart)
            known = series.scores[name] = {s.sop_instance_uid: s for s in
                                           self.store.scores(series.series_instance_uid, name)}
        return known

    def _score(self, series: OpenSeries, model, good: list) -> None:
        if getattr(model, "context", None) is not None:  # 2.5-D: scored once its neighbours have landed
            self._score_context(series, model, good)
            return
        name = model.manifest.name
        scored = self._known_scores(series, name)
        todo = [(f, s) for f, s in good if (s.hu is not None or s.stored is not None)
                and s.sop_instance_uid not in scored]
        if not todo:
            return
        timings: dict[str, float] = {}
        # HU or stored values: a model on TensorRT prepares stored pixels on the GPU (Model.score_images);
        # each slice's evidence/domain numbers, or a plug-in's features, come from its HU before its pixels go
        probabilities, features = model.analyse_images([s for _, s in todo], timings=timings)
        probabilities = np.asarray(probabilities, dtype=np.float64)
        if probabilities.ndim == 1:
            probabilities = probabilities[:, None]
        for stage in ("preprocess", "inference"):
            self.outputs.observe(stage, timings.get(stage, 0.0) / 1000.0)
        if "evidence" in timings:
            self.outputs.observe("evidence", timings["evidence"] / 1000.0)
        scores = [SliceScore(s.sop_instance_uid, float(np.dot(np.asarray(s.position, float), series.normal)),
                             [float(p) for p in probabilities[i]], f.received_at,
                             getattr(f, "written_at", 0.0) or f.complete_at, features[i])
                  for i, (f, s) in enumerate(todo)]
        self.store.add_scores(series.series_instance_uid, name, scores)
        scored.update((s.sop_instance_uid, s) for s in scores)
        if self.previews is not None:
            self._keep_previews(series, model, todo, probabilities)
        self._check_preliminary(series, model, scores)
        self._persist_thumbnails(series, name)  # after the alert: the state DB write is not on its path

    # -- 2.5-D models (manifest preprocessing.context) -----------------------------------
    def _score_context(self, series: OpenSeries, model, good: list) -> None:
        """A 2.5-D model's step: keep each landed slice's preprocessed planes, score the slices now settled.

        On arrival a slice still to be scored gives its own channels, its context planes and its
        evidence/domain numbers (from its HU, which go right after, as for every model); a slice scored
        before (a resend, or re-emitted after a restart) gives its planes only, as a neighbour. A pending
        slice is scored as soon as its neighbours are settled on both sides (``ContextWindow.ready``: the
        scanner has written ``offset_mm`` past it and no hole is left between), with the neighbours that
        ``infer`` would choose; the rest at settle (:meth:`_settle_context`). The preliminary rule is checked
        on the slices scored now. Memory: only the window's planes, bounded (service/context.py).
        """
        name = model.manifest.name
        scored = self._known_scores(series, name)
        window = series.context.get(name)
        if window is None:
            window = series.context[name] = ContextWindow(model.context, series.info.get("slice_thickness"))
        model.tell_cpu_input()
        timings: dict[str, float] = {}
        arrived = [(f, s) for f, s in good if (s.hu is not None or s.stored is not None)
                   and s.sop_instance_uid not in window.held]  # held already: a batch retried after a full disk
        if arrived:
            new = [(f, s) for f, s in arrived if s.sop_instance_uid not in scored]
            features = model.slice_features_of([s for _, s in new], timings) if new else []
            meta = {s.sop_instance_uid: (features[i], f.received_at, getattr(f, "written_at", 0.0) or f.complete_at,
                                         self._thumbnail(series, model, s))
                    for i, (f, s) in enumerate(new)}
            t0 = time.perf_counter()
            groups: dict[tuple, list] = {}
            for f, s in arrived:
                groups.setdefault((tuple(float(v) for v in s.pixel_spacing), s.sop_instance_uid in meta),
                                  []).append(s)
            for (spacing, pending), slices in groups.items():
                own, planes = model.prepare_context(np.stack([s.hu_pixels() for s in slices]), spacing, own=pending)
                for i, s in enumerate(slices):
                    window.add(s.sop_instance_uid, float(np.dot(np.asarray(s.position, float), series.normal)),
                               planes[i], own[i] if pending else None, meta.get(s.sop_instance_uid))
            timings["preprocess"] = timings.get("preprocess", 0.0) + (time.perf_counter() - t0) * 1000.0
        self._score_window(series, model, window, window.ready(), timings, preliminary=True)
        window.drop()
        self._observe_timings(timings)

    def _settle_context(self, series: OpenSeries, model) -> None:
        """At settle: score every slice still pending with the neighbours held (at the ends and beside a hole
        nothing filled, the slice itself stands in for the missing neighbour)."""
        window = series.context.get(model.manifest.name)
        if window is None:
            return
        timings: dict[str, float] = {}
        self._score_window(series, model, window, window.pending(), timings, preliminary=False)
        window.drop()
        self._observe_timings(timings)

    def _score_window(self, series: OpenSeries, model, window: ContextWindow, uids: list[str],
                      timings: dict[str, float], *, preliminary: bool) -> None:
        """Score pending slices of a 2.5-D model in batches; store each batch before forgetting its inputs."""
        if not uids:
            return
        name = model.manifest.name
        known = self._known_scores(series, name)
        done: list[SliceScore] = []
        step = max(1, int(getattr(model, "batch_size", 16) or 16))
        for start in range(0, len(uids), step):
            part = uids[start:start + step]
            t0 = time.perf_counter()
            x = window.inputs(part)
            t1 = time.perf_counter()
            probabilities = np.asarray(model.infer_batched(x), dtype=np.float64)
            if probabilities.ndim == 1:
                probabilities = probabilities[:, None]
            timings["preprocess"] = timings.get("preprocess", 0.0) + (t1 - t0) * 1000.0
            timings["inference"] = timings.get("inference", 0.0) + (time.perf_counter() - t1) * 1000.0
            held = [window.held[uid] for uid in part]
            scores = [SliceScore(h.sop_instance_uid, h.position, [float(p) for p in probabilities[i]], h.meta[1],
                                 h.meta[2], h.meta[0]) for i, h in enumerate(held)]
            self.store.add_scores(series.series_instance_uid, name, scores)
            known.update((sc.sop_instance_uid, sc) for sc in scores)
            if self.previews is not None:
                self._keep_thumbnails(series, model, held, probabilities)
            window.scored(part)
            done += scores
        if preliminary:
            self._check_preliminary(series, model, done)
        self._persist_thumbnails(series, name)  # after the alert: the state DB write is not on its path

    def _observe_timings(self, timings: dict[str, float]) -> None:
        for stage in ("preprocess", "inference"):
            self.outputs.observe(stage, timings.get(stage, 0.0) / 1000.0)
        if "evidence" in timings:
            self.outputs.observe("evidence", timings["evidence"] / 1000.0)

    def _thumbnail(self, series: OpenSeries, model, s):
        """A pending 2.5-D slice's preview thumbnail, made while its pixels are here (None without previews)."""
        if self.previews is None:
            return None
        try:
            from edge_agent.alerts.previews import thumbnail, window_for  # noqa: PLC0415 - Pillow on first use

            return thumbnail(s.hu_pixels(), window_for(model.manifest), s.pixel_spacing, self.previews.size)
        except Exception as exc:  # noqa: BLE001 - a preview must never cost an alert
            log.warning("series %s: no key-image preview for slice %s (%s: %s)", series.series_instance_uid,
                        s.sop_instance_uid, type(exc).__name__, exc)
            return None

    def _keep_thumbnails(self, series: OpenSeries, model, held: list, probabilities: np.ndarray) -> None:
        try:
            cache = self._preview_cache(series, model.manifest)
            for i, h in enumerate(held):
                score = float(np.max(probabilities[i])) if probabilities.shape[1] else 0.0
                cache.offer_image(h.sop_instance_uid, score, lambda h=h: h.meta[3])
        except Exception as exc:  # noqa: BLE001 - a preview must never cost an alert
            log.warning("series %s: no key-image previews from this batch (%s: %s)", series.series_instance_uid,
                        type(exc).__name__, exc)

    def _preview_cache(self, series: OpenSeries, manifest):
        """The series' bounded thumbnail cache of one model (its key slices plus ``previews.keep``)."""
        from edge_agent.alerts.previews import PreviewCache, window_for  # noqa: PLC0415 - Pillow on first use

        cache = series.previews.get(manifest.name)
        if cache is None:
            keep = max(1, int(getattr(manifest.decision, "key_slices", 3) or 1)) + self.previews.keep
            cache = series.previews[manifest.name] = PreviewCache(window_for(manifest), self.previews, keep)
            # the thumbnails kept before a restart or before the series went final (a reopen)
            cache.load(self.store.thumbnails(series.series_instance_uid, manifest.name))
        return cache

    def _persist_thumbnails(self, series: OpenSeries, name: str) -> None:
        """Mirror the cache's new and evicted thumbnails in the state DB (never raises: a preview is a convenience)."""
        cache = series.previews.get(name)
        if cache is None:
            return
        try:
            self.store.keep_thumbnails(series.series_instance_uid, name, *cache.drain())
        except Exception as exc:  # noqa: BLE001 - the preview of this run still works from memory
            log.warning("series %s: key-image thumbnails of %s not saved (%s: %s); a restart loses their previews",
                        series.series_instance_uid, name, type(exc).__name__, exc)

    def _keep_previews(self, series: OpenSeries, model, todo: list, probabilities: np.ndarray) -> None:
        """Thumbnails of the best-scoring slices, kept (bounded) for the key-image previews of its alerts."""
        try:
            cache = self._preview_cache(series, model.manifest)
            for i, (_, s) in enumerate(todo):
                score = float(np.max(probabilities[i])) if probabilities.shape[1] else 0.0
                cache.offer(s.sop_instance_uid, score, s.hu_pixels, s.pixel_spacing)
        except Exception as exc:  # noqa: BLE001 - a preview must never cost an alert
            log.warning("series %s: no key-image previews from this batch (%s: %s)", series.series_instance_uid,
                        type(exc).__name__, exc)

    def _publish_preview(self, series: OpenSeries, manifest, payload: dict, action: AlertAction) -> None:
        """The key-image preview of an alert revision, after the alert itself (never raises)."""
        from edge_agent.alerts.previews import build_preview  # noqa: PLC0415

        try:
            cache = self._preview_cache(series, manifest)  # after a restart or a reopen: from the state DB
        except Exception as exc:  # noqa: BLE001 - the alert is out; its preview is a convenience
            log.warning("series %s: the key-image thumbnails could not be read (%s: %s)", series.series_instance_uid,
                        type(exc).__name__, exc)
            cache = None
        found = None if cache is None else cache.image_for(k["sop_instance_uid"] for k in action.key_slices)
        if found is None:
            self.outputs.count("previews", "no_thumbnail")
            log.info("series %s: no key-image preview for alert %s revision %d (no thumbnail of its key slices: "
                     "none was among the best-scoring slices kept, or they were scored over a day before a reopen)",
                     series.series_instance_uid,
                     payload["alert_id"], payload["revision"])
            return
        try:
            preview = build_preview(payload, sop_instance_uid=found[0], image=found[1], window=cache.window,
                                    settings=self.previews)
            self.outputs.publish_preview(preview)
            self.outputs.count("previews", "published")
        except Exception as exc:  # noqa: BLE001 - the alert is out; its preview is a convenience
            self.outputs.count("previews", "failed")
            log.warning("series %s: the key-image preview of alert %s revision %d was not published (%s: %s)",
                        series.series_instance_uid, payload["alert_id"], payload["revision"],
                        type(exc).__name__, exc)

    def _check_preliminary(self, series: OpenSeries, model, new_scores: list[SliceScore]) -> None:
        along = sorted(self._known_scores(series, model.manifest.name).values(),
                       key=lambda s: (s.position_mm, s.sop_instance_uid))  # ties: as the DB orders
        for action in preliminary_actions(model.manifest, along, new_scores, self._alert_id_for(series),
                                          self.store.alert, mode=self._mode_for(model.manifest.name),
                                          context=series_context(series.info)):
            self._emit_alert(series, model.manifest, action)

    # -- decisions ----------------------------------------------------------------------
    def _alert_id_for(self, series: OpenSeries):
        return lambda manifest, code: alert_id(series.series_instance_uid, manifest.name, manifest.version, code)

    def _emit_alert(self, series: OpenSeries, manifest, action: AlertAction) -> None:
        existing = self.store.alert(action.alert_id)
        revision = (existing.revision + 1) if existing else 1
        if action.decisive_at is not None and action.alert_id not in series.decisive:
            series.decisive[action.alert_id] = action.decisive_at
        now = time.time()
        timestamps = {"first_slice_received": utc_iso(series.first_received), "raised": utc_iso(now)}
        if action.alert_id in series.decisive:
            timestamps["decisive_slice_received"] = utc_iso(series.decisive[action.alert_id])
        if action.key_slices:
            timestamps["inferred"] = utc_iso(now)
        finding = manifest.findings[action.finding_index]
        algorithm = self._algorithm(series, manifest)
        payload = build_alert(
            site=self.site, device=self.device, series=dict(series.info),
            model={**model_provenance(algorithm), "synthetic_training": bool(manifest.synthetic_training)},
            finding={"code": finding.code, "label": finding.label, "probability": round(action.probability, 4),
                     "positive": action.state != "retracted", "severity": finding.severity,
                     "key_slices": [{"sop_instance_uid": k["sop_instance_uid"],
                                     "position_mm": None if k["position_mm"] is None else round(k["position_mm"], 2),
                                     "probability": round(k["probability"], 4)} for k in action.key_slices]},
            state=action.state, revision=revision, timestamps=timestamps,
            provenance=getattr(self.outputs, "provenance", None))
        t0 = time.perf_counter()
        self.outputs.raise_alert(payload)  # committed to the outbox before we record it as raised
        self.outputs.observe("outbox", time.perf_counter() - t0)
        if existing is None and action.alert_id in series.decisive:
            # decisive slice written by the scanner → alert committed (what a consumer waits for)
            self.outputs.observe("end_to_end", max(0.0, time.time() - series.decisive[action.alert_id]))
        self.store.save_alert(series.series_instance_uid,
                              AlertState(action.alert_id, revision, action.state, action.probability))
        self.outputs.count("alerts", action.state)
        if self.previews is not None:
            self._publish_preview(series, manifest, payload, action)
        log.warning("ALERT %s %s series=%s p=%.3f rev=%d model=%s %s (%s)", action.state, finding.code,
                    series.series_instance_uid, action.probability, revision, manifest.name, manifest.version,
                    provenance_words(algorithm))

    @staticmethod
    def _algorithm(series: OpenSeries, manifest):
        """The provenance of ``manifest``'s model as it runs now (its route's runner; cached per model)."""
        model = next((m for m, _ in series.routes if m.manifest is manifest), None)
        return algorithm_for(manifest, getattr(getattr(model, "runner", None), "backend", None))

    def _finalise_due(self) -> None:
        now = time.monotonic()
        for uid in list(self._open):
            series = self._open[uid]
            due = now - series.last_arrival >= self.settle or now - series.opened >= self.max_open
            if not due or now < series.retry_at or (self._held and any(f.series_instance_uid == uid
                                                                        for f in self._held)):
                continue
            try:
                t0 = time.perf_counter()
                self._finalise(series)
                self.outputs.observe("decision", time.perf_counter() - t0)
            except Exception as exc:  # noqa: BLE001 - error boundary per series
                if disk_full(exc):  # nothing was published: decide again once there is space
                    series.retry_at = now + DISK_FULL_RETRY_S
                    self._pause(exc)
                    continue
                log.exception("series %s: final decision failed: %s", uid, exc)
                self._fail(series, exc)
            self._close(uid)

    def _fail(self, series: OpenSeries, exc: BaseException) -> None:
        """Publish a ``rejected`` result naming the error; if even that fails, log it (never raise)."""
        try:
            self._publish(series, [ModelOutcome(m.manifest, "failed", f"internal error: {exc}")
                                   for m, _ in series.routes], failure=f"internal error: {exc}")
        except Exception as again:  # noqa: BLE001 - a boundary's own failure path cannot raise
            log.error("series %s: its failure could not be published either (%s: %s); the series is closed "
                      "without a result", series.series_instance_uid, type(again).__name__, again)
            self.outputs.count("series", "rejected")

    def _close(self, uid: str) -> None:
        self._open.pop(uid, None)
        for step in (lambda: self.store.mark_final(uid), lambda: self.outputs.series_done(uid)):
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - the next start resumes the series instead
                log.error("series %s: closing it failed (%s: %s); it will be resumed at the next start", uid,
                          type(exc).__name__, exc)

    def _finalise(self, series: OpenSeries) -> None:
        outcomes, emitted = [], set()  # emitted: alert_ids this decision sent (final or retracted)
        for model, reason in series.routes:  # 2.5-D models: the slices still waiting for a neighbour
            if reason is None and getattr(model, "context", None) is not None:
                self._settle_context(series, model)
        for model, reason in series.routes:
            manifest = model.manifest
            scores = self.store.scores(series.series_instance_uid, manifest.name)  # ordered along the normal
            # A reopened series counts the slices scored before it reopened too.
            series.slices = max(series.slices, len(scores))
            reason = reason or self._coverage_problem(model, series, scores)
            backend, mode = getattr(model.runner, "backend", None), self._mode_for(manifest.name)
            if reason:  # not made for this series (an applicability rule): skipped; cannot decide: rejected
                status = "skipped" if isinstance(reason, Refusal) else "rejected"
                outcomes.append(ModelOutcome(manifest, status, reason, backend=backend, mode=mode))
                continue
            outcome = decide_model(manifest, scores, backend=backend, mode=mode, context=series_context(series.info))
            outcomes.append(outcome)
            for action in final_actions(outcome, scores, self._alert_id_for(series), self.store.alert):
                self._emit_alert(series, manifest, action)
                emitted.add(action.alert_id)
        self._publish(series, outcomes, emitted=emitted)

    def _publish(self, series: OpenSeries, outcomes: list[ModelOutcome], failure: str | None = None,
                 emitted: set | None = None) -> None:
        info = series.info
        result = series_result(
            series_instance_uid=series.series_instance_uid, study_instance_uid=info["study_instance_uid"],
            slices=series.slices, outcomes=outcomes, warnings=series.warnings,
            no_model_reason=failure or no_model_reason(info.get("modality"), info.get("body_part")))
        if failure:
            result["status"], result["reason"] = "rejected", result.get("reason") or failure
        if any(o.status == "analysed" and o.manifest.synthetic_training for o in outcomes):
            result["disclaimer"] = DISCLAIMER
        self.outputs.publish_result(result)
        self.outputs.count("series", result["status"])
        self._store_results(series, result, failure)
        self._record(series, outcomes)
        self._tell_decided(series, outcomes, result, emitted or set())

    def _store_results(self, series: OpenSeries, result: dict, failure: str | None) -> None:
        """Hand a final analysed result to the DICOM results (SR, KOS → PACS), where the outputs take them."""
        store = getattr(self.outputs, "store_results", None)
        if store is None or series.study is None or failure or result["status"] != "analysed":
            return
        try:
            store(result, series.study, dict(series.info), [m for m, reason in series.routes if reason is None],
                  key_images=self._key_images(series, result))
        except Exception as exc:  # noqa: BLE001 - the result is out already; say why the DICOM one is not
            log.error("series %s: its DICOM results were not queued (%s)", series.series_instance_uid,
                      exc if isinstance(exc, EdgeAgentError) else type(exc).__name__)

    def _key_images(self, series: OpenSeries, result: dict) -> dict:
        """Per positive live model: its best key slice's thumbnail, with the evidence regions found on that slice
        (``{sop_instance_uid, image, orientation, boxes}``; boxes in the thumbnail's pixels) — for the PACS's
        secondary capture. Empty without previews (the thumbnails are theirs); never raises."""
        out: dict = {}
        if self.previews is None:
            return out
        try:
            for f in result.get("findings", []):
                name = f.get("model")
                if not f.get("positive") or f.get("shadow") or name in out:
                    continue
                manifest = next((m.manifest for m, reason in series.routes
                                 if reason is None and m.manifest.name == name), None)
                found = None if manifest is None else self._preview_cache(series, manifest).image_for(
                    k["sop_instance_uid"] for k in f.get("key_slices") or [])
                if found is None:
                    continue
                uid, image = found
                score = self._known_scores(series, name).get(uid)
                sy, sx = image.shape[0] / series.shape[0], image.shape[1] / series.shape[1]
                boxes = [(r0 * sy, c0 * sx, r1 * sy, c1 * sx)
                         for r0, c0, r1, c1 in evidence_boxes(score.features if score else None)]
                out[name] = {"sop_instance_uid": uid, "image": image, "boxes": boxes,
                             "orientation": series.info.get("orientation") or ()}
        except Exception as exc:  # noqa: BLE001 - a key image is a convenience; the SR and KOS go regardless
            log.warning("series %s: no key images for the PACS (%s: %s)", series.series_instance_uid,
                        type(exc).__name__, exc)
        return out

    def _tell_decided(self, series: OpenSeries, outcomes: list[ModelOutcome], result: dict, emitted: set) -> None:
        """The series-decided line; it never costs a result (the result is out already)."""
        try:
            since = max(0.0, time.monotonic() - series.last_arrival)
            head = f"{result['status']}, {series.slices} slices, {since:.1f} s after its last slice"
            if not outcomes and result.get("reason"):
                head = (f"{result['status']} ({result['reason']}), {series.slices} slices, {since:.1f} s after its "
                        "last slice")
            words = [self._outcome_words(series, o, emitted) for o in outcomes]
            story.info("series %s decided: %s%s", series.series_instance_uid, head,
                       "".join(f"; {w}" for w in words),
                       extra={"event": "series_decided", "data": {
                           "series_instance_uid": series.series_instance_uid, "status": result["status"],
                           "slices": series.slices, "since_last_slice_s": round(since, 3),
                           "findings": [{k: f.get(k) for k in ("model", "code", "probability", "positive", "shadow")
                                         if k in f} for f in result.get("findings", [])],
                           "models": [model_provenance(algorithm_for(o.manifest, o.backend)) for o in outcomes
                                      if o.status == "analysed"],
                           "provenance": getattr(self.outputs, "provenance", None)}})
        except Exception as exc:  # noqa: BLE001 - a log line must not fail a series
            log.debug("series %s: the decided line failed (%s)", series.series_instance_uid, exc)

    def _outcome_words(self, series: OpenSeries, outcome: ModelOutcome, emitted: set) -> str:
        """One model's part of the decided line: status, and per finding p, positive or not, alert or not; an
        analysed model also names what ran (sha256 of the artefact, backend, precision, engine fingerprint)."""
        m = outcome.manifest
        head = f"{m.name} {m.version}" + (" [shadow]" if outcome.mode == "shadow" else "") + (
            " [synthetic-trained]" if getattr(m, "synthetic_training", False) else "")
        if outcome.status != "analysed":
            return f"{head}: {outcome.status}" + (f" ({outcome.reason})" if outcome.reason else "")
        head += f" ({provenance_words(algorithm_for(m, outcome.backend))})"
        parts = []
        for f in outcome.findings:
            words = f"{f['code']} p={f['probability']:.3f} {'positive' if f['positive'] else 'negative'}"
            if outcome.mode == "shadow":
                words += ", shadow: would alert, no alert raised" if f.get("would_alert") else ", shadow: no alert"
            else:
                aid = alert_id(series.series_instance_uid, m.name, m.version, f["code"])
                state = self.store.alert(aid)
                if state is not None and aid in emitted:
                    words += f", alert {state.state} sent (revision {state.revision})"
                elif state is not None and state.state != "retracted":
                    words += f", alert {state.state} stands (revision {state.revision})"
                else:
                    words += ", no alert"
            parts.append(words)
        return f"{head}: " + "; ".join(parts)

    def _record(self, series: OpenSeries, outcomes: list[ModelOutcome]) -> None:
        """What ``edge-agent report`` reads: each model's final word, and what it would have alerted."""
        now = time.time()
        latency = max(0.0, now - series.first_received)
        rows = []
        for o in outcomes:
            common = dict(series_instance_uid=series.series_instance_uid, model=o.manifest.name, decided_at=now,
                          status=o.status, reason=o.reason, mode=o.mode, scanner=series.info.get("scanner", ""),
                          latency_s=latency)
            rows += [Outcome(finding=f["code"], probability=f["probability"], positive=f["positive"], **common)
                     for f in o.findings] or [Outcome(finding="", probability=None, positive=None, **common)]
        if not rows:
            rows = [Outcome(series.series_instance_uid, "", "", now, "skipped", None, "live", None, None,
                            series.info.get("scanner", ""), latency)]
        try:
            self.store.save_outcomes(rows)
        except Exception:  # noqa: BLE001 - the report's record never costs a result
            log.exception("series %s: recording its outcome for edge-agent report failed", series.series_instance_uid)

    def _coverage_problem(self, model, series: OpenSeries, scores: list[SliceScore]) -> str | None:
        """Why the model cannot decide on the slices scored: the same rule and words as ``edge-agent infer``."""
        info = series.info
        view = SimpleNamespace(sop_instance_uids=[s.sop_instance_uid for s in scores],
                               positions=np.array([s.position_mm for s in scores], dtype=np.float64),
                               spacing=None, slice_thickness=info.get("slice_thickness"),
                               gantry_tilt=info.get("gantry_tilt", 0.0), tilt_corrected=False)
        return self.models.check_series(model, view)
