"""MQTT clients for tests and benchmarks: one recorder of everything published, and a consumer that sends receipts.

* :class:`Recorder`: a raw paho MQTT 5 subscriber that keeps every message (arrival time, topic, payload,
  raw bytes) and checks each payload against the shipped JSON Schemas. Wait on it for a new message
  (:meth:`Recorder.wait_for`) or for a condition over everything so far (:meth:`Recorder.wait`).
* :class:`Consumer`: a consumer as docs/ALERTS.md "Writing a consumer" describes one (persistent session,
  QoS 1, optionally in a ``$share`` group) that records every delivery, counts duplicates and sends receipts —
  at once, or late (a slow consumer).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.testing.net import host_port

#: Topic leaf → the payload schema every message there must match.
KINDS = {"alerts": "alert", "results": "result", "status": "status", "receipts": "receipt", "previews": "preview"}


@dataclass
class Message:
    at: float            # time.time() on arrival
    topic: str
    leaf: str            # the topic's last level
    payload: object      # parsed JSON; None for an empty payload, {} when it did not parse or validate
    raw: bytes
    msg: object          # paho's MQTTMessage (retain flag, properties)
    valid: bool


class Recorder:
    """Subscribes to ``topic`` (one filter or several) at QoS 1 and keeps every message.

    ``validate``: check each payload under ``alerts``/``results``/``status``/``receipts``/``previews``
    against the shipped schema; a mismatch is kept in :attr:`errors`, fails :meth:`wait_for` and, with
    ``close(check=True)``, the test. ``keep_status=False``: status messages only update :attr:`status`
    (a long benchmark does not keep one per second). The constructor returns once the broker has
    acknowledged the subscription (``wait_subscribed``); it reconnects and resubscribes on its own.
    """

    KINDS = KINDS

    def __init__(self, url: str, topic: str | tuple[str, ...] = "#", *, client_id: str = "", validate: bool = True,
                 keep_status: bool = True, wait_subscribed: bool = True, **tls) -> None:
        self.host, self.port = host_port(url)
        self.topics = (topic,) if isinstance(topic, str) else tuple(topic)
        self.validate, self.keep_status = validate, keep_status
        self.entries: list[Message] = []
        self.errors: list[str] = []
        self.status: dict = {}
        self.lock = threading.RLock()            # predicates call of() while wait() holds it
        self._new = threading.Condition(self.lock)
        self._cursor = 0                         # wait_for() has looked at entries[:_cursor]
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5, client_id=client_id)
        if tls:
            self.client.tls_set(**tls)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_connect = lambda c, *a: c.subscribe([(t, 1) for t in self.topics])
        self.client.reconnect_delay_set(0.2, 1)
        self.client.connect_async(self.host, self.port)
        self.client.loop_start()
        if wait_subscribed and not subscribed.wait(10):
            self.client.loop_stop()
            raise RuntimeError(f"recorder could not subscribe to {self.topics} on {url}")

    @property
    def invalid(self) -> list[str]:
        return self.errors

    def _on_message(self, client, userdata, msg) -> None:
        now = time.time()
        leaf = msg.topic.rsplit("/", 1)[-1]
        valid = True
        try:
            payload = json.loads(msg.payload) if msg.payload else None
            if self.validate and payload is not None and leaf in KINDS:
                from edge_agent.alerts import validate_payload

                validate_payload(KINDS[leaf], payload)   # every published message matches its schema
        except Exception as exc:  # noqa: BLE001 - reported by wait_for() and close(), not lost in paho's thread
            self.errors.append(f"{msg.topic}: {exc}")
            payload, valid = {}, False
        with self._new:
            if leaf == "status" and isinstance(payload, dict):
                self.status = payload
                if not self.keep_status:
                    return
            self.entries.append(Message(now, msg.topic, leaf, payload, msg.payload, msg, valid))
            self._new.notify_all()

    # --- what arrived -----------------------------------------------------------------------------
    @property
    def all(self) -> list[tuple[str, object, object]]:
        """(topic, payload, paho message) of every valid message, in order of arrival."""
        with self.lock:
            return [(m.topic, m.payload, m.msg) for m in self.entries if m.valid]

    def payloads(self, leaf: str) -> list:
        """Payloads of the valid messages whose topic ends in ``/leaf`` (None for an empty one)."""
        with self.lock:
            return [m.payload for m in self.entries if m.valid and m.topic.endswith("/" + leaf)]

    def of(self, leaf: str) -> list[dict]:
        """Payloads of every message whose last topic level is ``leaf`` ({} for an empty or invalid one)."""
        with self.lock:
            return [m.payload or {} for m in self.entries if m.leaf == leaf]

    def timed(self, leaf: str) -> list[tuple[float, dict]]:
        """(arrival time, payload) of every message under ``edge-agent/`` whose topic ends in ``/leaf``."""
        with self.lock:
            return [(m.at, m.payload or {}) for m in self.entries
                    if m.topic.startswith("edge-agent/") and m.topic.endswith("/" + leaf)]

    def first(self, leaf: str, series_uid: str) -> tuple[float, dict] | None:
        """(arrival time, payload) of the first ``leaf`` message about ``series_uid``, or None."""
        for t, p in self.timed(leaf):
            uid = p.get("study", {}).get("series_instance_uid") or p.get("result", {}).get("series_instance_uid") \
                or p.get("series_instance_uid")
            if uid == series_uid:
                return t, p
        return None

    def results_for(self, series_uid: str) -> list[dict]:
        return [p["result"] for p in self.of("results") if p["result"]["series_instance_uid"] == series_uid]

    def result_for(self, series_uid: str) -> dict | None:
        """The last result published for ``series_uid`` (a reopened series is decided again: the last counts)."""
        found = self.results_for(series_uid)
        return found[-1] if found else None

    def alerts_for(self, series_uid: str) -> list[dict]:
        return [p for p in self.of("alerts") if p["study"]["series_instance_uid"] == series_uid]

    def raw(self) -> bytes:
        with self.lock:
            return b"\n".join(m.raw for m in self.entries)

    # --- waiting ----------------------------------------------------------------------------------
    def wait_for(self, predicate, timeout: float = 15.0):
        """The first message not yet looked at satisfying ``predicate(topic, payload)``: (topic, payload, msg).

        An AssertionError when none arrives in time, or at once when a payload did not match its schema.
        """
        deadline = time.monotonic() + timeout
        with self._new:
            while True:
                assert not self.errors, self.errors
                while self._cursor < len(self.entries):
                    m = self.entries[self._cursor]
                    self._cursor += 1
                    if m.valid and predicate(m.topic, m.payload):
                        return m.topic, m.payload, m.msg
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError("expected message did not arrive")
                self._new.wait(min(remaining, 0.1))

    def wait(self, predicate, timeout: float = 60.0):
        """Wait until ``predicate(self)`` is truthy; returns its value (an AssertionError after ``timeout``)."""
        deadline = time.monotonic() + timeout
        with self._new:
            while True:
                value = predicate(self)
                if value:
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    got = [(m.leaf, (m.payload or {}).get("state") or (m.payload or {}).get("result", {}).get("status"))
                           for m in self.entries if isinstance(m.payload, dict) or m.payload is None]
                    raise AssertionError(f"timed out; got {got}")
                self._new.wait(min(remaining, 0.2))

    def close(self, check: bool = True) -> None:
        """Disconnect; with ``check``, an AssertionError if any message did not match its schema."""
        self.client.disconnect()
        self.client.loop_stop()
        if check:
            assert not self.errors, f"messages that do not match their schema: {self.errors}"


@dataclass
class Delivery:
    at: float
    topic: str
    alert_id: str
    revision: int
    state: str
    series_uid: str
    duplicate: bool


class Consumer:
    """A consumer as docs/ALERTS.md "Writing a consumer" describes: persistent session, QoS 1, receipts.

    ``group``: subscribe as ``$share/<group>/...``. Every delivery is recorded (``deliveries``); a repeat
    of an ``(alert_id, revision)`` already seen is a duplicate. Receipts go to the alert's topic with
    ``alerts`` → ``receipts``. Slow consumer: ``receipt_delay`` seconds before each receipt is sent (the
    agent republishes when it exceeds ``receipt_timeout``) and ``handle_delay`` seconds spent in each
    message callback (paho sends the PUBACK only after it returns, so the broker's in-flight window to
    this client fills). Both can be changed while it runs.
    """

    def __init__(self, url: str, name: str, *, topic: str = "edge-agent/+/+/alerts", group: str | None = None,
                 receipts: bool = True):
        self.name, self.group, self.receipts = name, group, receipts
        self.subscription = f"$share/{group}/{topic}" if group else topic
        self.receipt_delay = 0.0
        self.handle_delay = 0.0
        self.lock = threading.Lock()
        self.deliveries: list[Delivery] = []
        self.seen: dict[tuple[str, int], int] = {}
        self.receipts_sent = 0
        self.connects = 0
        self._due: list[tuple[float, str, bytes]] = []
        self._wake = threading.Condition(self.lock)
        self._closing = False
        host, port = host_port(url)
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"harness-{name}", protocol=paho.MQTTv5)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.2, 1)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.connect_async(host, port, clean_start=False, properties=props)
        self.client.loop_start()
        self._sender = threading.Thread(target=self._send_loop, name=f"receipts-{name}", daemon=True)
        self._sender.start()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connects += 1
        client.subscribe(self.subscription, qos=1)

    def _on_message(self, client, userdata, msg) -> None:
        try:
            p = json.loads(msg.payload)
            key = (p["alert_id"], int(p["revision"]))
        except (ValueError, KeyError, TypeError):
            return
        if self.handle_delay:
            time.sleep(self.handle_delay)
        with self.lock:
            n = self.seen.get(key, 0)
            self.seen[key] = n + 1
            self.deliveries.append(Delivery(time.time(), msg.topic, key[0], key[1], p.get("state", "?"),
                                            p.get("study", {}).get("series_instance_uid", ""), n > 0))
            if self.receipts:
                self._due.append((time.monotonic() + self.receipt_delay, *self._receipt(msg.topic, *key)))
                self._wake.notify_all()

    def _receipt(self, alert_topic: str, alert_id: str, revision: int) -> tuple[str, bytes]:
        """(topic, payload) of the receipt for one alert revision: docs/ALERTS.md, edge-agent/receipt/1."""
        receipt = {"schema": "edge-agent/receipt/1", "alert_id": alert_id, "revision": revision,
                   "consumer": self.name, "received_at": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())}
        return alert_topic.rsplit("/", 1)[0] + "/receipts", json.dumps(receipt).encode()

    def _send_loop(self) -> None:
        with self.lock:
            while not self._closing:
                now = time.monotonic()
                ready = [d for d in self._due if d[0] <= now]
                self._due = [d for d in self._due if d[0] > now]
                for _, topic, payload in ready:
                    self.client.publish(topic, payload, qos=1)
                    self.receipts_sent += 1
                wait = min((d[0] for d in self._due), default=now + 0.5) - now
                self._wake.wait(max(0.01, min(wait, 0.5)))

    # --- what it got ----------------------------------------------------------------------------
    def keys(self) -> set[tuple[str, int]]:
        with self.lock:
            return set(self.seen)

    def ids(self) -> set[str]:
        with self.lock:
            return {k[0] for k in self.seen}

    def duplicates(self) -> int:
        with self.lock:
            return sum(n - 1 for n in self.seen.values())

    def latest(self) -> dict[str, Delivery]:
        """alert_id → the delivery of its highest revision."""
        out: dict[str, Delivery] = {}
        with self.lock:
            for d in self.deliveries:
                if d.alert_id not in out or d.revision > out[d.alert_id].revision:
                    out[d.alert_id] = d
        return out

    def resend_receipts(self) -> int:
        """Send a receipt for every (alert_id, revision) received so far (a consumer catching up)."""
        with self.lock:
            topics = {(d.alert_id, d.revision): d.topic for d in self.deliveries}
            for (alert_id, revision), topic in topics.items():
                self._due.append((time.monotonic(), *self._receipt(topic, alert_id, revision)))
            self._wake.notify_all()
            return len(topics)

    def pending_receipts(self) -> int:
        with self.lock:
            return len(self._due)

    def close(self) -> None:
        with self.lock:
            self._closing = True
            self._wake.notify_all()
        self._sender.join(5)
        self.client.loop_stop()
        self.client.disconnect()
