"""A real Orthanc PACS for tests: free ports, a generated JSON config, storage in a temp folder.

Usage::

    pacs = Orthanc(tmp_path / "orthanc").start()
    pacs.destination          # "ORTHANC@127.0.0.1:PORT" for --pacs
    pacs.get("/studies")      # its REST API (JSON)
    pacs.stop(); pacs.start() # same ports, same storage

Debian's package installs ``/usr/sbin/Orthanc``; by default no plugin is loaded. Opt-in:

* ``dicomweb=True``: the DICOMweb plugin (Debian package ``orthanc-dicomweb``) at ``pacs.dicomweb_root``
  (``http://127.0.0.1:PORT/dicom-web``);
* ``users={"name": "password"}``: HTTP basic authentication on the REST API and DICOMweb (this module's own
  REST calls sign in as the first user);
* ``dicom_tls=DicomTls(...)``: DICOM TLS on the DICOM port (Orthanc 1.9+).
"""

from __future__ import annotations

import base64
import glob
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from edge_agent.testing.net import free_port
from edge_agent.testing.processes import terminate

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
#: Where Debian's orthanc-dicomweb puts the plugin (``dpkg -L orthanc-dicomweb``).
DICOMWEB_PLUGINS = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so", "/usr/lib/orthanc/libOrthancDicomWeb.so*")


def dicomweb_plugin() -> str | None:
    """The DICOMweb plugin's shared library, or None when orthanc-dicomweb is not installed."""
    for pattern in DICOMWEB_PLUGINS:
        for path in sorted(glob.glob(pattern)):
            if os.path.isfile(path):
                return path
    return None


@dataclass(frozen=True)
class DicomTls:
    """Orthanc's DICOM TLS: its certificate and key, the CAs it trusts for peers, and whether it demands one."""

    certificate: Path
    private_key: Path
    trusted: Path
    require_client_certificate: bool = True


def available() -> bool:
    return os.access(ORTHANC, os.X_OK)


class Orthanc:
    """One Orthanc process with its own config, storage and log under ``directory``."""

    def __init__(self, directory: Path, *, aet: str = "ORTHANC", dicom_port: int | None = None,
                 http_port: int | None = None, dicomweb: bool = False, users: dict[str, str] | None = None,
                 dicom_tls: DicomTls | None = None) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.aet = aet
        self.dicom_port = dicom_port or free_port()
        self.http_port = http_port or free_port()
        self.log = self.directory / "orthanc.log"
        self.proc: subprocess.Popen | None = None
        self.config = self.directory / "orthanc.json"
        self.users = dict(users or {})
        config = {
            "Name": "edge-agent-test", "DicomAet": aet, "DicomPort": self.dicom_port, "HttpPort": self.http_port,
            "StorageDirectory": str(self.directory / "storage"), "IndexDirectory": str(self.directory / "index"),
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "DicomCheckCalledAet": True,
            "DicomAlwaysAllowStore": True, "DicomCheckModalityHost": False, "Plugins": [],
            "StorageCompression": False, "HttpTimeout": 10, "DicomScpTimeout": 10,
        }
        if dicomweb:
            plugin = dicomweb_plugin()
            if plugin is None:
                raise RuntimeError("the Orthanc DICOMweb plugin is not installed (apt install orthanc-dicomweb)")
            config["Plugins"] = [plugin]
            config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/"}
        if self.users:
            config["AuthenticationEnabled"] = True
            config["RegisteredUsers"] = self.users
        if dicom_tls is not None:
            config.update({"DicomTlsEnabled": True, "DicomTlsCertificate": str(dicom_tls.certificate),
                           "DicomTlsPrivateKey": str(dicom_tls.private_key),
                           "DicomTlsTrustedCertificates": str(dicom_tls.trusted),
                           "DicomTlsRemoteCertificateRequired": dicom_tls.require_client_certificate})
        self.config.write_text(json.dumps(config, indent=1))

    @property
    def destination(self) -> str:
        return f"{self.aet}@127.0.0.1:{self.dicom_port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_root(self) -> str:
        """The DICOMweb service root (``dicomweb=True``): a STOW-RS destination."""
        return f"{self.url}/dicom-web"

    def _request(self, path: str, data: bytes | None = None, headers: dict | None = None) -> urllib.request.Request:
        headers = dict(headers or {})
        if self.users:
            user, password = next(iter(self.users.items()))
            headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        return urllib.request.Request(self.url + path, data=data, headers=headers)

    def start(self, timeout: float = 30.0) -> "Orthanc":
        fh = open(self.log, "a")
        self.proc = subprocess.Popen([ORTHANC, str(self.config)], stdout=fh, stderr=subprocess.STDOUT,
                                     cwd=self.directory)
        fh.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                self.get("/system")
                with socket.create_connection(("127.0.0.1", self.dicom_port), timeout=0.5):
                    return self
            except (OSError, urllib.error.URLError):
                time.sleep(0.2)
        raise RuntimeError(f"Orthanc did not start:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc, 15)

    def get(self, path: str):
        with urllib.request.urlopen(self._request(path), timeout=10) as response:
            body = response.read()
        return json.loads(body) if response.headers.get_content_type() == "application/json" else body

    def post(self, path: str, data: bytes, content_type: str = "application/dicom"):
        request = self._request(path, data, {"Content-Type": content_type})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def upload(self, paths) -> list[str]:
        """Store files through the REST API (the original series, as a scanner would have sent it)."""
        return [self.post("/instances", Path(p).read_bytes())["ID"] for p in paths]

    def instances_by_sop(self) -> dict[str, dict]:
        """``{SOPInstanceUID: simplified tags}`` of every instance stored."""
        out = {}
        for instance in self.get("/instances"):
            tags = self.get(f"/instances/{instance}/tags?simplify")
            out[tags["SOPInstanceUID"]] = {**tags, "_id": instance}
        return out
