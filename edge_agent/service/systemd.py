"""systemd readiness and watchdog notifications, without a dependency.

Speaks the ``sd_notify`` datagram protocol (sd_notify(3),
https://www.freedesktop.org/software/systemd/man/latest/sd_notify.html):
newline-separated ``KEY=VALUE`` assignments sent as one datagram to the
AF_UNIX socket named by ``$NOTIFY_SOCKET`` (a leading ``@`` means the Linux
abstract namespace). With ``Type=notify`` the unit becomes *active* on
``READY=1``; with ``WatchdogSec=`` systemd sets ``$WATCHDOG_USEC`` (and
``$WATCHDOG_PID``) and restarts the service when no ``WATCHDOG=1`` arrives in
time (systemd.service(5)). Outside systemd every call is a cheap no-op.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Callable

log = logging.getLogger(__name__)


def _address(value: str) -> str | bytes | None:
    if value.startswith("@"):
        return b"\0" + value[1:].encode()  # abstract namespace
    if value.startswith("/"):
        return value
    return None  # vsock:... and others are not supported here


def notify(state: str) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``, ``"STATUS=..."``, ``"STOPPING=1"``,
    ``"WATCHDOG=1"``; several joined by newlines) to systemd.

    Returns False when not running under systemd (no ``$NOTIFY_SOCKET``) or
    when the datagram could not be sent; never raises.
    """
    target = os.environ.get("NOTIFY_SOCKET", "")
    address = _address(target) if target else None
    if address is None:
        if target:
            log.debug("NOTIFY_SOCKET %r is not an AF_UNIX socket; not notifying", target)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode("utf-8"), address)
        return True
    except OSError as exc:
        log.debug("sd_notify to %r failed: %s", target, exc)
        return False


def watchdog_interval() -> float | None:
    """The watchdog timeout in seconds from ``$WATCHDOG_USEC``, or None.

    None as well when ``$WATCHDOG_PID`` names another process (the variables
    were inherited, sd_watchdog_enabled(3)) or the value is not a positive
    integer.
    """
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1_000_000 if value > 0 else None


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class SystemdNotifier:
    """Readiness, status and a watchdog thread for a ``Type=notify`` unit.

    The thread ``systemd-watchdog`` sends ``WATCHDOG=1`` every half watchdog
    interval, but only while ``health()`` returns True: a stuck stage stops
    the pings and systemd restarts the service. ``interval`` overrides
    ``$WATCHDOG_USEC`` (seconds; None: from the environment).
    """

    def __init__(self, health: Callable[[], bool] | None = None, *, interval: float | None = None) -> None:
        self.health = health or (lambda: True)
        self.interval = interval if interval is not None else watchdog_interval()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._unhealthy = False
        self.pings = 0

    @property
    def under_systemd(self) -> bool:
        """Whether ``$NOTIFY_SOCKET`` is set."""
        return bool(os.environ.get("NOTIFY_SOCKET"))

    def ready(self, status: str | None = None) -> bool:
        """Tell systemd start-up is complete (``READY=1``), with an optional status line."""
        return notify("READY=1" + (f"\nSTATUS={_one_line(status)}" if status else ""))

    def status(self, text: str) -> bool:
        """Set the one-line status ``systemctl status`` shows."""
        return notify(f"STATUS={_one_line(text)}")

    def stopping(self) -> bool:
        """Tell systemd the service is shutting down (``STOPPING=1``)."""
        return notify("STOPPING=1")

    def start(self) -> None:
        """Start the watchdog thread when a watchdog interval is known."""
        if self._thread is not None or not self.interval:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._watchdog_loop, name="systemd-watchdog", daemon=True)
        self._thread.start()
        log.info("systemd watchdog: pinging every %.1f s while healthy", self.interval / 2)

    def stop(self) -> None:
        """Stop the watchdog thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _watchdog_loop(self) -> None:
        period = max(0.01, float(self.interval) / 2)
        self._ping()  # at once: the first interval starts at READY
        while not self._stop.wait(period):
            self._ping()

    def _ping(self) -> None:
        try:
            healthy = bool(self.health())
        except Exception:  # noqa: BLE001 - a failing check counts as unhealthy
            log.exception("health check failed")
            healthy = False
        if healthy:
            if self._unhealthy:
                log.warning("healthy again; resuming systemd watchdog pings")
                notify("STATUS=running")
            self._unhealthy = False
            if notify("WATCHDOG=1"):
                self.pings += 1
        elif not self._unhealthy:
            self._unhealthy = True
            log.error("a stage is stuck; withholding systemd watchdog pings so systemd restarts the service")
            notify("STATUS=unhealthy: a stage is stuck (see /healthz)")
