"""Prometheus metrics, stage heartbeats and the ``/metrics`` + ``/healthz`` server.

- :class:`Metrics` holds every counter, gauge and histogram in its own
  ``CollectorRegistry`` (not the process-global one), so several agents or
  tests can live in one process.
- :class:`Heartbeats` records when each stage last went round its loop; a
  stage that stops beating is *stuck*.
- :class:`MetricsServer` serves both over HTTP from a named thread:
  ``/metrics`` in the Prometheus text exposition format
  (https://prometheus.io/docs/instrumenting/exposition_formats/) and
  ``/healthz``, 200 with each stage's age or 503 naming the stuck stages, for
  a load balancer, a container HEALTHCHECK or a human with curl.

prometheus_client is used only in this module.
"""

from __future__ import annotations

import errno
import json
import logging
import socket
import socketserver
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

from edge_agent.config import check_port, check_positive
from edge_agent.errors import EdgeAgentError

log = logging.getLogger(__name__)

NAMESPACE = "edge_agent"

#: Alert lifecycle states counted by ``alerts{state=...}``.
ALERT_STATES = ("raised_preliminary", "raised_final", "retracted", "confirmed", "rejected")
PREVIEW_OUTCOMES = ("published", "no_thumbnail", "failed")

#: Pipeline stages timed by ``stage_latency_seconds{stage=...}``.
STAGES = ("decode", "preprocess", "inference", "decision", "outbox", "end_to_end")

# From a 2 ms preprocessing step to a several-minute end-to-end series.
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                   30.0, 60.0, 120.0, 300.0, 600.0)


class Metrics:
    """The agent's Prometheus metrics, in a registry of their own.

    Names are prefixed ``edge_agent_``; counters get ``_total`` on exposition.
    Every label value of ``alerts`` and ``stage_latency_seconds`` is created
    up front so a scrape shows zeros instead of missing series.
    """

    def __init__(self, *, process_metrics: bool = True) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ns, reg = NAMESPACE, self.registry
        self.files_seen = Counter("files_seen", "DICOM files that reached the pipeline.", namespace=ns,
                                  registry=reg)
        self.files_quarantined = Counter("files_quarantined", "Files quarantined with a reason.", namespace=ns,
                                         registry=reg)
        self.series_analysed = Counter("series_analysed", "Series analysed by a model.", namespace=ns,
                                       registry=reg)
        self.series_rejected = Counter("series_rejected", "Series a model applies to but that failed its checks.",
                                       namespace=ns, registry=reg)
        self.series_skipped = Counter("series_skipped", "Series no model applies to.", namespace=ns, registry=reg)
        self.series_not_assessable = Counter("series_not_assessable", "Series outside the domain of the models "
                                             "that apply (cannot assess; no alert).", namespace=ns, registry=reg)
        self.alerts = Counter("alerts", "Alert lifecycle events, by state.", ["state"], namespace=ns, registry=reg)
        self.outbox_depth = Gauge("outbox_depth", "Alerts and results not yet delivered.", namespace=ns,
                                  registry=reg)
        self.outbox_oldest_pending_age_seconds = Gauge(
            "outbox_oldest_pending_age_seconds", "Age of the oldest undelivered outbox entry (0: empty).",
            namespace=ns, registry=reg)
        self.queue_depth = Gauge("queue_depth", "Items waiting in an internal queue.", ["queue"], namespace=ns,
                                 registry=reg)
        self.pacs_depth = Gauge("pacs_depth", "DICOM results (SR, KOS) not yet delivered, per destination.",
                                ["destination"], namespace=ns, registry=reg)
        self.pacs_dead = Gauge("pacs_dead", "DICOM results given up on (dead letters), per destination.",
                               ["destination"], namespace=ns, registry=reg)
        self.pacs_oldest_pending_age_seconds = Gauge(
            "pacs_oldest_pending_age_seconds", "Age of the oldest undelivered DICOM result per destination (0: none).",
            ["destination"], namespace=ns, registry=reg)
        self.pacs_stores = Counter("pacs_stores", "C-STORE outcomes per destination: done, retry, dead.",
                                   ["destination", "outcome"], namespace=ns, registry=reg)
        self.previews = Counter("previews", "Key-image previews of alert revisions: published, no_thumbnail (its key "
                                "slices' pixels were not kept), failed (could not be made).", ["outcome"],
                                namespace=ns, registry=reg)
        self.stage_latency_seconds = Histogram(
            "stage_latency_seconds", "Time spent per pipeline stage.", ["stage"], namespace=ns, registry=reg,
            buckets=LATENCY_BUCKETS)
        self.stage_heartbeat_age_seconds = Gauge(
            "stage_heartbeat_age_seconds", "Seconds since each stage last reported (updated on scrape).",
            ["stage"], namespace=ns, registry=reg)
        for state in ALERT_STATES:
            self.alerts.labels(state=state)
        for outcome in PREVIEW_OUTCOMES:
            self.previews.labels(outcome=outcome)
        for stage in STAGES:
            self.stage_latency_seconds.labels(stage=stage)
        if process_metrics:
            ProcessCollector(namespace=ns, registry=reg)

    def set_outbox(self, depth: int, oldest_age: float | None) -> None:
        """Outbox depth and the age (s) of its oldest pending entry (None/0 when empty)."""
        self.outbox_depth.set(max(0, int(depth)))
        self.outbox_oldest_pending_age_seconds.set(max(0.0, float(oldest_age or 0.0)))

    def observe(self, stage: str, seconds: float) -> None:
        """Record one latency sample for ``stage`` (one of :data:`STAGES`, others allowed)."""
        self.stage_latency_seconds.labels(stage=stage).observe(max(0.0, float(seconds)))

    def set_pacs(self, stats: dict) -> None:
        """Per destination: undelivered, dead and the oldest undelivered age (``PacsDelivery.stats()``)."""
        for destination, entry in stats.items():
            self.pacs_depth.labels(destination=destination).set(entry.get("pending", 0) + entry.get("sending", 0))
            self.pacs_dead.labels(destination=destination).set(entry.get("dead", 0))
            self.pacs_oldest_pending_age_seconds.labels(destination=destination).set(
                float(entry.get("oldest_pending_age_s") or 0.0))

    def set_queue(self, name: str, depth: int) -> None:
        """Current depth of the internal queue ``name``."""
        self.queue_depth.labels(queue=name).set(max(0, int(depth)))

    def render(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)


class Heartbeats:
    """When each stage last went round its loop (monotonic clock).

    Stages call :meth:`beat` from their loop; :meth:`expect` registers a
    stage at start-up so that one which never beats becomes stale too.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def beat(self, stage: str) -> None:
        """Record that ``stage`` is alive now."""
        now = self._clock()
        with self._lock:
            self._last[stage] = now

    def expect(self, *stages: str) -> None:
        """Start watching ``stages`` as of now (without overwriting a newer beat)."""
        now = self._clock()
        with self._lock:
            for stage in stages:
                self._last.setdefault(stage, now)

    def forget(self, stage: str) -> None:
        """Stop watching ``stage`` (it was stopped on purpose)."""
        with self._lock:
            self._last.pop(stage, None)

    def ages(self) -> dict[str, float]:
        """Seconds since each watched stage last beat."""
        now = self._clock()
        with self._lock:
            return {stage: max(0.0, now - t) for stage, t in sorted(self._last.items())}

    def stuck(self, stage: str, max_age: float) -> bool:
        """Whether ``stage`` is watched and has not beaten for more than ``max_age`` seconds."""
        age = self.ages().get(stage)
        return age is not None and age > max_age

    def stale(self, max_age: float) -> list[str]:
        """The stages whose last beat is older than ``max_age`` seconds, sorted."""
        return [stage for stage, age in self.ages().items() if age > max_age]


class MetricsServer:
    """``/metrics`` and ``/healthz`` over HTTP, served by the thread ``metrics-http``.

    ``port=0`` binds a free port (see :attr:`port`). ``/healthz`` answers 200
    ``{"status": "ok", "stages": {name: age_s}}`` or 503
    ``{"status": "stuck", "stuck": [names], ...}`` when any stage's last beat
    is older than ``max_stage_age`` seconds.
    """

    def __init__(self, metrics: Metrics, heartbeats: Heartbeats, *, host: str = "127.0.0.1", port: int = 9108,
                 max_stage_age: float = 60.0) -> None:
        check_port("port", int(port))  # the config's rules (edge_agent.config), for a server built in code
        check_positive("max_stage_age", float(max_stage_age))
        self.metrics = metrics
        self.heartbeats = heartbeats
        self.host = host
        self.max_stage_age = float(max_stage_age)
        self._requested_port = int(port)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The TCP port actually bound (useful with port 0)."""
        return int(self._server.server_address[1]) if self._server else self._requested_port

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:9108``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def health(self) -> tuple[int, dict]:
        """The ``/healthz`` answer: (HTTP status, JSON body)."""
        ages = self.heartbeats.ages()
        stuck = [stage for stage, age in ages.items() if age > self.max_stage_age]
        body = {"status": "stuck" if stuck else "ok", "max_stage_age_s": self.max_stage_age,
                "stages": {stage: round(age, 3) for stage, age in ages.items()}}
        if stuck:
            body["stuck"] = stuck
        return (503 if stuck else 200), body

    def scrape(self) -> bytes:
        """The ``/metrics`` answer, with heartbeat ages refreshed."""
        for stage, age in self.heartbeats.ages().items():
            self.metrics.stage_heartbeat_age_seconds.labels(stage=stage).set(age)
        return self.metrics.render()

    def start(self) -> None:
        """Bind and serve; a port in use or a bad address is one sentence."""
        if self._server is not None:
            return
        server_class = _ServerV6 if ":" in self.host else _Server
        try:
            server = server_class((self.host, self._requested_port), _handler_for(self))
        except OSError as exc:
            raise self._bind_error(exc) from None
        self._server = server
        self._thread = threading.Thread(target=self._serve, args=(server,), name="metrics-http", daemon=True)
        self._thread.start()
        log.info("metrics on %s/metrics, health on %s/healthz", self.url, self.url)

    def stop(self) -> None:
        """Stop serving and wait for the server thread (which closes the socket)."""
        server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()
        if thread is not None:
            thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> "MetricsServer":
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @staticmethod
    def _serve(server: ThreadingHTTPServer) -> None:
        try:
            server.serve_forever(poll_interval=0.2)
        finally:
            server.server_close()

    def _bind_error(self, exc: OSError) -> EdgeAgentError:
        where = f"{self.host}:{self._requested_port}"
        if exc.errno == errno.EADDRINUSE:
            return EdgeAgentError(f"The metrics port {where} is already in use; choose another metrics.port "
                                  "or stop the program using it.")
        if exc.errno in (errno.EACCES, errno.EPERM):
            return EdgeAgentError(f"Binding the metrics port {where} needs privileges; use a port above 1023.")
        if exc.errno == errno.EADDRNOTAVAIL or isinstance(exc, socket.gaierror):
            return EdgeAgentError(f"The metrics bind address {self.host!r} is not an address of this machine; "
                                  "use 127.0.0.1, 0.0.0.0 or one of its interface addresses.")
        return EdgeAgentError(f"Cannot serve metrics on {where} ({exc.strerror or exc}); "
                              "check metrics.bind and metrics.port.")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, which can stall for
        # seconds on a machine without DNS; the name is not needed here.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])


class _ServerV6(_Server):
    address_family = socket.AF_INET6


def _handler_for(owner: MetricsServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "edge-agent"

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self._answer(send_body=True)

        def do_HEAD(self) -> None:  # noqa: N802
            self._answer(send_body=False)

        def _answer(self, send_body: bool) -> None:
            path = self.path.split("?", 1)[0]
            try:
                if path == "/metrics":
                    status, ctype, body = 200, CONTENT_TYPE_LATEST, owner.scrape()
                elif path == "/healthz":
                    status, payload = owner.health()
                    ctype, body = "application/json", (json.dumps(payload) + "\n").encode()
                else:
                    status, ctype, body = 404, "text/plain; charset=utf-8", b"not found: try /metrics or /healthz\n"
            except Exception:  # noqa: BLE001 - a scrape error must not kill the server
                log.exception("metrics request %s failed", path)
                status, ctype, body = 500, "text/plain; charset=utf-8", b"internal error\n"
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if send_body:
                self.wfile.write(body)

        def log_message(self, format: str, *args) -> None:  # noqa: A002 - http.server's signature
            log.debug("%s %s", self.address_string(), format % args)

    return Handler
