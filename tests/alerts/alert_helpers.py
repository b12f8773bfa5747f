"""Shared helpers for the alert tests: payload makers, fast settings, a raw MQTT recorder."""

from __future__ import annotations

import json
import queue
import threading
import time

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.alerts import MqttSettings, build_alert, utc_now, validate_payload

SERIES = {"study_instance_uid": "1.2.826.0.1.3680043.8.498.1", "series_instance_uid": "1.2.826.0.1.3680043.8.498.2",
          "accession_number": "ACC0001", "modality": "CT", "body_part": "HEAD",
          "series_description": "HEAD 5mm STND"}
MODEL = {"name": "ich", "version": "1.0.0", "synthetic_training": True}


def make_alert(index: int = 0, *, revision: int = 1, state: str = "final", probability: float = 0.91,
               site: str = "site", device: str = "device") -> dict:
    """A valid alert for series number ``index`` (so each index has its own alert_id)."""
    series = dict(SERIES, series_instance_uid=f"{SERIES['series_instance_uid']}.{index}")
    finding = {"code": "ich", "label": "Intracranial haemorrhage", "probability": probability, "positive": True,
               "severity": "critical",
               "key_slices": [{"sop_instance_uid": f"{series['series_instance_uid']}.7", "position_mm": 42.5,
                               "probability": probability}]}
    return build_alert(site=site, device=device, series=series, model=MODEL, finding=finding, state=state,
                       revision=revision, timestamps={"first_slice_received": utc_now(), "raised": utc_now()})


def fast_settings(url: str, **overrides) -> MqttSettings:
    """Settings with short timers so tests finish quickly."""
    values = dict(url=url, receipt_timeout=1.0, heartbeat_interval=0.5, retry_max_delay=2.0,
                  reconnect_min_delay=1, reconnect_max_delay=1)
    values.update(overrides)
    return MqttSettings(**values)


class Recorder:
    """A raw paho MQTT 5 subscriber that keeps every message and validates it against the shipped schemas."""

    KINDS = {"alerts": "alert", "results": "result", "status": "status", "receipts": "receipt", "previews": "preview"}

    def __init__(self, url: str, topic: str = "#", **tls) -> None:
        host, port = url.split("://")[1].split(":")
        self.messages: queue.Queue = queue.Queue()
        self.all: list = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        if tls:
            self.client.tls_set(**tls)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
        self.client.connect(host, int(port))
        self.client.loop_start()
        if not subscribed.wait(10):
            raise RuntimeError("recorder could not subscribe")

    def _on_message(self, client, userdata, msg) -> None:
        leaf = msg.topic.rsplit("/", 1)[-1]
        try:
            payload = json.loads(msg.payload) if msg.payload else None
            if payload is not None and leaf in self.KINDS:
                validate_payload(self.KINDS[leaf], payload)   # every published message matches its schema
        except Exception as exc:  # noqa: BLE001 - reported by wait_for() and close(), not lost in paho's thread
            self.errors.append(f"{msg.topic}: {exc}")
            return
        entry = (msg.topic, payload, msg)
        with self._lock:
            self.all.append(entry)
        self.messages.put(entry)

    def wait_for(self, predicate, timeout: float = 15.0):
        """The first new message satisfying ``predicate(topic, payload)``, or AssertionError."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert not self.errors, self.errors
            try:
                topic, payload, msg = self.messages.get(timeout=0.1)
            except queue.Empty:
                continue
            if predicate(topic, payload):
                return topic, payload, msg
        raise AssertionError("expected message did not arrive")

    def payloads(self, leaf: str) -> list:
        with self._lock:
            return [p for t, p, _ in self.all if t.endswith("/" + leaf)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        assert not self.errors, f"messages that do not match their schema: {self.errors}"


def wait_until(predicate, timeout: float = 15.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
