"""`edge-agent listen` as a real process, shared subscriptions, and the embedded broker."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading

from edge_agent.testing.alerts import fast_settings, make_alert
from edge_agent.testing.wait import wait_until
from edge_agent.alerts import AlertListener, AlertPublisher, EmbeddedBroker, MqttSettings, validate_payload

LISTEN = [sys.executable, "-c", "from edge_agent.cli import main; main()", "listen"]


def _run_listen(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([*LISTEN, *args], capture_output=True, text=True, timeout=timeout)


def test_listen_prints_json_lines_dedupes_and_sends_receipts(mosquitto, tmp_path):
    publisher = AlertPublisher(fast_settings(mosquitto.url, receipt_timeout=0.3), tmp_path / "outbox.db")
    publisher.start()
    try:
        ids = [publisher.raise_alert(make_alert(i)) for i in range(3)]
        # Without receipts the agent republishes: the listener sees duplicates and shows each alert once.
        first = _run_listen("--broker", mosquitto.url, "--json", "--no-receipts", "--timeout", "2.5",
                            "--consumer", "audit")
        assert first.returncode == 0, first.stderr
        lines = [json.loads(line) for line in first.stdout.splitlines()]
        assert sorted(p["alert_id"] for p in lines) == sorted(ids)
        for payload in lines:
            validate_payload("alert", payload)
        assert "duplicates" in first.stderr and " 0 duplicates" not in first.stderr
        assert publisher.stats()["depth"] == 3
        second = _run_listen("--broker", mosquitto.url, "--json", "--count", "3", "--timeout", "20",
                             "--store", str(tmp_path / "pager.db"), "--consumer", "pager")
        assert second.returncode == 0, second.stderr
        assert len(second.stdout.splitlines()) == 3
        assert publisher.wait_idle(10)
    finally:
        publisher.stop()


def test_listen_readable_output_shows_the_finding_and_the_disclaimer(mosquitto, tmp_path):
    publisher = AlertPublisher(fast_settings(mosquitto.url), tmp_path / "outbox.db")
    publisher.start()
    try:
        alert_id = publisher.raise_alert(make_alert(5, probability=0.93))
        out = _run_listen("--broker", mosquitto.url, "--count", "1", "--timeout", "20", "--site", "site")
        assert out.returncode == 0, out.stderr
        assert "ALERT  ich p=0.93 POSITIVE [final r1]" in out.stdout and alert_id in out.stdout
        assert "synthetic phantoms" in out.stdout and "accession=ACC0001" in out.stdout
        assert "1 new, 0 updates" in out.stderr
    finally:
        publisher.stop()


def test_listen_unreachable_broker_is_one_sentence_and_nonzero():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = _run_listen("--broker", f"mqtt://127.0.0.1:{port}", "--timeout", "1")
    assert out.returncode != 0
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert "Cannot reach the MQTT broker" in out.stderr and out.stderr.strip().endswith(".")


def test_shared_subscription_group_splits_alerts_between_consumers(mosquitto, tmp_path):
    settings = fast_settings(mosquitto.url)
    seen: dict[str, list[str]] = {"a": [], "b": []}
    listeners = [AlertListener(settings, on_alert=lambda p, s, n=n: seen[n].append(p["alert_id"]),
                               store_path=tmp_path / f"{n}.db", group="pagers", consumer=n) for n in seen]
    for listener in listeners:
        listener.start()
    publisher = AlertPublisher(settings, tmp_path / "outbox.db")
    publisher.start()
    try:
        ids = [publisher.raise_alert(make_alert(i)) for i in range(10)]
        assert publisher.wait_idle(15)
        assert sorted(seen["a"] + seen["b"]) == sorted(ids)   # each alert went to one member of the group
        assert seen["a"] and seen["b"]
    finally:
        publisher.stop()
        for listener in listeners:
            listener.stop()


def test_embedded_broker_serves_the_publisher_via_mqtt_311_fallback(tmp_path):
    broker = EmbeddedBroker(port=0)
    broker.start()
    try:
        assert broker.url.startswith("mqtt://127.0.0.1:") and not broker.url.endswith(":0")
        assert any(t.name == "edge-agent-embedded-broker" for t in threading.enumerate())
        got = []
        settings = MqttSettings(url=broker.url, protocol="auto", receipt_timeout=2, heartbeat_interval=1)
        listener = AlertListener(settings, on_alert=lambda p, s: got.append(p["alert_id"]), consumer="demo")
        listener.start()
        publisher = AlertPublisher(settings, tmp_path / "outbox.db")
        publisher.start()
        try:
            alert_id = publisher.raise_alert(make_alert(1))
            assert publisher.wait_idle(20), publisher.stats()
            assert publisher.stats()["protocol"] == "3.1.1" and listener.protocol == "3.1.1"  # amqtt refuses 5
            assert wait_until(lambda: got == [alert_id], 5)
        finally:
            publisher.stop()
            listener.stop()
    finally:
        broker.stop()
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", int(broker.url.rsplit(":", 1)[1]))) != 0   # stopped = closed


def test_listen_takes_credentials_from_the_agent_config_file(broker_factory, tmp_path):
    broker = broker_factory(users={"agent": "agent-pw", "pager": "pager-pw"}).start()
    (tmp_path / "pager.pw").write_text("pager-pw\n")
    config = tmp_path / "listen.toml"
    config.write_text(f'[mqtt]\nbroker = "{broker.url}"\nusername = "pager"\n'
                      f'password_file = "{tmp_path / "pager.pw"}"\n')
    publisher = AlertPublisher(fast_settings(broker.url, username="agent", password="agent-pw"),
                               tmp_path / "outbox.db")
    publisher.start()
    try:
        alert_id = publisher.raise_alert(make_alert(3))
        out = _run_listen("--config", str(config), "--json", "--count", "1", "--timeout", "20")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["alert_id"] == alert_id
        assert publisher.wait_idle(10)
        config.write_text(f'[mqtt]\nbroker = "{broker.url}"\nusername = "pager"\n')   # no password
        refused = _run_listen("--config", str(config), "--timeout", "1")
        assert refused.returncode != 0 and "did not accept the connection" in refused.stderr
    finally:
        publisher.stop()
