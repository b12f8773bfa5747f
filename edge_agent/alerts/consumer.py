"""AlertListener: the reference consumer behind ``edge-agent listen``.

It subscribes to ``{prefix}/{site}/{device}/alerts`` (optionally as a shared
subscription ``$share/<group>/...``, MQTT 5 4.8.2), deduplicates on
``(alert_id, revision)`` in its own small SQLite store, hands each new alert or
update to a callback, and then sends a receipt on ``.../receipts`` so the agent
stops republishing. Delivery is at-least-once; the store makes it
exactly-once in effect. With a store the MQTT session is persistent (stable
client id, clean start off), so the broker queues alerts while the listener is
away. paho callbacks only enqueue; the ``edge-agent-listener`` thread does the
work. docs/ALERTS.md ("Writing a consumer") explains the same steps for other
languages.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import socket
import sqlite3
import threading
import time
from pathlib import Path
from typing import Callable

import paho.mqtt.client as paho

from edge_agent.alerts import mqtt
from edge_agent.alerts.payloads import build_receipt, encode, validate_payload
from edge_agent.alerts.settings import MqttSettings
from edge_agent.errors import EdgeAgentError

log = logging.getLogger(__name__)

_FORGET_AFTER_S = 90 * 24 * 3600


class BrokerUnreachable(EdgeAgentError):
    """The broker cannot be reached or refused the connection."""


class DedupeStore:
    """Which (alert_id, revision) pairs this consumer has handled; used by the listener thread only."""

    def __init__(self, path: Path | None) -> None:
        target = ":memory:" if path is None else str(path)
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(target, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("CREATE TABLE IF NOT EXISTS seen (alert_id TEXT NOT NULL, revision INTEGER NOT NULL,"
                           " first_seen REAL NOT NULL, deliveries INTEGER NOT NULL DEFAULT 1,"
                           " PRIMARY KEY (alert_id, revision))")
        # Keep the store small: an alert not seen for this long is not going to be republished any more.
        self._conn.execute("DELETE FROM seen WHERE first_seen < ?", (time.time() - _FORGET_AFTER_S,))

    def classify(self, alert_id: str, revision: int) -> str:
        """'new', 'update' (a higher revision of a known alert), 'duplicate' or 'stale' (older than one seen)."""
        if self._conn.execute("SELECT 1 FROM seen WHERE alert_id=? AND revision=?",
                              (alert_id, revision)).fetchone():
            return "duplicate"
        highest = self._conn.execute("SELECT max(revision) FROM seen WHERE alert_id=?", (alert_id,)).fetchone()[0]
        if highest is None:
            return "new"
        return "update" if revision > highest else "stale"

    def record(self, alert_id: str, revision: int) -> None:
        self._conn.execute("INSERT INTO seen (alert_id, revision, first_seen) VALUES (?,?,?) ON CONFLICT"
                           " (alert_id, revision) DO UPDATE SET deliveries = deliveries + 1",
                           (alert_id, revision, time.time()))

    def duplicates(self) -> int:
        """Deliveries beyond the first, over the whole store."""
        return self._conn.execute("SELECT coalesce(sum(deliveries - 1), 0) FROM seen").fetchone()[0]

    def close(self) -> None:
        self._conn.close()


def default_consumer_name(store_path: Path | None, group: str | None) -> str:
    """Stable per host and store (so a restarted listener resumes its session), else unique per process."""
    import os

    host = socket.gethostname().split(".")[0] or "host"
    if store_path is None:
        return f"{host}-{os.getpid()}"
    digest = hashlib.sha1(str(Path(store_path).resolve()).encode()).hexdigest()[:8]
    return f"{host}-{group + '-' if group else ''}{digest}"


class AlertListener:
    """Subscribe, deduplicate, call ``on_alert(payload, status)`` for 'new' and 'update', send receipts."""

    def __init__(self, settings: MqttSettings, on_alert: Callable[[dict, str], None],
                 store_path: Path | None = None, send_receipts: bool = True, *, site: str = "+",
                 device: str = "+", group: str | None = None, consumer: str | None = None,
                 connect_timeout: float = 10.0, on_preview: Callable[[dict], None] | None = None) -> None:
        self.settings = settings
        self.on_alert = on_alert
        self.store_path = None if store_path is None else Path(store_path)
        self.send_receipts = send_receipts
        self.group = group
        self.consumer = consumer or default_consumer_name(self.store_path, group)
        self.connect_timeout = connect_timeout
        topic = f"{settings.prefix}/{site}/{device}/alerts"
        self.subscription = f"$share/{group}/{topic}" if group else topic
        # Key-image previews (edge-agent/preview/1) on .../previews, only when asked for: at QoS 1 in the same
        # (persistent) session; no receipts (the agent delivers them in broker mode).
        self.on_preview = on_preview
        previews = f"{settings.prefix}/{site}/{device}/previews"
        self.preview_subscription = (f"$share/{group}/{previews}" if group else previews) if on_preview else None
        self.counts = {"received": 0, "new": 0, "update": 0, "duplicate": 0, "stale": 0, "invalid": 0,
                       "receipts": 0, "previews": 0}
        self.protocol: str | None = None
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: paho.Client | None = None
        self._store: DedupeStore | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Connect (raising BrokerUnreachable with one sentence if that fails), subscribe, start the thread."""
        if self._thread is not None:
            return
        self._store = DedupeStore(self.store_path)
        try:
            self._client = self._connect()
        except BaseException:
            self._store.close()
            raise
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="edge-agent-listener", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the listener thread, which disconnects and closes its store."""
        if self._thread is None:
            return
        self._stop.set()
        self._events.put(("wake",))
        self._thread.join()
        self._thread = None

    def duplicates(self) -> int:
        return self.counts["duplicate"]

    # ------------------------------------------------------------------ connecting (caller thread)
    def _connect(self) -> paho.Client:
        url = self.settings.url
        persistent = self.store_path is not None
        protocols = mqtt.protocols_to_try(self.settings)
        for protocol in protocols:
            client = mqtt.make_client(self.settings, f"edge-agent-listen-{self.consumer}", protocol,
                                      persistent=persistent)
            client.on_connect = lambda c, u, f, rc, p: self._events.put(("connack", c, rc))
            client.on_disconnect = lambda c, u, f, rc, p: self._events.put(("disconnected", c, rc))
            client.on_message = lambda c, u, m: self._events.put(("message", c, m))
            try:
                client.connect(**mqtt.connect_args(self.settings, protocol, persistent=persistent))
            except OSError as exc:
                raise BrokerUnreachable(f"Cannot reach the MQTT broker at {url} ({exc.strerror or exc}); check "
                                        "--broker, that the broker is running and the TLS settings.") from exc
            client.loop_start()
            # amqtt never answers an MQTT 5 CONNECT with properties: don't wait long before trying 3.1.1.
            last = protocol == protocols[-1]
            answer, reason = self._wait_connack(client, self.connect_timeout if last else
                                                min(self.connect_timeout, 3.0))
            if answer == "connack" and not reason.is_failure:
                self.protocol = protocol
                self._subscribe(client)
                return client
            client.disconnect()
            client.loop_stop()
            if not last and (answer != "connack" or mqtt.is_protocol_refused(reason)):
                continue
            why = "no answer" if reason is None else mqtt.reason_text(reason)
            raise BrokerUnreachable(f"The MQTT broker at {url} did not accept the connection ({why}); check the "
                                    "credentials, the client certificate and the ACL.")
        raise BrokerUnreachable(f"The MQTT broker at {url} refuses every MQTT version this client speaks "
                                f"({', '.join(mqtt.protocols_to_try(self.settings))}); use MQTT 5 or 3.1.1.")

    def _wait_connack(self, client: paho.Client, timeout: float):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                event = self._events.get(timeout=0.1)
            except queue.Empty:
                continue
            if event[0] in ("connack", "disconnected") and event[1] is client:
                return event[0], event[2]
        return None, None

    def _subscribe(self, client: paho.Client) -> None:
        if self.preview_subscription is None:
            client.subscribe(self.subscription, qos=1)
        else:
            client.subscribe([(self.subscription, 1), (self.preview_subscription, 1)])

    # ------------------------------------------------------------------ the listener thread
    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    event = self._events.get(timeout=0.5)
                except queue.Empty:
                    continue
                try:
                    self._handle(event)
                except Exception:  # noqa: BLE001 - one bad message must not stop the listener
                    log.exception("listener: failed to handle a message; it will be redelivered")
        finally:
            self._client.disconnect()
            self._client.loop_stop()
            self._store.close()

    def _handle(self, event: tuple) -> None:
        kind = event[0]
        if kind == "connack":
            if event[1] is self._client and not event[2].is_failure:
                log.info("listener: (re)connected to %s", self.settings.url)
                self._subscribe(self._client)
        elif kind == "disconnected":
            if event[1] is self._client and not self._stop.is_set():
                log.warning("listener: connection to %s lost (%s); reconnecting", self.settings.url, event[2])
        elif kind == "message":
            self._handle_message(event[2])

    def _handle_message(self, message) -> None:
        if self.on_preview is not None and message.topic.endswith("/previews"):
            self._handle_preview(message)
            return
        self.counts["received"] += 1
        try:
            payload = json.loads(message.payload)
            validate_payload("alert", payload, strict=False)
        except (ValueError, EdgeAgentError) as exc:
            self.counts["invalid"] += 1
            log.warning("listener: ignoring an invalid alert on %s: %s", message.topic, exc)
            return
        alert_id, revision = payload["alert_id"], int(payload["revision"])
        status = self._store.classify(alert_id, revision)
        self.counts[status] += 1
        if status in ("new", "update"):
            self.on_alert(payload, status)   # the integrator's work happens before the receipt
        self._store.record(alert_id, revision)
        if self.send_receipts:
            self._send_receipt(message.topic, alert_id, revision)

    def _handle_preview(self, message) -> None:
        try:
            payload = json.loads(message.payload)
            validate_payload("preview", payload, strict=False)
        except (ValueError, EdgeAgentError) as exc:
            self.counts["invalid"] += 1
            log.warning("listener: ignoring an invalid preview on %s: %s", message.topic, exc)
            return
        self.counts["previews"] += 1
        self.on_preview(payload)

    def _send_receipt(self, alert_topic: str, alert_id: str, revision: int) -> None:
        receipt_topic = alert_topic.rsplit("/", 1)[0] + "/receipts"
        receipt = build_receipt(alert_id=alert_id, revision=revision, consumer=self.consumer)
        self._client.publish(receipt_topic, encode(receipt), qos=1,
                             properties=mqtt.publish_properties(self.protocol, [("alert_id", alert_id)]))
        self.counts["receipts"] += 1
