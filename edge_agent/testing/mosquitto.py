"""A real Mosquitto broker for tests: free port, temp config, plain/TLS/mTLS/password/ACL.

Usage::

    broker = MosquittoBroker(tmp_path / "mqtt")             # plain, anonymous, persistent
    broker.start(); broker.url  # mqtt://127.0.0.1:PORT
    broker.crash()   # SIGKILL: what was not autosaved is lost
    broker.start()   # same port, same store
    broker.stop()    # SIGTERM: store saved

TLS material comes from :func:`make_pki` (openssl, a throw-away CA). The broker
runs as root in CI containers, where Mosquitto would drop to user
``mosquitto`` and lose access to root-owned files: ``user root`` is added then.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from edge_agent.testing.net import free_port

__all__ = ["MOSQUITTO", "MosquittoBroker", "Pki", "free_port", "make_pki"]

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


@dataclass
class Pki:
    """Paths of a throw-away CA, a server certificate for localhost/127.0.0.1 and a client certificate."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca_cert: Path   # a CA that signed nothing here: verification against it must fail


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(directory: Path, client_cn: str = "edge-agent-client") -> Pki:
    """Create CA, server (SAN DNS:localhost, IP:127.0.0.1) and client certificates with openssl."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    for ca in ("ca", "other-ca"):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN=edge-agent test {ca}",
                 "-keyout", f"{ca}.key", "-out", f"{ca}.crt", cwd=d)
    for name, cn, ext in (("server", "localhost", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
                          ("client", client_cn, "extendedKeyUsage=clientAuth")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}", "-keyout", f"{name}.key",
                 "-out", f"{name}.csr", cwd=d)
        (d / f"{name}.ext").write_text(ext + "\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=d)
    return Pki(d / "ca.crt", d / "ca.key", d / "server.crt", d / "server.key", d / "client.crt", d / "client.key",
               d / "other-ca.crt")


class MosquittoBroker:
    """One Mosquitto process with its own config, store and log under ``directory``."""

    def __init__(self, directory: Path, *, tls: str | None = None, pki: Pki | None = None,
                 users: dict[str, str] | None = None, acl: str | None = None, max_queued_messages: int = 0,
                 autosave_interval: int = 1, persistence: bool = True, port: int | None = None,
                 extra_config: list[str] | None = None) -> None:
        if tls not in (None, "tls", "mtls"):
            raise ValueError("tls must be None, 'tls' or 'mtls'")
        if tls and pki is None:
            raise ValueError("TLS needs a Pki from make_pki()")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.tls, self.pki, self.users, self.acl = tls, pki, users, acl
        self.max_queued_messages = max_queued_messages
        self.autosave_interval = autosave_interval
        self.persistence = persistence
        self.extra_config = list(extra_config or [])
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.conf_path = self._write_config()

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.directory / "mosquitto.log"

    def _write_config(self) -> Path:
        d = self.directory
        lines = [f"listener {self.port} 127.0.0.1",
                 f"persistence {'true' if self.persistence else 'false'}",
                 f"persistence_location {d}/",
                 f"autosave_interval {self.autosave_interval}",
                 f"max_queued_messages {self.max_queued_messages}",
                 f"log_dest file {self.log_path}",
                 "log_type error", "log_type warning", "log_type notice", "log_type information",
                 "connection_messages true"]
        if os.geteuid() == 0:
            lines.append("user root")
        if self.tls:
            lines += [f"cafile {self.pki.ca_cert}", f"certfile {self.pki.server_cert}",
                      f"keyfile {self.pki.server_key}"]
            if self.tls == "mtls":
                lines += ["require_certificate true", "use_identity_as_username true"]
        if self.users is not None:
            pw = d / "passwords"
            pw.write_text("")
            for user, password in self.users.items():
                subprocess.run([MOSQUITTO_PASSWD, "-b", str(pw), user, password], check=True, capture_output=True)
            lines += [f"password_file {pw}", "allow_anonymous false"]
        elif self.tls == "mtls":
            lines.append("allow_anonymous false")
        else:
            lines.append("allow_anonymous true")
        if self.acl is not None:
            acl_path = d / "acl"
            acl_path.write_text(self.acl)
            lines.append(f"acl_file {acl_path}")
        lines += self.extra_config
        conf = d / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def start(self, timeout: float = 10.0) -> "MosquittoBroker":
        """Start (or restart on the same port and store); returns once the port accepts connections."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf_path)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace")
                raise RuntimeError(f"mosquitto exited at start (rc {self.proc.returncode}): {err} "
                                   f"{self.log_path.read_text() if self.log_path.exists() else ''}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.crash()
        raise RuntimeError(f"mosquitto did not listen on port {self.port} within {timeout} s")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM: Mosquitto saves its store and exits."""
        self._signal(signal.SIGTERM, timeout)

    def crash(self) -> None:
        """SIGKILL: no save, as in a power cut."""
        self._signal(signal.SIGKILL, 10.0)

    def save(self) -> None:
        """SIGUSR1 makes Mosquitto write its store now."""
        if self.running:
            self.proc.send_signal(signal.SIGUSR1)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _signal(self, sig: int, timeout: float) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def client_ssl_context(self, with_client_cert: bool = False) -> ssl.SSLContext:
        """An SSL context trusting the test CA (for raw checks in tests)."""
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        if with_client_cert:
            ctx.load_cert_chain(str(self.pki.client_cert), str(self.pki.client_key))
        return ctx
