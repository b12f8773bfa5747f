"""The publisher's MQTT connection: one paho client at a time, protocol fallback, status messages.

Used only by the publisher thread. paho's callbacks put ``(kind, client, ...)``
events on the publisher's queue and do nothing else (paho holds its own lock
while calling them). The retained status topic follows the availability
convention: a last will ``offline`` set before connecting, a birth ``online``
after every (re)connect, and an ``offline`` published by a clean shutdown
itself (a clean DISCONNECT does not trigger the will).
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time

import paho.mqtt.client as paho

from edge_agent.alerts import mqtt
from edge_agent.alerts.payloads import build_status, encode
from edge_agent.alerts.settings import MqttSettings

log = logging.getLogger(__name__)

#: How long to wait for a CONNACK before trying the next protocol version ('auto').
CONNACK_TIMEOUT_S = 3.0


class PublisherLink:
    """Connects in the background and retries forever; ``client`` is None until connect()."""

    def __init__(self, settings: MqttSettings, events: queue.SimpleQueue) -> None:
        self.settings = settings
        self._events = events
        self._protocols = mqtt.protocols_to_try(settings)
        self.protocol: str | None = None
        self.client: paho.Client | None = None
        self._connected = threading.Event()
        self._connack_wait_since: float | None = None
        self.status_mids: set[int] = set()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def owns(self, client) -> bool:
        """True if an event came from the current client (not one replaced by a fallback)."""
        return client is not None and client is self.client

    # ------------------------------------------------------------------ paho callbacks: enqueue only
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self._events.put(("connack", client, reason_code))

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._events.put(("disconnected", client, reason_code))

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        self._events.put(("puback", client, mid, reason_code))

    def _on_message(self, client, userdata, message) -> None:
        self._events.put(("receipt", client, message.payload))

    def _on_connect_fail(self, client, userdata) -> None:
        # paho calls this inside its ``except OSError``: hand the error over, so the warning can say why.
        self._events.put(("connect_failed", client, sys.exc_info()[1]))

    def _on_socket_open(self, client, userdata, sock) -> None:
        self._events.put(("socket_open", client))

    # ------------------------------------------------------------------ lifecycle (publisher thread)
    def connect(self) -> None:
        """Create the client for the current protocol, set the will, and connect asynchronously."""
        self.protocol = self._protocols[0]
        client_id = self.settings.client_id or f"edge-agent-{self.settings.site}-{self.settings.device}"
        client = mqtt.make_client(self.settings, client_id, self.protocol)
        will = build_status(site=self.settings.site, device=self.settings.device, state="offline",
                            reason="last_will")
        client.will_set(self.settings.topic("status"), encode(will), qos=1, retain=True)
        client.max_inflight_messages_set(self.settings.inflight_window + 10)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_connect_fail = self._on_connect_fail
        client.on_socket_open = self._on_socket_open
        self.client = client
        client.connect_async(**mqtt.connect_args(self.settings, self.protocol))
        client.loop_start()

    def close(self) -> None:
        """Disconnect (if connected) and stop paho's network thread."""
        client = self.client
        if client is None:
            return
        if self.connected:
            client.disconnect()
        client.loop_stop()
        self.client = None
        self._connected.clear()

    def on_socket_open(self) -> None:
        if not self.connected:
            self._connack_wait_since = time.monotonic()

    def on_connack(self, reason_code) -> str:
        """'connected', 'fallback' (retrying with the next protocol) or 'refused'."""
        self._connack_wait_since = None
        if not reason_code.is_failure:
            # at DEBUG: the publisher tells it on the operator's edge_agent.broker logger
            log.debug("connected to MQTT broker %s (MQTT %s)", self.settings.url, self.protocol)
            self._connected.set()
            self.status_mids.clear()
            self.client.subscribe(self.settings.topic("receipts"), qos=1)
            return "connected"
        if mqtt.is_protocol_refused(reason_code) and len(self._protocols) > 1:
            self._fall_back("refuses")
            return "fallback"
        return "refused"

    def on_disconnected(self, reason_code) -> bool:
        """True if an established connection was lost (the caller requeues in-flight rows)."""
        if not self.connected:
            return False
        log.warning("MQTT connection to %s lost (%s); alerts stay in the outbox until it is back",
                    self.settings.url, reason_code)
        self._connected.clear()
        self.status_mids.clear()
        return True

    def check_connack_timeout(self) -> bool:
        """amqtt never answers an MQTT 5 CONNECT carrying a will (it cannot parse it): fall back. True if so."""
        since = self._connack_wait_since
        if since is not None and len(self._protocols) > 1 and time.monotonic() - since > CONNACK_TIMEOUT_S:
            self._connack_wait_since = None
            self._fall_back("does not answer")
            return True
        return False

    def _fall_back(self, why: str) -> None:
        log.info("broker %s %s MQTT %s; falling back to MQTT %s", self.settings.url, why, self._protocols[0],
                 self._protocols[1])
        self._protocols = self._protocols[1:]
        self.close()
        self.connect()

    # ------------------------------------------------------------------ status topic
    def publish_status(self, payload: dict) -> int | None:
        """Publish a retained status payload; returns its mid (PUBACKs for it are not outbox rows)."""
        info = self.client.publish(self.settings.topic("status"), encode(payload), qos=1, retain=True,
                                   properties=mqtt.publish_properties(self.protocol))
        if info.rc == paho.MQTT_ERR_SUCCESS:
            self.status_mids.add(info.mid)
            return info.mid
        return None

    def publish_offline(self, events: queue.SimpleQueue, keep: list, timeout: float = 2.0) -> None:
        """Clean shutdown: retained ``offline``, waiting briefly for its PUBACK; other events go to ``keep``."""
        if not self.connected:
            return
        mid = self.publish_status(build_status(site=self.settings.site, device=self.settings.device,
                                               state="offline", reason="shutdown"))
        deadline = time.monotonic() + timeout
        while mid in self.status_mids and time.monotonic() < deadline:
            try:
                event = events.get(timeout=0.05)
            except queue.Empty:
                continue
            if event[0] == "puback" and event[2] == mid:
                self.status_mids.discard(mid)
            elif event[0] in ("put", "sync"):
                keep.append(event)
