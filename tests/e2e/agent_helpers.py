"""Helpers for the end-to-end tests: the agent as a real process, an MQTT collector."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.alerts import validate_payload

PHI = ("PHANTOM^", "PatientName", "PatientID", "PatientBirthDate", "PatientSex")


class AgentProcess:
    """``edge-agent run`` as a subprocess, its stderr kept in a file."""

    def __init__(self, root: Path, broker_url: str, *extra: str, settle: float = 1.5, env: dict | None = None):
        self.root = Path(root)
        self.watch = self.root / "incoming"
        self.state = self.root / "state"
        self.watch.mkdir(parents=True, exist_ok=True)
        self.args = [sys.executable, "-m", "edge_agent", "-v", "run", "--watch", str(self.watch),
                     "--state-dir", str(self.state), "--broker", broker_url, "--site", "e2e", "--device", "ct1",
                     "--settle", str(settle), *extra]
        self.env = dict(os.environ, EDGE_AGENT_INGEST_STABLE_SECONDS="0.2", EDGE_AGENT_INGEST_RETRY_TIMEOUT="2",
                        EDGE_AGENT_MQTT_RECEIPT_TIMEOUT="5", EDGE_AGENT_MQTT_HEARTBEAT_INTERVAL="2",
                        **(env or {}))
        self.proc: subprocess.Popen | None = None
        self.log = self.root / "agent.log"
        self.runs = 0

    def start(self) -> "AgentProcess":
        self.runs += 1
        fh = open(self.log, "a")
        self.proc = subprocess.Popen(self.args, stdout=fh, stderr=subprocess.STDOUT, env=self.env)
        fh.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if "edge-agent running" in self.log.read_text():
                if self.log.read_text().count("edge-agent running") >= self.runs:
                    return self
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited {self.proc.returncode}:\n{self.log.read_text()}")
            time.sleep(0.1)
        raise AssertionError(f"agent did not start:\n{self.log.read_text()}")

    def stop(self, timeout: float = 30) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"agent did not stop on SIGTERM:\n{self.log.read_text()}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log_text(self) -> str:
        return self.log.read_text()


class Collector:
    """Subscribes to everything under the agent's topics; validates each payload against the shipped schema."""

    KINDS = {"alerts": "alert", "results": "result", "status": "status", "previews": "preview"}

    def __init__(self, url: str, topic: str = "edge-agent/#"):
        host, port = url.split("://")[1].split(":")
        self.host, self.port, self.topic = host, int(port), topic
        self.messages: list[tuple[str, dict, bytes]] = []
        self.invalid: list[str] = []
        self._lock = threading.RLock()  # predicates call of() while wait() holds it
        self._new = threading.Condition(self._lock)
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5, client_id="e2e-collector")
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
        self.client.reconnect_delay_set(0.2, 1)
        self.client.connect_async(self.host, self.port)
        self.client.loop_start()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()

    def _on_message(self, client, userdata, msg) -> None:
        leaf = msg.topic.rsplit("/", 1)[-1]
        try:
            payload = json.loads(msg.payload) if msg.payload else {}
            if leaf in self.KINDS and payload:
                validate_payload(self.KINDS[leaf], payload)
        except Exception as exc:  # noqa: BLE001 - recorded and asserted on by the tests
            self.invalid.append(f"{msg.topic}: {exc}")
            payload = {}
        with self._new:
            self.messages.append((leaf, payload, msg.payload))
            self._new.notify_all()

    def of(self, leaf: str) -> list[dict]:
        with self._lock:
            return [p for l, p, _ in self.messages if l == leaf]

    def wait(self, predicate, timeout: float = 60.0):
        """Wait until ``predicate(self)`` is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        with self._new:
            while True:
                value = predicate(self)
                if value:
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"timed out; got {[(l, p.get('state') or p.get('result', {}).get('status')) for l, p, _ in self.messages]}")
                self._new.wait(min(remaining, 0.2))

    def results_for(self, series_uid: str) -> list[dict]:
        return [p["result"] for p in self.of("results") if p["result"]["series_instance_uid"] == series_uid]

    def alerts_for(self, series_uid: str) -> list[dict]:
        return [p for p in self.of("alerts") if p["study"]["series_instance_uid"] == series_uid]

    def raw(self) -> bytes:
        with self._lock:
            return b"\n".join(raw for _, _, raw in self.messages)
