"""A zero-setup MQTT broker (amqtt) for the demo and for a fresh machine.

amqtt 0.12 speaks MQTT 3.1.1 only (the publisher falls back to it
automatically) and loses in-flight QoS 1 messages on reconnect (amqtt#401):
good enough to show an alert end to end, never for production or reliability
tests. Production uses Mosquitto, EMQX or HiveMQ (docs/ALERTS.md).
"""

from __future__ import annotations

import asyncio
import logging
import threading

from edge_agent.errors import EdgeAgentError

log = logging.getLogger(__name__)


class EmbeddedBrokerError(EdgeAgentError):
    """The embedded broker could not start."""


class EmbeddedBroker:
    """amqtt in its own named thread with its own asyncio loop; ``start()`` returns once it listens.

    ``protocol`` is what clients should set (``MqttSettings(protocol=broker.protocol)``) to skip the
    MQTT 5 attempt that amqtt never answers.
    """

    protocol = "3.1.1"

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> None:
        """Start listening on host:port (port 0 picks a free one; see ``.url``)."""
        if self._thread is not None:
            return
        self._ready.clear()
        self._error = None
        self._thread = threading.Thread(target=self._run, name="edge-agent-embedded-broker", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            self.stop()
            raise EmbeddedBrokerError(f"The embedded MQTT broker did not start within {timeout:.0f} s; "
                                      "pass --broker to use an external one.")
        if self._error is not None:
            self._thread.join()
            self._thread = None
            raise EmbeddedBrokerError(f"The embedded MQTT broker cannot listen on {self.host}:{self.port} "
                                      f"({self._error}); free the port or pass --broker.")
        log.info("embedded MQTT broker (amqtt, MQTT 3.1.1, demo only) listening on %s", self.url)

    def stop(self) -> None:
        """Shut the broker down and join its thread."""
        if self._thread is None:
            return
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(timeout=15)
        self._thread = None

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # noqa: BLE001 - reported to start()'s caller
            self._error = exc
        finally:
            self._ready.set()
            loop.close()
            self._loop = None

    async def _serve(self) -> None:
        from amqtt.broker import Broker

        self._stopping = asyncio.Event()
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        broker = Broker(config)
        await broker.start()
        try:
            server = broker._servers["default"].instance  # amqtt exposes no public accessor for the bound port
            self.port = server.sockets[0].getsockname()[1]
        except (KeyError, AttributeError, IndexError):
            pass
        self._ready.set()
        try:
            await self._stopping.wait()
        finally:
            await broker.shutdown()
