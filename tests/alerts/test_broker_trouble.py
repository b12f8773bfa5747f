"""Broker trouble is loud but bounded: a WARNING at the first failed attempt saying what to check, repeated at a
slow rate while it lasts (not per retry), one INFO line when the broker is back with the outbox backlog — and
the publisher reports the end of each alert's delivery (confirmed by a receipt, rejected by the broker).

Real Mosquitto brokers (plain, TLS, password, ACL) on free ports; reconnects every second.
"""

from __future__ import annotations

import logging

import pytest

from edge_agent.testing.alerts import fast_settings, make_alert
from edge_agent.testing.wait import wait_until
from edge_agent.alerts import AlertPublisher
from edge_agent.alerts.consumer import AlertListener
from edge_agent.logs import BROKER_LOG
from edge_agent.testing.mosquitto import MosquittoBroker, free_port


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def of(self, logger: str, level: int | None = None, containing: str = "") -> list[str]:
        return [r.getMessage() for r in list(self.records) if r.name == logger
                and (level is None or r.levelno == level) and containing in r.getMessage()]

    def attempts(self) -> int:
        """Failed attempts that were not told (DEBUG), plus those that were (the broker logger)."""
        return len(self.of("edge_agent.alerts.publisher", logging.DEBUG, "cannot reach the MQTT broker")) + \
            len(self.of(BROKER_LOG, logging.WARNING))


@pytest.fixture
def logs():
    """Every edge_agent record, whatever the logging set-up of the process (propagation may be off)."""
    handler = Records()
    logger = logging.getLogger("edge_agent")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    broker_logger = logging.getLogger(BROKER_LOG)
    broker_level = broker_logger.level
    broker_logger.setLevel(logging.NOTSET)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)
    broker_logger.setLevel(broker_level)


def test_nothing_listening_is_one_warning_not_one_per_retry_then_one_line_with_the_backlog(tmp_path, logs):
    port = free_port()
    url = f"mqtt://127.0.0.1:{port}"
    publisher = AlertPublisher(fast_settings(url, delivery="broker"), tmp_path / "outbox.sqlite3")
    broker = MosquittoBroker(tmp_path / "broker", port=port)
    publisher.start()
    try:
        for i in range(3):
            publisher.raise_alert(make_alert(i))   # they wait in the outbox: the backlog is 3
        assert wait_until(lambda: logs.attempts() >= 4, 30), logs.of("edge_agent.alerts.publisher")
        warnings = logs.of(BROKER_LOG, logging.WARNING)
        assert len(warnings) == 1, warnings       # four attempts, one warning (the next one after a minute)
        first = warnings[0]
        assert first.startswith(f"Cannot reach the MQTT broker at {url} (connection refused: nothing listens on "
                                "that port): check the host and port")
        for what in ("TLS", "credentials", "EDGE_AGENT_MQTT_PASSWORD"):
            assert what in first, what
        assert first.count(". ") == 0 and first.endswith(".")   # one sentence
        broker.start()
        assert wait_until(lambda: logs.of(BROKER_LOG, logging.INFO), 30)
        assert publisher.wait_idle(15)
    finally:
        publisher.stop()
        broker.crash()
    back = logs.of(BROKER_LOG, logging.INFO)
    assert len(back) == 1, back
    assert back[0].startswith(f"The MQTT broker at {url} is reachable again after ")
    assert "outbox backlog: 3 message(s)" in back[0], back[0]
    assert f"({logs.attempts()} failed attempt(s))" in back[0], back[0]   # each failed attempt counted once


def test_while_it_lasts_the_warning_is_repeated_with_the_count_of_attempts(tmp_path, logs):
    url = f"mqtt://127.0.0.1:{free_port()}"
    publisher = AlertPublisher(fast_settings(url), tmp_path / "outbox.sqlite3")
    publisher.broker_warning_interval = 0.0   # repeat at every attempt: what a minute does in production
    publisher.start()
    try:
        publisher.raise_alert(make_alert(1))
        assert wait_until(lambda: len(logs.of(BROKER_LOG, logging.WARNING)) >= 3, 30)
    finally:
        publisher.stop()
    first, *repeats = logs.of(BROKER_LOG, logging.WARNING)
    assert first.startswith("Cannot reach")
    for n, line in enumerate(repeats, start=2):
        assert line.startswith(f"Still cannot reach the MQTT broker at {url} after "), line
        assert f"({n} attempts; last: connection refused: nothing listens on that port), 1 message(s) wait in the " \
               "outbox: check the host and port" in line, line


@pytest.mark.parametrize("case, reason", [
    ("plain to a TLS port", "the broker closed the connection before answering; is it a TLS port (then use "
                            "mqtts://)?"),
    ("TLS to a plain port", "the connection was reset during the TLS handshake; is it a plain MQTT port (then use "
                            "mqtt://)?"),
    ("a CA that did not sign the broker", "the broker's TLS certificate was not accepted: "),
])
def test_tls_mistakes_are_named_in_the_warning(tmp_path, logs, broker_factory, pki, case, reason):
    if case == "TLS to a plain port":
        broker = broker_factory().start()
        settings = fast_settings(broker.url.replace("mqtt://", "mqtts://"), ca_file=str(pki.ca_cert))
    else:
        broker = broker_factory(tls="tls", pki=pki).start()
        url = broker.url.replace("mqtts://", "mqtt://") if case == "plain to a TLS port" else broker.url
        ca = pki.other_ca_cert if case == "a CA that did not sign the broker" else pki.ca_cert
        settings = fast_settings(url, ca_file=str(ca))
    publisher = AlertPublisher(settings, tmp_path / "outbox.sqlite3")
    publisher.start()
    try:
        assert wait_until(lambda: logs.of(BROKER_LOG, logging.WARNING), 30)
    finally:
        publisher.stop()
    warning = logs.of(BROKER_LOG, logging.WARNING)[0]
    assert f"Cannot reach the MQTT broker at {settings.url} ({reason}" in warning, warning


def test_a_refused_login_is_alarmed_once_not_at_every_reconnect(tmp_path, logs, broker_factory):
    broker = broker_factory(users={"agent": "agent-pw"}).start()
    alarms: list[str] = []
    publisher = AlertPublisher(fast_settings(broker.url, username="agent", password="wrong"),
                               tmp_path / "outbox.sqlite3", on_alarm=alarms.append)
    publisher.start()
    try:
        assert wait_until(lambda: len(logs.of("edge_agent.alerts.publisher", logging.DEBUG,
                                               "refused the connection again")) >= 2, 30)
    finally:
        publisher.stop()
    assert len(alarms) == 1 and "refused the connection" in alarms[0] and "password" in alarms[0], alarms


def test_on_delivery_reports_a_receipt_as_confirmed_and_a_denied_publish_as_rejected(tmp_path, broker_factory):
    acl = "user agent\ntopic write edge-agent/site/device/status\ntopic read edge-agent/site/device/receipts\n"
    broker = broker_factory(users={"agent": "agent-pw"}, acl=acl).start()
    outcomes: list[tuple[str, str]] = []
    publisher = AlertPublisher(fast_settings(broker.url, username="agent", password="agent-pw"),
                               tmp_path / "outbox.sqlite3", on_delivery=lambda *a: outcomes.append(a))
    publisher.start()
    try:
        publisher.raise_alert(make_alert(1))   # the ACL lets "agent" write no alerts: rejected by the broker
        assert wait_until(lambda: publisher.stats()["by_state"]["rejected"] == 1, 15), publisher.stats()
        assert outcomes == [("rejected", "alert")]
    finally:
        publisher.stop()

    open_broker = broker_factory("open").start()
    outcomes.clear()
    publisher = AlertPublisher(fast_settings(open_broker.url), tmp_path / "outbox2.sqlite3",
                               on_delivery=lambda *a: outcomes.append(a))
    listener = AlertListener(fast_settings(open_broker.url), on_alert=lambda *a: None, consumer="pager")
    listener.start()
    publisher.start()
    try:
        publisher.raise_alert(make_alert(2))
        assert wait_until(lambda: publisher.stats()["by_state"]["done"] == 1, 15), publisher.stats()
        assert wait_until(lambda: outcomes, 5)
        assert outcomes == [("confirmed", "alert")]   # one receipt that made the row done: counted once
        assert listener.counts["receipts"] >= 1
    finally:
        publisher.stop()
        listener.stop()
