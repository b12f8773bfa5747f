"""The agent: one object that starts its subsystems in order and stops them in reverse.

Start: embedded broker (when no broker is configured) → outbox publisher →
pipeline (loads and activates the models in its own thread) → ingest (resume,
rescan, watch) → C-STORE receiver → metrics server → systemd ``READY=1``.
Stop: the reverse — intake first, then the queued files are scored, the
outbox flushes what it can and publishes ``offline``.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from edge_agent.config import Config
from edge_agent.errors import EdgeAgentError

log = logging.getLogger(__name__)


class _Outputs:
    """Connects the pipeline's decisions to the outbox, the ledger and the metrics."""

    def __init__(self, app: "Agent"):
        self.app = app

    def raise_alert(self, payload: dict) -> None:
        self.app.publisher.raise_alert(payload)

    def publish_result(self, result: dict) -> None:
        from edge_agent.alerts.payloads import build_result
        from edge_agent.alerts.payloads import utc_iso

        cfg = self.app.config
        payload = build_result(site=cfg.agent.site, device=cfg.agent.device,
                               series={"study_instance_uid": result["study_instance_uid"],
                                       "series_instance_uid": result["series_instance_uid"]},
                               result=result, timestamps={"decided": utc_iso(time.time())})
        self.app.publisher.publish_result(payload)
        for listener in list(self.app.result_listeners):
            listener(result)

    def series_done(self, series_instance_uid: str) -> None:
        if self.app.ingest is not None:
            self.app.ingest.mark_series_done(series_instance_uid)

    def observe(self, stage: str, seconds: float) -> None:
        if self.app.metrics is not None:
            self.app.metrics.observe(stage, seconds)

    def count(self, name: str, state: str | None = None) -> None:
        m = self.app.metrics
        if m is None:
            return
        if name == "alerts":
            m.alerts.labels(state=f"raised_{state}" if state in ("preliminary", "final") else state).inc()
        elif name == "series":
            {"analysed": m.series_analysed, "rejected": m.series_rejected, "skipped": m.series_skipped,
             "not_assessable": m.series_not_assessable}[state].inc()


class Agent:
    """The daemon behind ``edge-agent run`` (and the agent inside ``demo``)."""

    def __init__(self, config: Config):
        self.config = config
        self.broker = None
        self.publisher = None
        self.pipeline = None
        self.ingest = None
        self.receiver = None
        self.metrics = None
        self.heartbeats = None
        self.metrics_server = None
        self.notifier = None
        self.result_listeners: list = []
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

        settings = MqttSettings.from_env(
            url=broker_url, username=cfg.mqtt.username or None, password=cfg.mqtt_password(),
            ca_file=cfg.mqtt.ca_file or None, cert_file=cfg.mqtt.cert_file or None,
            key_file=cfg.mqtt.key_file or None, tls_insecure=cfg.mqtt.tls_insecure,
            protocol=protocol, client_id=cfg.mqtt.client_id or None, prefix=cfg.mqtt.prefix,
            site=cfg.agent.site, device=cfg.agent.device, delivery=cfg.mqtt.delivery,
            receipt_timeout=cfg.mqtt.receipt_timeout, heartbeat_interval=cfg.mqtt.heartbeat_interval)
        self.publisher = AlertPublisher(settings, state / "outbox.sqlite3", on_alarm=self._alarm)
        self.publisher.start()
        self._started.append(("publisher", self.publisher))

        self.pipeline = SeriesPipeline(
            self._load_models, state / "series.sqlite3", _Outputs(self), site=cfg.agent.site,
            device=cfg.agent.device, settle=cfg.series.settle, max_open=cfg.series.max_open,
            queue_size=cfg.series.queue_size, batch=cfg.series.batch, heartbeat=self.heartbeats.beat,
            mode_for=self._mode_for)
        self.pipeline.start()
        self._started.append(("pipeline", self.pipeline))

        ingest_settings = IngestSettings(
            watch_dir=Path(cfg.ingest.watch), state_dir=state,
            quarantine_dir=Path(cfg.ingest.quarantine_dir) if cfg.ingest.quarantine_dir else None,
            poll=cfg.ingest.poll, poll_interval=cfg.ingest.poll_interval,
            stable_seconds=cfg.ingest.stable_seconds, retry_timeout=cfg.ingest.retry_timeout,
            rescan_interval=cfg.ingest.rescan_interval,
            delete_after_processing=cfg.ingest.delete_after_processing,
            workers=cfg.ingest.workers or None, keep_stored=True)
        self.ingest = Ingest(ingest_settings, on_file=self._on_file, on_rejected=self._on_rejected)
        self.ingest.start()
        self._started.append(("ingest", self.ingest))

        if cfg.dicom.port:
            from edge_agent.service.receiver import StorageReceiver, tls_context

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
        from edge_agent.inference.models import ModelSet

        cfg = self.config.inference
        return ModelSet.load(Path(cfg.engines) if cfg.engines else None, backend=cfg.backend,
                             threads=cfg.threads or None, gpu_preprocess=cfg.gpu_preprocess != "off",
                             zero_copy=cfg.zero_copy, overrides=self.config.applies_to_overrides())

    def _mode_for(self, model_name: str) -> str:
        """live | shadow for one model: its [models.<name>] mode, else inference.mode."""
        model = self.config.models.get(model_name)
        return (model.mode if model is not None else "") or self.config.inference.mode

    def _on_file(self, item) -> None:
        self.metrics.files_seen.inc()
        # "decode": from the scanner's last write to the file decoded and claimed (stable wait included)
        self.metrics.observe("decode", max(0.0, item.complete_at - (item.written_at or item.received_at)))
        self.pipeline.submit(item)

    def _on_rejected(self, path, reason: str) -> None:
        self.metrics.files_quarantined.inc()
        log.warning("quarantined %s: %s", path, reason)

    def _alarm(self, message: str) -> None:
        log.error("ALARM: %s", message)
        self.metrics.alerts.labels(state="rejected").inc()

    def _stats_loop(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self._update_stats()
            except Exception as exc:  # noqa: BLE001 - statistics never stop the agent
                log.debug("stats update failed: %s", exc)

    def _update_stats(self) -> None:
        self.heartbeats.beat("stats")
        outbox = self.publisher.stats()
        self.metrics.set_outbox(outbox.get("depth", 0), outbox.get("oldest_pending_age_s") or 0.0)
        self.metrics.set_queue("pipeline", self.pipeline.queue_depth())
        ingest = self.ingest.stats() if self.ingest else {}
        self.publisher.set_status_counters({
            "files": ingest, "open_series": self.pipeline.open_series(),
            "pipeline_queue": self.pipeline.queue_depth()})

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
