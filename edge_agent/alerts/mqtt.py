"""Building paho-mqtt 2 clients the same way for the publisher and the listener.

paho-mqtt 2.x API (https://eclipse.dev/paho/files/paho.mqtt.python/html/client.html):
``Client(CallbackAPIVersion.VERSION2, ...)``; MQTT 5 uses ``clean_start`` and
connect properties, 3.1.1 uses ``clean_session`` in the constructor. TLS always
verifies the broker's certificate chain; ``tls_insecure`` only skips the host
name check and is logged as a warning every time.
"""

from __future__ import annotations

import logging
import ssl

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.alerts.settings import MqttSettings
from edge_agent.errors import ConfigError

log = logging.getLogger(__name__)

PROTOCOL_CODES = {"5": paho.MQTTv5, "3.1.1": paho.MQTTv311}
#: CONNACK "Unsupported Protocol Version": 0x84 in MQTT 5 (3.2.2.2), 0x01 in 3.1.1 (3.2.2.3).
UNSUPPORTED_PROTOCOL = (0x84, 0x01)
#: MQTT 5 PUBACK reason codes (3.4.2.1) that are worth retrying later rather than rejecting.
TRANSIENT_PUBACK = (0x89, 0x97)  # server busy, quota exceeded
#: Session expiry for consumers with persistent sessions (one week; MQTT 5 3.1.2.11.2).
CONSUMER_SESSION_EXPIRY_S = 7 * 24 * 3600


class _QuietPahoFilter(logging.Filter):
    """paho logs 'Client is not connected' as an error on every loop while the broker is down, and a socket
    error on every failed attempt; we report outages ourselves, at a bounded rate (socket errors with -vv)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("Client is not connected"):
            return False
        if message.startswith(("failed to receive on socket", "failed to send on socket")):
            return _paho_log.isEnabledFor(logging.DEBUG)
        return True


_paho_log = logging.getLogger("edge_agent.alerts.paho")
_paho_log.addFilter(_QuietPahoFilter())


def protocols_to_try(settings: MqttSettings) -> list[str]:
    """'auto' tries 5 first, then 3.1.1 if the broker refuses 5 (amqtt, old brokers)."""
    return ["5", "3.1.1"] if settings.protocol == "auto" else [settings.protocol]


def is_protocol_refused(reason_code) -> bool:
    return getattr(reason_code, "value", reason_code) in UNSUPPORTED_PROTOCOL and reason_code.is_failure


def reason_text(reason_code) -> str:
    """'Not authorized (0x87)' style text for a paho ReasonCode (or int)."""
    value = getattr(reason_code, "value", reason_code)
    return f"{reason_code} (0x{int(value):02x})"


class _ClosingSSLSocket(ssl.SSLSocket):
    """An SSL socket that closes itself when its handshake fails: paho-mqtt 2.x (``Client._ssl_wrap_socket``)
    drops it without closing it then (a wrong CA, a host-name mismatch, TLS towards a plain port)."""

    def do_handshake(self, *args, **kwargs):
        try:
            return super().do_handshake(*args, **kwargs)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise  # a non-blocking handshake still under way
        except BaseException:
            self.close()
            raise


def _tls_context(settings: MqttSettings) -> ssl.SSLContext:
    """What paho's ``tls_set`` builds (TLS client, broker certificate required, host name checked; our CA or the
    system store; our certificate for mutual TLS), with sockets that close on a failed handshake."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if settings.cert_file:
        ctx.load_cert_chain(settings.cert_file, settings.key_file)
    ctx.verify_mode = ssl.CERT_REQUIRED
    if settings.ca_file:
        ctx.load_verify_locations(settings.ca_file)
    else:
        ctx.load_default_certs()
    ctx.sslsocket_class = _ClosingSSLSocket
    return ctx


def make_client(settings: MqttSettings, client_id: str, protocol: str, *, persistent: bool = False,
                userdata=None) -> paho.Client:
    """A configured but unconnected client: protocol, credentials, TLS, reconnect delays."""
    kwargs = {"client_id": client_id, "protocol": PROTOCOL_CODES[protocol], "userdata": userdata}
    if protocol == "3.1.1":
        kwargs["clean_session"] = not persistent
    client = paho.Client(CallbackAPIVersion.VERSION2, **kwargs)
    client.enable_logger(_paho_log)
    client.reconnect_delay_set(min_delay=max(1, int(settings.reconnect_min_delay)),
                               max_delay=max(1, int(settings.reconnect_max_delay)))
    if settings.username:
        client.username_pw_set(settings.username, settings.password)
    address = settings.address
    if address.tls:
        try:
            client.tls_set_context(_tls_context(settings))
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ConfigError(f"Cannot load the MQTT TLS material (CA {settings.ca_file}, certificate "
                              f"{settings.cert_file}, key {settings.key_file}): {exc}; fix the paths.") from exc
        if settings.tls_insecure:
            log.warning("TLS host name verification is OFF for %s (tls_insecure=true); the certificate chain is "
                        "still verified. Do not run like this in production.", address.url)
            client.tls_insecure_set(True)
    elif settings.cert_file or settings.ca_file:
        log.warning("TLS material is configured but the broker URL %s is plain mqtt://; use mqtts:// to "
                    "encrypt.", address.url)
    return client


def connect_args(settings: MqttSettings, protocol: str, *, persistent: bool = False) -> dict:
    """Keyword arguments for ``connect``/``connect_async`` for this protocol."""
    address = settings.address
    args = {"host": address.host, "port": address.port, "keepalive": settings.keepalive}
    if protocol == "5":
        args["clean_start"] = not persistent
        if persistent:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = CONSUMER_SESSION_EXPIRY_S
            args["properties"] = props
    return args


def publish_properties(protocol: str, user_properties: list[tuple[str, str]] | None = None) -> Properties | None:
    """MQTT 5 PUBLISH properties: ContentType JSON, user properties; never a Message Expiry Interval."""
    if protocol != "5":
        return None
    props = Properties(PacketTypes.PUBLISH)
    props.ContentType = "application/json"
    props.PayloadFormatIndicator = 1
    if user_properties:
        props.UserProperty = list(user_properties)
    return props
