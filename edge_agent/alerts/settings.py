"""MQTT connection and delivery settings, with secrets from the environment.

Credentials and TLS material never have to appear on a command line: they come
from the config file (the caller passes them in) or from environment variables,
each of which may also name a file (``*_FILE``, the Docker/systemd-credentials
convention)::

    EDGE_AGENT_MQTT_USERNAME / EDGE_AGENT_MQTT_USERNAME_FILE
    EDGE_AGENT_MQTT_PASSWORD / EDGE_AGENT_MQTT_PASSWORD_FILE
    EDGE_AGENT_MQTT_CA_FILE, EDGE_AGENT_MQTT_CERT_FILE, EDGE_AGENT_MQTT_KEY_FILE
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.config import (
    MQTT_DELIVERY,
    MQTT_PROTOCOLS,
    check_broker_url,
    check_one_of,
    check_positive,
    check_topic_level,
)
from edge_agent.errors import ConfigError

if TYPE_CHECKING:
    from edge_agent.config import Config

ENV_PREFIX = "EDGE_AGENT_MQTT_"
DELIVERY_MODES = MQTT_DELIVERY
PROTOCOLS = MQTT_PROTOCOLS


@dataclass(frozen=True)
class BrokerAddress:
    """A parsed broker URL: ``mqtt://host:port`` (plain) or ``mqtts://host:port`` (TLS)."""

    host: str
    port: int
    tls: bool

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def parse_broker_url(url: str, key: str = "The broker URL") -> BrokerAddress:
    """Parse ``mqtt://host[:1883]`` or ``mqtts://host[:8883]``; anything else is a ConfigError sentence naming
    ``key`` (the rule is the config's, :func:`edge_agent.config.check_broker_url`)."""
    return BrokerAddress(*check_broker_url(key, url))


def _env(name: str) -> str | None:
    """Value of ``EDGE_AGENT_MQTT_<name>``, or the stripped contents of the file named by ``..._FILE``."""
    value = os.environ.get(ENV_PREFIX + name)
    if value:
        return value
    path = os.environ.get(ENV_PREFIX + name + "_FILE")
    if path:
        try:
            return Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"Cannot read {ENV_PREFIX}{name}_FILE={path} ({exc.strerror}); "
                              "fix the path or its permissions.")
    return None


@dataclass
class MqttSettings:
    """How the agent (or a consumer) talks to the broker and delivers alerts.

    ``url`` None means the daemon starts an embedded broker and fills the URL in.
    ``delivery``: ``receipt`` (done when a consumer's receipt arrives; republished
    with the same alert_id until then) or ``broker`` (done at PUBACK). See
    docs/ALERTS.md for what each guarantees.
    """

    url: str | None = None
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    tls_insecure: bool = False
    protocol: str = "auto"
    client_id: str | None = None
    keepalive: int = 30
    prefix: str = "edge-agent"
    site: str = "site"
    device: str = "device"
    delivery: str = "receipt"
    receipt_timeout: float = 30.0
    heartbeat_interval: float = 30.0
    inflight_window: int = 10
    retry_max_delay: float = 300.0
    reconnect_min_delay: float = 0.5
    reconnect_max_delay: float = 30.0
    alarm_depth: int = 1000
    alarm_oldest_age_s: float = 600.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError (one sentence) for any value that cannot work.

        Settings built in code (``listen`` without ``--config``, the harness) are checked here; those from a
        config were checked by :func:`edge_agent.config.validate` with the same rules (the functions there), so
        only what the config does not hold can fail then: the TLS pair as completed from the environment.
        """
        if self.url is not None:
            parse_broker_url(self.url)
        check_one_of("protocol", self.protocol, PROTOCOLS)
        check_one_of("delivery", self.delivery, DELIVERY_MODES)
        if bool(self.cert_file) != bool(self.key_file):
            raise ConfigError("A client certificate needs its key (and a key its certificate); "
                              "set both cert_file and key_file or neither.")
        for name in ("prefix", "site", "device"):
            check_topic_level(name, getattr(self, name))
        if self.inflight_window < 1 or self.keepalive < 5:
            raise ConfigError("inflight_window must be at least 1 and keepalive at least 5 seconds.")
        for name in ("receipt_timeout", "heartbeat_interval"):
            check_positive(name, getattr(self, name))

    @classmethod
    def from_env(cls, **overrides) -> "MqttSettings":
        """Settings from keyword overrides (None = not given), secrets and TLS paths filled from the environment."""
        known = {f.name for f in fields(cls)}
        unknown = set(overrides) - known
        if unknown:
            raise ConfigError(f"Unknown MQTT setting(s) {', '.join(sorted(unknown))}; "
                              f"known ones are {', '.join(sorted(known))}.")
        values = {k: v for k, v in overrides.items() if v is not None}
        for name, env_name in (("username", "USERNAME"), ("password", "PASSWORD"), ("ca_file", "CA_FILE"),
                               ("cert_file", "CERT_FILE"), ("key_file", "KEY_FILE")):
            if values.get(name) is None:
                env_value = _env(env_name)
                if env_value is not None:
                    values[name] = env_value
        return cls(**values)

    @classmethod
    def from_config(cls, cfg: Config, **overrides: Any) -> "MqttSettings":
        """The one translation of the config's ``[mqtt]`` section (site and device from ``[agent]``).

        ``overrides`` replace single values (the embedded broker's URL, a command-line flag; None = not
        given). The password is read here, once (:meth:`Config.mqtt_password`: ``EDGE_AGENT_MQTT_PASSWORD``,
        else ``mqtt.password_file``); whatever the config leaves empty (credentials, TLS paths) is filled from
        the environment as by :meth:`from_env`, which validates the result.
        """
        m = cfg.mqtt
        values: dict[str, Any] = {
            "url": m.broker or None, "username": m.username or None, "ca_file": m.ca_file or None,
            "cert_file": m.cert_file or None, "key_file": m.key_file or None, "tls_insecure": m.tls_insecure,
            "protocol": m.protocol, "client_id": m.client_id or None, "prefix": m.prefix, "site": cfg.agent.site,
            "device": cfg.agent.device, "delivery": m.delivery, "receipt_timeout": m.receipt_timeout,
            "heartbeat_interval": m.heartbeat_interval}
        values.update({k: v for k, v in overrides.items() if v is not None})
        if values.get("password") is None:
            values["password"] = cfg.mqtt_password()
        return cls.from_env(**values)

    @property
    def address(self) -> BrokerAddress:
        if self.url is None:
            raise ConfigError("No broker URL is set; pass --broker mqtt://host:port or let the agent start its "
                              "embedded broker.")
        return parse_broker_url(self.url)

    @property
    def base_topic(self) -> str:
        return f"{self.prefix}/{self.site}/{self.device}"

    def topic(self, leaf: str) -> str:
        """``{prefix}/{site}/{device}/{leaf}`` — leaf is alerts, results, status or receipts."""
        return f"{self.base_topic}/{leaf}"

    def __repr__(self) -> str:  # never print the password
        shown = {f.name: getattr(self, f.name) for f in fields(self)}
        if shown.get("password"):
            shown["password"] = "***"
        return "MqttSettings(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"
