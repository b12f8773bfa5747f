"""Sockets for the harness: a free local port, the host and port of an ``mqtt://`` URL."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def host_port(url: str) -> tuple[str, int]:
    """``mqtt://HOST:PORT`` (or ``mqtts://``) → (HOST, PORT)."""
    host, port = url.split("://")[1].split(":")
    return host, int(port)
