"""The agent: one object that starts its subsystems in order and stops them in reverse.

Start: embedded broker (when no broker is configured) → outbox publisher →
pipeline (loads and activates the models in its own thread) → ingest (resume,
rescan, watch) → C-STORE receiver → metrics server → systemd ``READY=1``.
Stop: the reverse — intake first, then the queued files are scored, the
outbox flushes what it can and publishes ``offline``.

Once everything is up, a start-up banner names every endpoint (broker,
embedded broker, DICOM receiver, metrics, watch and state folders, inference
mode, models); every ``agent.summary_interval`` seconds one line sums up what
happened since the last one. Both go to the ``edge_agent.agent`` logger, shown
at the default verbosity (:mod:`edge_agent.logs`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from pathlib import Path

from edge_agent.config import Config, check_seconds_or_zero
from edge_agent.errors import EdgeAgentError
from edge_agent.logs import AGENT_LOG

log = logging.getLogger(__name__)
story = logging.getLogger(AGENT_LOG)


class Tally:
    """Counts since the last summary (thread-safe): ``add`` from any thread, ``take`` empties it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter = Counter()

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def take(self) -> Counter:
        with self._lock:
            counts, self._counts = self._counts, Counter()
        return counts


def _every(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


class _Outputs:
    """Connects the pipeline's decisions to the outbox, the ledger and the metrics."""

    def __init__(self, app: "Agent"):
        self.app = app

    @property
    def provenance(self) -> dict:
        """``{agent_version, config_hash}`` of every alert and result (computed once, at the agent's start)."""
        return self.app.provenance

    def raise_alert(self, payload: dict) -> None:
        self.app.publisher.raise_alert(payload)

    def publish_preview(self, payload: dict) -> None:
        self.app.publisher.publish_preview(payload)

    def publish_result(self, result: dict) -> None:
        from edge_agent.alerts.payloads import build_result
        from edge_agent.alerts.payloads import utc_iso

        cfg = self.app.config
        payload = build_result(site=cfg.agent.site, device=cfg.agent.device,
                               series={"study_instance_uid": result["study_instance_uid"],
                                       "series_instance_uid": result["series_instance_uid"]},
                               result=result, timestamps={"decided": utc_iso(time.time())},
                               provenance=self.app.provenance)
        self.app.publisher.publish_result(payload)
        for listener in list(self.app.result_listeners):
            listener(result)

    def store_results(self, result: dict, study, info: dict, models: list, key_images: dict | None = None) -> None:
        """A final result → its SR and KOS (and, with pacs.secondary_capture, the key image), or the withdrawal of
        key images a model can no longer stand by, queued for every PACS destination (pipeline thread)."""
        pacs = self.app.pacs
        if pacs is None:
            return
        from edge_agent.results.algorithm import algorithm_of

        pacs.submit(result, study, {m.manifest.name: algorithm_of(m) for m in models}, info.get("body_part") or "",
                    key_images=key_images)

    def series_done(self, series_instance_uid: str) -> None:
        if self.app.ingest is not None:
            self.app.ingest.mark_series_done(series_instance_uid)

    def observe(self, stage: str, seconds: float) -> None:
        if self.app.metrics is not None:
            self.app.metrics.observe(stage, seconds)

    def count(self, name: str, state: str | None = None) -> None:
        self.app.tally.add(f"{name}:{state}")
        m = self.app.metrics
        if m is None:
            return
        if name == "alerts":
            m.alerts.labels(state=f"raised_{state}" if state in ("preliminary", "final") else state).inc()
        elif name == "previews":
            m.previews.labels(outcome=state).inc()
        elif name == "series":
            {"analysed": m.series_analysed, "rejected": m.series_rejected, "skipped": m.series_skipped,
             "not_assessable": m.series_not_assessable}[state].inc()


class Agent:
    """The daemon behind ``edge-agent run`` (and the agent inside ``demo``)."""

    def __init__(self, config: Config):
        from edge_agent.config import config_hash
        from edge_agent.results.algorithm import agent_provenance

        self.config = config
        # What every alert, result and SR names besides its model (docs/ALERTS.md, "Provenance"): computed once.
        self.provenance = agent_provenance(config_hash(config))
        self.broker = None
        self.publisher = None
        self.pacs = None
        self.pipeline = None
        self.ingest = None
        self.receiver = None
        self.metrics = None
        self.heartbeats = None
        self.metrics_server = None
        self.notifier = None
        self.result_listeners: list = []
        self.tally = Tally()  # what happened since the last summary line
        self._next_summary = 0.0
        self._ingest_before: dict = {}  # the ingest's counters at the last summary (for excluded/duplicates)
        self._stats_thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._started: list[tuple[str, object]] = []

    # -- lifecycle --------------------------------------------------------------
    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        from edge_agent.alerts import AlertPublisher, MqttSettings
        from edge_agent.ingest import Ingest, IngestSettings
        from edge_agent.service.metrics import Heartbeats, Metrics
        from edge_agent.service.pipeline import SeriesPipeline

        cfg = self.config
        watch = Path(cfg.ingest.watch)
        if not watch.is_dir():  # before anything starts: one sentence, nothing half-started
            raise EdgeAgentError(f"The watch folder {watch} does not exist; create it or pass the right folder "
                                 "with --watch.")
        # a Config built in code skipped config.validate: this one rule, as it words it, before anything starts
        check_seconds_or_zero("agent.summary_interval", cfg.agent.summary_interval, "no summary")
        state = cfg.state_dir
        try:
            state.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EdgeAgentError(f"state folder {state} cannot be created ({exc.strerror}); "
                                 "set agent.state_dir / --state-dir to a writable folder.") from exc
        self.metrics, self.heartbeats = Metrics(), Heartbeats()

        broker_url = cfg.mqtt.broker
        if not broker_url:
            from edge_agent.alerts.embedded import EmbeddedBroker

            self.broker = EmbeddedBroker(host="127.0.0.1", port=cfg.mqtt.embedded_port)
            self.broker.start()
            self._started.append(("embedded broker", self.broker))
            broker_url = self.broker.url
            log.info("embedded MQTT broker at %s", broker_url)
        # The embedded broker (amqtt) speaks MQTT 3.1.1 only: don't make it refuse a v5 CONNECT first.
        protocol = "3.1.1" if self.broker is not None else cfg.mqtt.protocol

        settings = MqttSettings.from_config(cfg, url=broker_url, protocol=protocol)
        self.publisher = AlertPublisher(settings, state / "outbox.sqlite3", on_alarm=self._alarm,
                                        on_delivery=self._delivered)
        self.publisher.start()
        self._started.append(("publisher", self.publisher))

        study_header = None
        if cfg.pacs.destinations:  # DICOM results into the study: C-STORE, DICOM TLS or STOW-RS (docs/RESULTS.md)
            from edge_agent.results.delivery import PacsDelivery
            from edge_agent.results.destination import parse_destination
            from edge_agent.results.sender import SenderSettings
            from edge_agent.results.study import read_study_header

            self.pacs = PacsDelivery(
                state / "pacs.sqlite3", [parse_destination(d) for d in cfg.pacs.destinations],
                SenderSettings.from_config(cfg.pacs),
                site=cfg.agent.site, device=cfg.agent.device, on_event=self._pacs_event,
                provenance=self.provenance, secondary_capture=cfg.pacs.secondary_capture)
            if cfg.pacs.secondary_capture and not cfg.alerts.previews:
                log.warning("pacs.secondary_capture is on but alerts.previews is off: the key images are made from "
                            "the preview thumbnails, so none will be sent; turn alerts.previews on")
            self.pacs.start()
            self._started.append(("pacs", self.pacs))
            study_header = read_study_header

        self.pipeline = SeriesPipeline(
            self._load_models, state / "series.sqlite3", _Outputs(self), site=cfg.agent.site,
            device=cfg.agent.device, settle=cfg.series.settle, max_open=cfg.series.max_open,
            queue_size=cfg.series.queue_size, batch=cfg.series.batch, heartbeat=self.heartbeats.beat,
            mode_for=self._mode_for, study_header=study_header, previews=self._preview_settings(),
            backlog=self._ingest_backlog)
        self.pipeline.start()
        self._started.append(("pipeline", self.pipeline))

        ingest_settings = IngestSettings.from_config(cfg, keep_stored=True)
        self.ingest = Ingest(ingest_settings, on_file=self._on_file, on_rejected=self._on_rejected)
        self.ingest.start()
        self._started.append(("ingest", self.ingest))

        if cfg.dicom.port:
            from edge_agent.ingest.receiver import StorageReceiver, tls_context

            tls = (tls_context(cfg.dicom.tls_cert, cfg.dicom.tls_key, cfg.dicom.tls_ca or None)
                   if cfg.dicom.tls_cert else None)
            self.receiver = StorageReceiver(Path(cfg.ingest.watch), port=cfg.dicom.port, ae_title=cfg.dicom.ae_title,
                                            bind=cfg.dicom.bind,
                                            allowed_calling_aets=cfg.dicom.allowed_calling_aets or None,
                                            ssl_context=tls, spool_dir=state / "receiving")
            self.receiver.start()
            self._started.append(("receiver", self.receiver))

        if cfg.metrics.port:
            from edge_agent.service.metrics import MetricsServer

            self.metrics_server = MetricsServer(self.metrics, self.heartbeats, host=cfg.metrics.bind,
                                                port=cfg.metrics.port, max_stage_age=cfg.metrics.max_stage_age)
            self.metrics_server.start()
            self._started.append(("metrics", self.metrics_server))

        self._banner(ingest_settings)
        if cfg.agent.summary_interval > 0:
            self._next_summary = time.monotonic() + cfg.agent.summary_interval
            self._ingest_before = self.ingest.stats()
        self._stats_thread = threading.Thread(target=self._stats_loop, name="stats", daemon=True)
        self._stats_thread.start()

        from edge_agent.service.systemd import SystemdNotifier

        self.notifier = SystemdNotifier(health=self.healthy)
        self.notifier.start()
        self.notifier.ready(f"watching {cfg.ingest.watch}")
        self._started.append(("systemd", self.notifier))

    def stop(self) -> None:
        """Stop in reverse order; each step is bounded and one failure does not stop the rest."""
        self._stop.set()
        if self.notifier is not None:
            try:
                self.notifier.stopping()
            except Exception:  # noqa: BLE001
                pass
        for name, part in reversed(self._started):
            try:
                part.stop()
            except Exception as exc:  # noqa: BLE001 - keep stopping the others
                log.warning("stopping %s failed: %s", name, exc)
        self._started.clear()
        if self._stats_thread is not None:
            self._stats_thread.join(5)

    # -- wiring -----------------------------------------------------------------
    def _load_models(self):
        from edge_agent.inference.backends import TrtOptions
        from edge_agent.inference.models import ModelSet

        from edge_agent.results.algorithm import algorithm_for

        cfg = self.config.inference
        models = ModelSet.load(Path(cfg.engines) if cfg.engines else None, backend=cfg.backend,
                               threads=cfg.threads or None, trt_options=TrtOptions.from_config(cfg),
                               overrides=self.config.applies_to_overrides(), alert_at=self.config.alert_at_overrides())
        for model in models:  # each model's provenance now (cached), not on the first alert's path
            algorithm_for(model.manifest, getattr(model.runner, "backend", None))
            if getattr(model, "fallback", None) is not None:  # auto: ONNX Runtime if TensorRT cannot start
                algorithm_for(model.manifest, "onnxrt")
        return models

    def _preview_settings(self):
        """PreviewSettings from [alerts] when key-image previews are on, else None."""
        a = self.config.alerts
        if not a.previews:
            return None
        from edge_agent.alerts.previews import PreviewSettings

        return PreviewSettings(size=a.preview_size, max_bytes=a.preview_max_bytes, format=a.preview_format)

    def _mode_for(self, model_name: str) -> str:
        """live | shadow for one model: its [models.<name>] mode, else inference.mode."""
        model = self.config.models.get(model_name)
        return (model.mode if model is not None else "") or self.config.inference.mode

    def _on_file(self, item) -> None:
        self.tally.add("files")
        self.metrics.files_seen.inc()
        # "decode": from the scanner's last write to the file decoded and claimed (stable wait included)
        self.metrics.observe("decode", max(0.0, item.complete_at - (item.written_at or item.received_at)))
        self.pipeline.submit(item)

    def _ingest_backlog(self) -> float | None:
        """The pipeline's view of the files still in the ingest (Ingest.oldest_pending); None before it runs."""
        ingest = self.ingest
        return ingest.oldest_pending() if ingest is not None else None

    def _on_rejected(self, path, reason: str) -> None:
        self.tally.add("quarantined")
        self.metrics.files_quarantined.inc()
        # No log line here: the ingest logs each quarantine once, with where the copy went.

    def _alarm(self, message: str) -> None:
        # Logged (ERROR "ALARM: ...") by the publisher's Alarms already; an alarm is not an alert's state
        # (a deep outbox or a refused connection rejects no alert): counted for the summary only.
        self.tally.add("alarms")

    def _delivered(self, state: str, kind: str) -> None:
        """An outbox row reached its end (publisher thread): ``confirmed`` by a receipt, or ``rejected``."""
        if kind != "alert":
            return
        self.tally.add(f"alerts:{state}")
        if self.metrics is not None:
            self.metrics.alerts.labels(state=state).inc()

    def _pacs_event(self, destination: str, outcome: str) -> None:
        """A C-STORE outcome (sender thread): done, retry or dead."""
        self.tally.add(f"pacs:{outcome}")
        if self.metrics is not None:
            self.metrics.pacs_stores.labels(destination=destination, outcome=outcome).inc()

    def _stats_loop(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self._update_stats()
            except Exception as exc:  # noqa: BLE001 - statistics never stop the agent
                log.debug("stats update failed: %s", exc)

    def _update_stats(self) -> None:
        self.heartbeats.beat("stats")
        interval = self.config.agent.summary_interval
        if interval > 0 and time.monotonic() >= self._next_summary:
            self._next_summary = time.monotonic() + interval
            self._summary(interval)
        outbox = self.publisher.stats()
        self.metrics.set_outbox(outbox.get("depth", 0), outbox.get("oldest_pending_age_s") or 0.0)
        self.metrics.set_queue("pipeline", self.pipeline.queue_depth())
        if self.pacs is not None:
            self.metrics.set_pacs(self.pacs.stats())
        ingest = self.ingest.stats() if self.ingest else {}
        self.publisher.set_status_counters({
            "files": ingest, "open_series": self.pipeline.open_series(),
            "pipeline_queue": self.pipeline.queue_depth()})

    # -- what the operator reads ----------------------------------------------------
    def _banner(self, ingest_settings) -> None:
        """One line per endpoint, once everything is up (ports bound, models loaded). No secrets."""
        from edge_agent import __version__

        cfg = self.config
        lines: list[tuple[str, dict]] = []
        settings = self.publisher.settings
        lines.append((f"edge-agent {__version__} started: site {cfg.agent.site}, device {cfg.agent.device}; "
                      f"topics {settings.base_topic}/{{alerts,results,status,receipts}}; config hash "
                      f"{self.provenance['config_hash']}",
                      {"version": __version__, "site": cfg.agent.site, "device": cfg.agent.device,
                       "topics": settings.base_topic, "config_hash": self.provenance["config_hash"]}))
        address = settings.address
        who = f"user {settings.username}" if settings.username else "no username"
        delivery = ("an alert is done when a consumer's receipt arrives" if settings.delivery == "receipt"
                    else "an alert is done at the broker's PUBACK")
        if self.broker is not None:
            lines.append((f"MQTT broker: embedded (amqtt, MQTT 3.1.1) listening on {self.broker.host} port "
                          f"{self.broker.port} ({settings.url}); delivery {settings.delivery}: {delivery}",
                          {"broker": settings.url, "embedded_port": self.broker.port}))
        else:
            tls = ("TLS" + (", client certificate" if settings.cert_file else "")
                   + (", host name NOT checked" if settings.tls_insecure else "")) if address.tls else "no TLS"
            lines.append((f"MQTT broker: {settings.url} ({tls}, {who}, MQTT {cfg.mqtt.protocol}); delivery "
                          f"{settings.delivery}: {delivery}", {"broker": settings.url}))
        if self.receiver is not None:
            tls = " (DICOM TLS only)" if self.receiver.ssl_context else ""
            callers = (f", calling AE titles {', '.join(cfg.dicom.allowed_calling_aets)}"
                       if cfg.dicom.allowed_calling_aets else ", any calling AE title")
            lines.append((f"DICOM receiver: AE title {self.receiver.ae_title} on {self.receiver.bind} port "
                          f"{self.receiver.port}{tls}{callers}",
                          {"dicom_port": self.receiver.port, "ae_title": self.receiver.ae_title}))
        else:
            lines.append(("DICOM receiver: off (dicom.port = 0)", {"dicom_port": None}))
        if self.metrics_server is not None:
            url = self.metrics_server.url
            lines.append((f"metrics: {url}/metrics, health: {url}/healthz",
                          {"metrics_port": self.metrics_server.port}))
        else:
            lines.append(("metrics: off (metrics.port = 0)", {"metrics_port": None}))
        if self.pacs is not None:
            names = [str(d) for d in self.pacs.destinations]  # the queue keys (never a credential)
            lines.append((f"PACS: SR and key images of every final result to {', '.join(names)} as AE "
                          f"title {cfg.pacs.ae_title}; queue {self.pacs.queue_path}, dead letters after "
                          f"{_every(cfg.pacs.dead_after)}", {"pacs": names}))
        else:
            lines.append(("PACS: off (pacs.destinations is empty)", {"pacs": []}))
        how = (f"polling every {_every(cfg.ingest.poll_interval)}" if cfg.ingest.poll else "inotify")
        lines.append((f"watch folder: {ingest_settings.watch_dir} ({how}, rescan every "
                      f"{_every(cfg.ingest.rescan_interval)}); quarantine: {ingest_settings.quarantine}",
                      {"watch": str(ingest_settings.watch_dir), "quarantine": str(ingest_settings.quarantine)}))
        summary = (f"a summary every {_every(cfg.agent.summary_interval)}" if cfg.agent.summary_interval > 0
                   else "no periodic summary (agent.summary_interval = 0)")
        lines.append((f"state folder: {cfg.state_dir}; {summary}", {"state_dir": str(cfg.state_dir)}))
        from edge_agent.results.algorithm import algorithm_of, provenance_words

        models = []
        for model in self.pipeline.models or []:
            m = model.manifest
            words = [provenance_words(algorithm_of(model)), self._mode_for(m.name)]  # sha256 <12 hex>, backend ...
            if m.synthetic_training:
                words.append("trained on synthetic phantoms, not a medical device")
            models.append(f"{m.name} {m.version} ({', '.join(words)})")
        lines.append((f"inference: {cfg.inference.mode}; models: {', '.join(models) if models else 'none loaded'}",
                      {"mode": cfg.inference.mode, "models": models}))
        for text, data in lines:
            story.info("start-up: %s", text, extra={"event": "startup", "data": data})

    def _summary(self, interval: float) -> None:
        """One line: what happened in the last interval, and where things stand now."""
        counts = self.tally.take()
        series = {k.split(":", 1)[1]: v for k, v in counts.items() if k.startswith("series:")}
        raised = {k.split(":", 1)[1]: v for k, v in counts.items() if k.startswith("alerts:")}
        n_series = sum(series.values())
        detail = ", ".join(f"{v} {k}" for k, v in sorted(series.items()))
        n_alerts = sum(raised.get(k, 0) for k in ("preliminary", "final", "retracted"))
        alert_detail = ", ".join(f"{raised[k]} {k}" for k in ("preliminary", "final", "retracted") if raised.get(k))
        outbox = self.publisher.stats()
        ingest = self.ingest.stats() if self.ingest is not None else {}
        skipped = {k: max(0, ingest.get(k, 0) - self._ingest_before.get(k, 0)) for k in ("excluded", "duplicates")}
        self._ingest_before = ingest
        files = _plural(counts["files"], "file")
        if any(skipped.values()):
            files += " (besides " + ", ".join(f"{v} {k}" for k, v in skipped.items() if v) + ")"
        parts = [f"{n_series} series decided" + (f" ({detail})" if detail else ""),
                 files, f"{counts['quarantined']} quarantined",
                 _plural(n_alerts, "alert") + (f" ({alert_detail})" if alert_detail else ""),
                 f"{raised.get('confirmed', 0)} confirmed by a receipt"]
        if raised.get("rejected"):
            parts.append(f"{raised['rejected']} rejected by the broker")
        if counts["alarms"]:
            parts.append(_plural(counts["alarms"], "alarm"))
        now = (f"now {self.pipeline.open_series()} series open, outbox {outbox.get('depth', 0)}, broker "
               f"{'connected' if outbox.get('connected') else 'NOT connected'}")
        story.info("last %s: %s; %s", _every(interval), ", ".join(parts), now,
                   extra={"event": "summary", "data": {
                       "interval_s": interval, "series": dict(series), "files": counts["files"], **skipped,
                       "quarantined": counts["quarantined"], "alerts": dict(raised), "alarms": counts["alarms"],
                       "open_series": self.pipeline.open_series(), "outbox_depth": outbox.get("depth", 0),
                       "broker_connected": bool(outbox.get("connected"))}})

    def dead_threads(self) -> list[str]:
        """Names of supervised threads that ended while the agent was not stopping (a zombie agent)."""
        if self._stop.is_set():
            return []
        dead = []
        for name, part in self._started:
            threads = getattr(part, "threads", None)
            for thread in (threads() if callable(threads) else []):
                if not thread.is_alive():
                    dead.append(f"{name} ({thread.name})")
        return dead

    def healthy(self) -> bool:
        return (self.heartbeats is not None and not self.heartbeats.stale(self.config.metrics.max_stage_age)
                and not self.dead_threads())
