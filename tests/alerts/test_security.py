"""TLS, mutual TLS, passwords and ACLs against a real Mosquitto."""

from __future__ import annotations

import logging

import pytest

from edge_agent.testing.alerts import fast_settings, make_alert
from edge_agent.testing.wait import wait_until
from edge_agent.alerts import AlertListener, AlertPublisher, BrokerUnreachable
from edge_agent.alerts.mqtt import make_client

ACL = """\
user agent
topic write edge-agent/site/device/status
topic read edge-agent/site/device/receipts

user pager
topic read edge-agent/+/+/alerts
topic write edge-agent/+/+/receipts
"""


def _deliver_one(settings, tmp_path, listener_settings=None) -> None:
    got = []
    listener = AlertListener(listener_settings or settings, on_alert=lambda p, s: got.append(p["alert_id"]),
                             store_path=tmp_path / "pager.db", consumer="pager")
    listener.start()
    publisher = AlertPublisher(settings, tmp_path / "outbox.db")
    publisher.start()
    try:
        alert_id = publisher.raise_alert(make_alert(1))
        assert publisher.wait_idle(15), publisher.stats()
        assert got == [alert_id]
    finally:
        publisher.stop()
        listener.stop()


def test_tls_verifies_the_broker_certificate(broker_factory, pki, tmp_path):
    broker = broker_factory(tls="tls", pki=pki).start()
    assert broker.url.startswith("mqtts://")
    _deliver_one(fast_settings(broker.url, ca_file=str(pki.ca_cert)), tmp_path)
    # A CA that did not sign the broker's certificate: refused, with one sentence, never silently accepted.
    with pytest.raises(BrokerUnreachable, match="certificate verify failed"):
        AlertListener(fast_settings(broker.url, ca_file=str(pki.other_ca_cert)), on_alert=print,
                      consumer="x").start()
    publisher = AlertPublisher(fast_settings(broker.url, ca_file=str(pki.other_ca_cert)), tmp_path / "o2.db")
    publisher.start()
    try:
        publisher.raise_alert(make_alert(2))
        assert not wait_until(lambda: publisher.stats()["connected"], 1.5)
        assert publisher.stats()["depth"] == 1   # kept, not lost, until the trust problem is fixed
    finally:
        publisher.stop()


def test_mutual_tls_needs_the_client_certificate(broker_factory, pki, tmp_path):
    broker = broker_factory(tls="mtls", pki=pki).start()
    settings = fast_settings(broker.url, ca_file=str(pki.ca_cert), cert_file=str(pki.client_cert),
                             key_file=str(pki.client_key))
    _deliver_one(settings, tmp_path)
    with pytest.raises(BrokerUnreachable):
        AlertListener(fast_settings(broker.url, ca_file=str(pki.ca_cert)), on_alert=print, consumer="x",
                      connect_timeout=3).start()


def test_tls_insecure_is_only_explicit_and_logged_loudly(pki, caplog):
    base = dict(url="mqtts://127.0.0.1:8883", ca_file=str(pki.ca_cert))
    with caplog.at_level(logging.WARNING, logger="edge_agent"):
        make_client(fast_settings(**base), "c", "5")
        assert not caplog.records
        make_client(fast_settings(**base, tls_insecure=True), "c", "5")
    assert any("verification is OFF" in r.getMessage() for r in caplog.records)


def test_password_and_acl_denied_publish_is_rejected_and_alarmed(broker_factory, tmp_path, monkeypatch):
    broker = broker_factory(users={"agent": "agent-pw", "pager": "pager-pw"}, acl=ACL).start()
    monkeypatch.setenv("EDGE_AGENT_MQTT_USERNAME", "agent")
    monkeypatch.setenv("EDGE_AGENT_MQTT_PASSWORD", "agent-pw")
    from edge_agent.alerts import MqttSettings

    settings = MqttSettings.from_env(url=broker.url, receipt_timeout=1.0, heartbeat_interval=0.5,
                                     reconnect_min_delay=1, reconnect_max_delay=1)
    alarms: list[str] = []
    publisher = AlertPublisher(settings, tmp_path / "outbox.db", on_alarm=alarms.append)
    publisher.start()
    try:
        publisher.raise_alert(make_alert(1))   # the ACL does not let "agent" write .../alerts
        assert wait_until(lambda: publisher.stats()["by_state"]["rejected"] == 1, 10), publisher.stats()
        assert alarms and "Not authorized" in alarms[0] and "ACL" in alarms[0]
        assert publisher.stats()["depth"] == 0 and publisher.stats()["alarms"] == alarms
    finally:
        publisher.stop()


def test_wrong_password_is_alarmed_and_alerts_wait(broker_factory, tmp_path):
    broker = broker_factory(users={"agent": "agent-pw"}).start()
    alarms: list[str] = []
    settings = fast_settings(broker.url, username="agent", password="wrong")
    publisher = AlertPublisher(settings, tmp_path / "outbox.db", on_alarm=alarms.append)
    publisher.start()
    try:
        publisher.raise_alert(make_alert(1))
        assert wait_until(lambda: bool(alarms), 10)
        assert "refused the connection" in alarms[0] and publisher.stats()["depth"] == 1
    finally:
        publisher.stop()
    with pytest.raises(BrokerUnreachable, match="did not accept"):
        AlertListener(settings, on_alert=print, consumer="x").start()
