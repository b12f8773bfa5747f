"""A TCP proxy on 127.0.0.1 that can lose one direction: a network that fails mid-send, for the PACS tests.

Usage::

    proxy = TcpProxy(orthanc.dicom_port, hold_requests=True)   # accepts, answers nothing: stuck mid-way
    ...                                                         # point the agent at 127.0.0.1:proxy.port
    proxy.hold_requests = False                                 # from now on: relayed both ways
    proxy.close()

* ``hold_requests``: a connection is accepted and what the client sends is swallowed; nothing reaches the
  target (``held`` counts them: an association or a request stuck before the PACS saw it);
* ``hold_answers``: requests reach the target, what it answers is swallowed (it stored, the answer never
  comes back: the agent is killed while it waits);
* neither: both directions are relayed.

The settings apply to connections accepted from then on. ``connections`` counts every one accepted.
"""

from __future__ import annotations

import socket
import threading


class TcpProxy:
    """``127.0.0.1:port`` → ``127.0.0.1:target_port``, holding requests or answers where asked."""

    def __init__(self, target_port: int, *, hold_requests: bool = False, hold_answers: bool = False,
                 name: str = "proxy") -> None:
        self.target_port = target_port
        self.hold_requests = hold_requests
        self.hold_answers = hold_answers
        self.name = name
        self.connections = 0
        self.held = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self._closing = threading.Event()
        self._sockets: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept, name=f"{name}-accept")]
        self._threads[0].start()

    def _spawn(self, a: socket.socket, b: socket.socket | None) -> None:
        thread = threading.Thread(target=self._pipe, args=(a, b), name=f"{self.name}-io")
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self.sock.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            self.connections += 1
            self._sockets.append(client)
            if self.hold_requests:
                self.held += 1
                self._spawn(client, None)
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self._sockets.append(upstream)
            self._spawn(client, upstream)
            self._spawn(upstream, None if self.hold_answers else client)

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket | None) -> None:
        """Relay a → b until a closes, then shut both down; with b None swallow what a sends and leave the
        other side open (its peer keeps waiting for an answer that never comes)."""
        try:
            while data := a.recv(65536):
                if b is not None:
                    b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    if s is not None:
                        s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        """Stop accepting, end every connection and join every thread."""
        self._closing.set()
        for s in self._sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in self._threads:
            thread.join(5)
        self.sock.close()
        for s in self._sockets:
            s.close()

    def __enter__(self) -> "TcpProxy":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
