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

This module is the thread shell: the queue, the open series, the error
boundaries, the decisions carried out (alerts to the outbox, state DB,
metrics). The jobs it runs are their own modules: the open series
(``series.py``), scoring, 2.5-D models' context windows included
(``scoring.py``, ``context.py``), the preview thumbnails and key images
(``previews.py``), the result, DICOM results and report record
(``finalise.py``) and each series' story on the ``edge_agent.series`` logger
(``story.py``).

Every series runs inside an error boundary: a failure is logged and recorded
in that series' result; the pipeline goes on with the next.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Callable, Protocol

import numpy as np

from edge_agent.alerts.payloads import alert_id, build_alert, utc_iso
from edge_agent.boundary import DISK_FULL_RETRY_S, disk_full
from edge_agent.decision.series import AlertAction, ModelOutcome, decide_model, final_actions, preliminary_actions
from edge_agent.inference.applicability import Refusal
from edge_agent.logs import PIPELINE_LOG
from edge_agent.results.algorithm import algorithm_for, model_provenance, provenance_words
from edge_agent.service.finalise import coverage_problem, final_result, record, store_results
from edge_agent.service.previews import Thumbnails
from edge_agent.service.scoring import ContextScorer, Scorer
from edge_agent.service.series import OpenSeries, series_context, series_info
from edge_agent.service.state import THUMBNAIL_MEMORY_S, AlertState, SeriesStore, SliceScore
from edge_agent.service.story import tell_decided, tell_opened

log = logging.getLogger(PIPELINE_LOG)  # == __name__; the parts it runs log here too

#: Final series (scores, alert revisions) are kept this long for reopening by late or resent slices.
SERIES_MEMORY_S = 7 * 24 * 3600
#: A quiet series waits at most this long (after its settle) for files written before it went quiet that the
#: ingest has not handed over yet; then it is decided, and any of its slices among them reopens it.
BACKLOG_WAIT_S = 60.0


class Outputs(Protocol):
    """Where the pipeline's decisions go (the app wires the outbox, ingest and metrics).

    Optional: ``publish_preview(payload)`` (key-image previews), ``store_results(result, study, info, models,
    key_images=)`` (DICOM results), ``provenance``.
    """

    def raise_alert(self, payload: dict) -> None: ...
    def publish_result(self, payload: dict) -> None: ...
    def series_done(self, series_instance_uid: str) -> None: ...
    def observe(self, stage: str, seconds: float) -> None: ...
    def count(self, name: str, state: str | None = None) -> None: ...


class SeriesPipeline:
    """Owns the models and the open series; fed by :meth:`submit` from the ingest threads."""

    def __init__(self, load_models: Callable[[], Any], store_path, outputs: Outputs, *, site: str, device: str,
                 settle: float = 5.0, max_open: float = 1800.0, queue_size: int = 256, batch: int = 16,
                 heartbeat: Callable[[str], None] | None = None, mode_for: Callable[[str], str] | None = None,
                 study_header: Callable[[str], Any] | None = None, previews: Any = None,
                 backlog: Callable[[], float | None] | None = None, backlog_wait: float = BACKLOG_WAIT_S):
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
        # Files on their way: ``backlog()`` is the ingest's oldest file not yet handed over (Ingest.oldest_pending,
        # monotonic; None: none), ``_queued`` counts each series' files in this queue (submit adds, _take takes).
        self._backlog, self.backlog_wait = backlog, backlog_wait
        self._queued: dict[str, int] = {}
        self._queued_lock = threading.Lock()
        self._paused_until = 0.0  # monotonic; 0: not paused
        self.models = None
        self.store: SeriesStore | None = None
        self._thumbnails: Thumbnails | None = None  # the parts below use the store: made with it (_setup)
        self._scorers: tuple[Scorer, ContextScorer] | None = None

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
        self._count_queued(item.series_instance_uid, 1)  # before it is in the queue: never in neither
        while True:
            try:
                self._queue.put(item, timeout=0.5 if timeout is None else timeout)
                return
            except queue.Full:
                if timeout is not None or self._stop.is_set():
                    self._count_queued(item.series_instance_uid, -1)
                    raise

    def _count_queued(self, uid: str, n: int) -> None:
        with self._queued_lock:
            left = self._queued.get(uid, 0) + n
            if left > 0:
                self._queued[uid] = left
            else:
                self._queued.pop(uid, None)

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
            self._setup()
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

    def _setup(self) -> None:
        """In the pipeline thread: the models, the state DB, and the parts that use them."""
        self.models = self._load_models()  # activates runners in this thread (CUDA context owner)
        self.store = SeriesStore(self._store_path)
        if self.previews is not None:
            self._thumbnails = Thumbnails(self.previews, self.store, self.outputs)
        parts = (self.store, self.outputs, self._thumbnails, self._check_preliminary)
        self._scorers = (Scorer(*parts), ContextScorer(*parts))

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
        due = min(max(min(s.last_arrival + self.settle, s.opened + self.max_open), s.retry_at)
                  for s in self._open.values())
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
        for item in items:
            self._count_queued(item.series_instance_uid, -1)
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
        tell_opened(uid, how, info, routes)
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
        if self._thumbnails is not None:
            # single-frame files only: reading back one frame of an enhanced multi-frame file decodes them all
            series.files.update((f.slices[0].sop_instance_uid, (f.path, 0)) for f in files if len(f.slices) == 1)
        for _, s in slices:
            s.drop_pixels()  # every model has scored it: the pixels go, memory stays flat

    def _score(self, series: OpenSeries, model, good: list) -> None:
        """One routed model scores the batch (a 2.5-D model: the slices whose neighbours have landed)."""
        self._scorer(model).score(series, model, good)

    def _scorer(self, model) -> Scorer:
        plain, context = self._scorers
        return context if getattr(model, "context", None) is not None else plain

    def _check_preliminary(self, series: OpenSeries, model, new_scores: list[SliceScore]) -> None:
        along = sorted(series.known_scores(self.store, model.manifest.name).values(),
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
                     "key_slices": list(action.key_slices)},
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
        if self._thumbnails is not None:
            self._thumbnails.publish(series, manifest, payload, action)
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
            if self._files_on_the_way(series, now):
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

    def _files_on_the_way(self, series: OpenSeries, now: float) -> bool:
        """True while files that may be this quiet series' slices are still on their way: decide after them.

        "Quiet" means the scanner wrote nothing for ``settle`` seconds, not that nothing reached this thread:
        behind a burst (a loaded Jetson, a thin series of a thousand slices) files the scanner wrote long ago
        still wait in this queue or in the ingest (stable wait, decode, ledger). Deciding before them would
        send a result, a KOS and perhaps a retraction from part of the series, then reopen it. So a due series
        waits while files of it are in this queue, and while the ingest holds a file that last changed before
        the series went quiet (its series unknown until decoded) — at most ``backlog_wait`` seconds, then it
        is decided anyway (a stuck file must not hold every decision) and a late slice reopens it. A series
        open for ``max_open`` never waits.
        """
        if now - series.opened >= self.max_open:
            return False
        with self._queued_lock:
            if self._queued.get(series.series_instance_uid):
                return True
        if self._backlog is None:
            return False
        quiet_at = series.last_arrival + self.settle
        try:
            oldest = self._backlog()
        except Exception as exc:  # noqa: BLE001 - a broken hint must not hold the decision
            log.warning("series %s: the ingest backlog could not be read (%s); deciding now",
                        series.series_instance_uid, exc)
            return False
        if oldest is None or oldest >= quiet_at:
            return False
        if now - quiet_at >= self.backlog_wait:
            log.warning("series %s: deciding it although the ingest still holds files written %.0f s before it "
                        "went quiet; any of its slices among them reopen it", series.series_instance_uid,
                        quiet_at - oldest)
            return False
        series.retry_at = now + min(0.1, self.settle / 4)  # look again soon, without spinning
        return True

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
            if reason is None:
                self._scorer(model).settle(series, model)
        for model, reason in series.routes:
            manifest = model.manifest
            scores = self.store.scores(series.series_instance_uid, manifest.name)  # ordered along the normal
            # A reopened series counts the slices scored before it reopened too.
            series.slices = max(series.slices, len(scores))
            reason = reason or coverage_problem(self.models, model, series, scores)
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
        result = final_result(series, outcomes, failure)
        self.outputs.publish_result(result)
        self.outputs.count("series", result["status"])
        store_results(self.outputs, self._thumbnails, series, result, failure)
        record(self.store, series, outcomes)
        tell_decided(series, outcomes, result, emitted or set(), self.store.alert, self.outputs)
