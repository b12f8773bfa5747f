"""DICOM C-STORE receiver: a second way in, feeding the watch folder.

Scanners usually *send* images (DICOM PS3.4 Annex B, Storage Service Class).
:class:`StorageReceiver` is a pynetdicom Storage SCP that accepts CT images
and writes each instance, exactly as it came over the wire, into the watch
folder as ``<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``.
The file watcher stays the one path into the pipeline: the receiver only
lands files, atomically (dot-temp name, fsync, ``os.replace``), so the
watcher never sees a half-written file and a resend replaces the same name.
Received data sets stream to a spool file as they arrive (pynetdicom's
``STORE_RECV_CHUNKED_DATASET``, its temporary files redirected into our spool
folder) and are copied from there in 1 MiB pieces, so a multi-frame instance
of hundreds of MB never sits in memory. pynetdicom leaves the spool file of a
transfer that was aborted half-way; the receiver removes spool files that
have not grown for ``SPOOL_MAX_AGE`` seconds, at start and every minute.

DICOM TLS (PS3.15 B.9, BCP 195: TLS 1.2 or later) is optional: a certificate
and key make the port TLS-only; a CA file also requires every peer to present
a certificate signed by it. The TLS handshake runs in the association's own
thread with a deadline, so a peer that connects and stays silent cannot stop
others from connecting.

pynetdicom is used only in this module.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import re
import shutil
import socket
import socketserver
import ssl
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Callable

from pydicom import dcmread
from pydicom.uid import UID
import pynetdicom.dimse_messages as pynetdicom_messages
from pynetdicom import AE, _config as pynetdicom_config, evt
from pynetdicom.transport import ThreadedAssociationServer

from edge_agent.config import check_ae_title, check_port
from edge_agent.dicom.uids import STORAGE_TRANSFER_SYNTAXES
from edge_agent.errors import ConfigError, EdgeAgentError

log = logging.getLogger(__name__)

#: Storage SOP classes accepted (PS3.4 Table B.5-1). Secondary Capture is
#: accepted so scanner "exam summary" images are not retried forever; the
#: pipeline excludes them later.
STORAGE_SOP_CLASSES: dict[str, UID] = {
    "CT Image Storage": UID("1.2.840.10008.5.1.4.1.1.2"),
    "Enhanced CT Image Storage": UID("1.2.840.10008.5.1.4.1.1.2.1"),
    "Secondary Capture Image Storage": UID("1.2.840.10008.5.1.4.1.1.7"),
}

#: Verification SOP class (C-ECHO, PS3.4 Annex A).
VERIFICATION_SOP_CLASS = UID("1.2.840.10008.1.1")

#: Transfer syntaxes accepted for storage (PS3.5 Annex A, PS3.6 Table A-1),
#: all of which the pipeline's decoders read.
TRANSFER_SYNTAXES: list[UID] = [UID(u) for u in STORAGE_TRANSFER_SYNTAXES]

# C-STORE response statuses (PS3.4 Table B.2-1).
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000

# A UID is 1-64 characters of digits and dots (PS3.5 9.1); checking this also
# keeps a hostile value ("../..") out of the file path built from it.
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def tls_context(cert_file: str | Path, key_file: str | Path, ca_file: str | Path | None = None) -> ssl.SSLContext:
    """Server-side TLS for the receiver: TLS 1.2+, our certificate, peer certificates required when ``ca_file``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # BCP 195, as DICOM's TLS profiles ask (PS3.15 B.9)
    try:
        ctx.load_cert_chain(str(cert_file), str(key_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"The DICOM TLS certificate {cert_file} and key {key_file} cannot be loaded "
                          f"({getattr(exc, 'strerror', None) or exc}); give a PEM certificate and its "
                          "unencrypted private key.") from None
    if ca_file:
        try:
            ctx.load_verify_locations(str(ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"The DICOM TLS CA file {ca_file} cannot be loaded "
                              f"({getattr(exc, 'strerror', None) or exc}); give a PEM file of CA "
                              "certificates.") from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


SPOOL_MAX_AGE = 600.0  # s without a write: the transfer that wrote it was aborted


def sweep_spool(folder: Path, max_age: float = SPOOL_MAX_AGE) -> int:
    """Remove spool files untouched for ``max_age`` seconds (aborted transfers); returns how many."""
    removed = 0
    now = time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        try:
            if entry.is_file() and now - entry.stat().st_mtime > max_age:
                os.unlink(entry.path)
                removed += 1
        except OSError:
            pass
    if removed:
        log.warning("removed %d spool file(s) of aborted DICOM transfers from %s", removed, folder)
    return removed


class _AssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, with the TLS handshake moved off the accepting thread.

    pynetdicom wraps each accepted socket with ``do_handshake_on_connect``
    in ``get_request``, i.e. in the one thread that accepts connections: a
    peer that never finishes its handshake would block every other scanner.
    """

    handshake_timeout = 10.0
    on_tls_failure: Callable[[str, str], None] | None = None
    spool: Path | None = None
    _swept_at = 0.0

    def service_actions(self) -> None:  # called by serve_forever between polls
        super().service_actions()
        if self.spool is not None and time.monotonic() - self._swept_at >= 60.0:
            self._swept_at = time.monotonic()
            sweep_spool(self.spool)

    def get_request(self):
        sock, address = self.socket.accept()
        if self.ssl_context:
            sock = self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def finish_request(self, request, client_address) -> None:
        if isinstance(request, ssl.SSLSocket):
            try:
                request.settimeout(self.handshake_timeout)
                request.do_handshake()
                request.settimeout(None)
            except (OSError, ValueError) as exc:  # ssl.SSLError, timeout, reset by peer
                reason = getattr(exc, "reason", None) or type(exc).__name__
                if self.on_tls_failure is not None:
                    self.on_tls_failure(str(client_address[0]), str(reason))
                try:
                    request.close()
                except OSError:
                    pass
                return
        super().finish_request(request, client_address)


def _valid_uid(value: object) -> str | None:
    text = str(value or "").strip().rstrip("\x00")
    return text if len(text) <= 64 and _UID.match(text) else None


class StorageReceiver:
    """A DICOM Storage SCP (C-STORE and C-ECHO) that writes into ``watch_dir``.

    ``allowed_calling_aets`` restricts which peers may associate (empty or
    None: any). ``max_pdu`` is the maximum PDU length we receive (0: no limit,
    PS3.8 D.1). ``on_stored`` is called with each file's final path after it
    was written; an error in it is logged and does not fail the store.
    ``ssl_context`` (see :func:`tls_context`) makes the port DICOM TLS only.
    ``spool_dir`` holds data sets while they arrive (the agent uses
    ``state_dir/receiving``; default ``<temp>/edge-agent-receiving-<uid>``).
    ``bind`` may be an IPv4 or IPv6 address (``"::"``: every IPv6 address).
    """

    def __init__(
        self,
        watch_dir: Path,
        *,
        port: int,
        ae_title: str = "EDGE_AGENT",
        bind: str = "0.0.0.0",
        allowed_calling_aets: list[str] | None = None,
        max_pdu: int = 0,
        on_stored: Callable[[Path], None] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        spool_dir: Path | None = None,
    ) -> None:
        check_port("port", int(port))  # the config's rules (edge_agent.config), for a receiver built in code
        if int(max_pdu) < 0:
            raise ConfigError(f"The maximum PDU length {max_pdu} is negative; use 0 (no limit) or a byte count.")
        self.watch_dir = Path(watch_dir)
        self.ae_title = check_ae_title("The AE title", ae_title)
        self.allowed_calling_aets = [
            check_ae_title("The allowed calling AE title", a) for a in (allowed_calling_aets or [])
        ]
        self.bind = bind
        self.max_pdu = int(max_pdu)
        self.on_stored = on_stored
        self.ssl_context = ssl_context
        self.spool_dir = (Path(spool_dir) if spool_dir is not None
                          else Path(tempfile.gettempdir()) / f"edge-agent-receiving-{os.getuid()}")
        self._requested_port = int(port)
        self._server: ThreadedAssociationServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stats = {"associations": 0, "rejected": 0, "echoes": 0, "stored": 0, "failed": 0,
                       "tls_failures": 0}

    # -- lifecycle ---------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port actually bound (useful when constructed with port 0)."""
        if self._server is None:
            return self._requested_port
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Bind the port and serve associations in the thread ``dicom-receiver``.

        Raises :class:`EdgeAgentError` with one sentence when the port is in
        use, needs privileges, or the bind address does not exist here.
        """
        if self._server is not None:
            return
        for folder, what in ((self.watch_dir, "watch folder"), (self.spool_dir, "spool folder")):
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise EdgeAgentError(
                    f"Cannot create the {what} {folder} for received images "
                    f"({exc.strerror}); create it or fix its permissions."
                ) from None
        sweep_spool(self.spool_dir)
        # Each received data set goes to a spool file chunk by chunk instead of into memory
        # (process-wide pynetdicom settings; this receiver is the agent's only DICOM service).
        pynetdicom_config.STORE_RECV_CHUNKED_DATASET = True
        pynetdicom_messages.NamedTemporaryFile = functools.partial(
            tempfile.NamedTemporaryFile, dir=str(self.spool_dir), prefix="rx-")
        ae = self._make_ae()
        handlers = [
            (evt.EVT_C_STORE, self._handle_store),
            (evt.EVT_C_ECHO, self._handle_echo),
            (evt.EVT_ACCEPTED, self._handle_accepted),
            (evt.EVT_REJECTED, self._handle_rejected),
        ]
        try:
            server = ae.make_server(
                (self.bind, self._requested_port),
                evt_handlers=handlers,
                server_class=_AssociationServer,
                ssl_context=self.ssl_context,
            )
        except OSError as exc:
            raise self._bind_error(exc) from None
        server.on_tls_failure = self._tls_failed
        server.spool = self.spool_dir
        self._server = server
        self._thread = threading.Thread(target=self._serve, args=(server,), name="dicom-receiver", daemon=True)
        self._thread.start()
        log.info("DICOM receiver %s listening on %s port %d%s", self.ae_title, self.bind, self.port,
                 " (TLS only" + (", peer certificates required)" if self.ssl_context.verify_mode ==
                                 ssl.CERT_REQUIRED else ")") if self.ssl_context else "")

    def _tls_failed(self, peer: str, reason: str) -> None:
        with self._lock:
            self._stats["tls_failures"] += 1
        log.warning("DICOM TLS handshake with %s failed (%s); connection closed", peer, reason)

    def threads(self) -> list[threading.Thread]:
        """The long-lived threads this part runs (the agent supervises them)."""
        return [self._thread] if self._thread is not None else []

    def stop(self) -> None:
        """Stop accepting, abort open associations and wait for their threads."""
        server, thread = self._server, self._thread
        if server is None:
            return
        # The base class's shutdown: pynetdicom's override expects a server
        # made by AE.start_server. The serving thread closes the socket, so
        # no association starts after the snapshot below.
        socketserver.BaseServer.shutdown(server)
        associations = list(server.active_associations)
        for assoc in associations:
            assoc.abort()
        for assoc in associations:
            assoc.join(timeout=5)
        if thread is not None:
            thread.join(timeout=5)
        self._server = None
        self._thread = None
        log.info("DICOM receiver stopped (%s)", self.stats())

    @staticmethod
    def _serve(server: ThreadedAssociationServer) -> None:
        try:
            server.serve_forever(poll_interval=0.2)
        finally:
            server.server_close()

    def stats(self) -> dict:
        """Counters since start: associations, rejected, echoes, stored, failed, tls_failures."""
        with self._lock:
            return dict(self._stats)

    def __enter__(self) -> "StorageReceiver":
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # -- set-up --------------------------------------------------------------

    def _make_ae(self) -> AE:
        ae = AE(ae_title=self.ae_title)
        ae.maximum_pdu_size = self.max_pdu
        ae.require_calling_aet = list(self.allowed_calling_aets)
        ae.network_timeout = 60
        ae.acse_timeout = 30
        ae.dimse_timeout = 60
        ae.maximum_associations = 16
        for sop_class in STORAGE_SOP_CLASSES.values():
            ae.add_supported_context(sop_class, TRANSFER_SYNTAXES)
        ae.add_supported_context(VERIFICATION_SOP_CLASS)
        return ae

    def _bind_error(self, exc: OSError) -> EdgeAgentError:
        where = f"{self.bind}:{self._requested_port}"
        if exc.errno == errno.EADDRINUSE:
            return EdgeAgentError(
                f"The DICOM port {where} is already in use; stop the other DICOM receiver "
                "or choose another port with --dicom-port."
            )
        if exc.errno in (errno.EACCES, errno.EPERM):
            return EdgeAgentError(
                f"Binding the DICOM port {where} needs privileges; use a port above 1023 "
                "(104 is often forwarded to 11112) or grant CAP_NET_BIND_SERVICE."
            )
        if exc.errno == errno.EADDRNOTAVAIL or isinstance(exc, socket.gaierror):
            return EdgeAgentError(
                f"The DICOM bind address {self.bind!r} is not an address of this machine; "
                "use 0.0.0.0 or one of its interface addresses."
            )
        return EdgeAgentError(
            f"Cannot listen for DICOM on {where} ({exc.strerror or exc}); check the bind address and port."
        )

    # -- event handlers (run in pynetdicom's association threads) ------------

    def _count(self, key: str) -> None:
        with self._lock:
            self._stats[key] += 1

    def _handle_accepted(self, event) -> None:
        self._count("associations")
        log.debug("association accepted from %s (%s)", event.assoc.requestor.ae_title,
                  event.assoc.requestor.address)

    def _handle_rejected(self, event) -> None:
        self._count("rejected")
        log.warning("association from calling AE %r at %s rejected",
                    event.assoc.requestor.ae_title, event.assoc.requestor.address)

    def _handle_echo(self, event) -> int:
        self._count("echoes")
        return STATUS_SUCCESS

    def _handle_store(self, event) -> int:
        """Write one instance; never raise (an error becomes a status)."""
        try:
            return self._store(event)
        except Exception:  # noqa: BLE001 - the error boundary: the AE keeps serving
            self._count("failed")
            log.exception("unexpected error while storing an instance; answered 0x%04X",
                          STATUS_CANNOT_UNDERSTAND)
            return STATUS_CANNOT_UNDERSTAND

    def _store(self, event) -> int:
        sop_uid = _valid_uid(event.request.AffectedSOPInstanceUID)
        try:
            source: bytes | Path = Path(event.dataset_path)  # streamed to a temporary file (see start())
            ds = dcmread(source, stop_before_pixels=True)
        except AttributeError:  # not chunked: the data set is in memory
            ds = event.dataset  # decodes headers lazily; pixels stay encoded
            source = b""
        study_uid = _valid_uid(ds.get("StudyInstanceUID"))
        series_uid = _valid_uid(ds.get("SeriesInstanceUID"))
        if not (sop_uid and study_uid and series_uid):
            self._count("failed")
            log.warning("refused an instance without valid Study/Series/SOP Instance UIDs "
                        "from %s (status 0x%04X)", event.assoc.requestor.ae_title, STATUS_CANNOT_UNDERSTAND)
            return STATUS_CANNOT_UNDERSTAND
        folder = self.watch_dir / study_uid / series_uid
        final = folder / f"{sop_uid}.dcm"
        try:
            _write_atomically(folder, final, source or event.encoded_dataset(include_meta=True))
        except OSError as exc:
            self._count("failed")
            log.error("cannot write received instance %s to %s (%s); answered 0x%04X (out of resources)",
                      sop_uid, folder, exc.strerror or exc, STATUS_OUT_OF_RESOURCES)
            return STATUS_OUT_OF_RESOURCES
        self._count("stored")
        log.debug("stored SOP Instance %s of series %s", sop_uid, series_uid)
        if self.on_stored is not None:
            try:
                self.on_stored(final)
            except Exception:  # noqa: BLE001 - the file is stored; the callback is advisory
                log.exception("on_stored callback failed for %s", final)
        return STATUS_SUCCESS


def _write_atomically(folder: Path, final: Path, data: bytes | Path) -> None:
    """Write ``data`` (bytes, or a file copied in 1 MiB pieces) to a dot-temp file in ``folder``, fsync it,
    rename over ``final``.

    The watcher ignores dot-files, so it only ever sees the complete file
    appear under its final name; a resend replaces the old file atomically.
    """
    folder.mkdir(parents=True, exist_ok=True)
    temp = folder / f".{final.name}.{uuid.uuid4().hex[:8]}.part"
    try:
        with open(temp, "xb") as fh:
            if isinstance(data, Path):
                with open(data, "rb") as src:
                    shutil.copyfileobj(src, fh, 1 << 20)
            else:
                fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temp, final)
    except BaseException:
        try:
            temp.unlink()
        except OSError:
            pass
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)
