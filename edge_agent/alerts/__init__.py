"""Alerts that are never lost: payloads and schemas, the SQLite outbox, the MQTT publisher and listener.

This package is the only place paho-mqtt and amqtt are imported. See
docs/ALERTS.md for delivery modes, topics and payloads.
"""

from edge_agent.alerts.payloads import (
    DISCLAIMER,
    SCHEMA_IDS,
    PayloadError,
    alert_id,
    build_alert,
    build_receipt,
    build_result,
    build_status,
    load_schema,
    strip_phi,
    utc_now,
    validate_payload,
)
from edge_agent.alerts.settings import MqttSettings, parse_broker_url

__all__ = [
    "DISCLAIMER", "SCHEMA_IDS", "PayloadError", "alert_id", "build_alert", "build_receipt", "build_result", "build_status",
    "load_schema", "strip_phi", "utc_now", "validate_payload", "MqttSettings", "parse_broker_url",
    "AlertPublisher", "AlertListener", "EmbeddedBroker", "BrokerUnreachable",
]


def __getattr__(name: str):
    # The MQTT parts import paho/amqtt; load them on first use so payload helpers stay light.
    if name == "AlertPublisher":
        from edge_agent.alerts.publisher import AlertPublisher
        return AlertPublisher
    if name in ("AlertListener", "BrokerUnreachable"):
        from edge_agent.alerts import consumer
        return getattr(consumer, name)
    if name == "EmbeddedBroker":
        from edge_agent.alerts.embedded import EmbeddedBroker
        return EmbeddedBroker
    raise AttributeError(f"module 'edge_agent.alerts' has no attribute {name!r}")
