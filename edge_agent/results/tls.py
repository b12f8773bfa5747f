"""TLS towards PACS destinations (DICOM TLS and https STOW-RS): one client context, failures in one sentence.

:func:`client_context` builds what both transports use: TLS 1.2 or later,
the PACS certificate verified against ``pacs.tls_ca`` (or the system trust
store) and its host name checked against the destination's host, and our
client certificate (``pacs.tls_cert`` / ``pacs.tls_key``) for a PACS that
demands mutual TLS. :func:`explain` turns an ``ssl`` error into what to fix.

pynetdicom swallows the ``ssl`` error of a failed handshake (it only says
the association failed), so :class:`FailureRecorder` remembers the last one
raised by a socket of its context. No pynetdicom and no HTTP library here.
"""

from __future__ import annotations

import ssl

from edge_agent.errors import ConfigError


def client_context(ca: str = "", cert: str = "", key: str = "") -> ssl.SSLContext:
    """A TLS 1.2+ client context: the PACS verified (``ca``, else the system store), host name checked,
    our certificate and key loaded when given; bad material is a :class:`ConfigError` sentence."""
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"pacs.tls_ca {ca} cannot be loaded ({_why(exc)}); give a PEM file of the CA "
                          "certificates that signed the PACS certificate.") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # BCP 195, as DICOM's TLS profiles ask (PS3.15 B.9)
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    if cert or key:
        try:
            # A password callback, so that an encrypted key fails here instead of prompting on a terminal.
            ctx.load_cert_chain(cert, key or None, password=lambda: b"")
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"pacs.tls_cert {cert} and pacs.tls_key {key} cannot be loaded ({_why(exc)}); give "
                              "a PEM certificate and its unencrypted private key.") from None
    return ctx


def _why(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason.replace("_", " ").lower() if exc.reason else \
            "not PEM, or a key that is encrypted or does not match the certificate"
    return getattr(exc, "strerror", None) or type(exc).__name__


class FailureRecorder:
    """Remembers the last TLS error raised by any socket of ``ctx`` (set as its ``sslsocket_class``).

    ``error`` is cleared by :meth:`clear`; one recorder per context, used by one thread at a time.
    """

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.error: BaseException | None = None
        recorder = self

        class _RecordingSocket(ssl.SSLSocket):
            # pynetdicom (AssociationSocket._shutdown_socket) calls close() only when shutdown() succeeds, which
            # it does not on a socket that never connected, failed its handshake or was reset: then the socket
            # is closed here, instead of being left to the garbage collector (a ResourceWarning).
            def connect(self, address):
                try:
                    return super().connect(address)
                except BaseException as exc:
                    self.close()
                    if isinstance(exc, (ssl.SSLError, ConnectionResetError, BrokenPipeError)):
                        recorder.error = exc  # the handshake failed (connect() does it); refused: no TLS involved
                    raise

            def shutdown(self, how):
                try:
                    return super().shutdown(how)
                except BaseException:
                    self.close()
                    raise

            def recv(self, *args, **kwargs):
                try:
                    return super().recv(*args, **kwargs)
                except ssl.SSLError as exc:  # TLS 1.3: a refused client certificate shows on the first read
                    recorder.error = exc
                    raise

            def send(self, *args, **kwargs):
                try:
                    return super().send(*args, **kwargs)
                except ssl.SSLError as exc:
                    recorder.error = exc
                    raise

        ctx.sslsocket_class = _RecordingSocket

    def clear(self) -> None:
        self.error = None


#: OpenSSL reasons meaning the peer does not speak TLS on that port (a plain DICOM or HTTP port).
_NOT_TLS = {"WRONG_VERSION_NUMBER", "UNKNOWN_PROTOCOL", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG",
            "HTTP_REQUEST", "UNEXPECTED_EOF_WHILE_READING", "RECORD_TOO_LARGE"}
#: Alerts from a PACS that wants a (different) client certificate.
_CLIENT_CERT = {"TLSV13_ALERT_CERTIFICATE_REQUIRED", "SSLV3_ALERT_BAD_CERTIFICATE", "TLSV1_ALERT_UNKNOWN_CA",
                "SSLV3_ALERT_CERTIFICATE_UNKNOWN", "TLSV1_ALERT_ACCESS_DENIED", "SSLV3_ALERT_CERTIFICATE_EXPIRED",
                "SSLV3_ALERT_CERTIFICATE_REVOKED", "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
                "TLSV1_ALERT_DECRYPT_ERROR"}
_OLD_PROTOCOL = {"UNSUPPORTED_PROTOCOL", "TLSV1_ALERT_PROTOCOL_VERSION", "NO_PROTOCOLS_AVAILABLE"}


def explain(exc: BaseException, host: str, port: int, *, client_cert: bool, plain_form: str) -> str:
    """What went wrong in a TLS handshake with ``host:port`` and what to fix, as a phrase that follows the
    destination's name ("PACS tls:A@h:p failed the TLS handshake: …"; no final period).

    ``client_cert``: whether pacs.tls_cert was given; ``plain_form``: how the destination is written without TLS
    (``AET@host:port``, ``http://…``), for a TLS destination pointed at a plain port.
    """
    if isinstance(exc, ssl.SSLCertVerificationError):
        message = (exc.verify_message or exc.reason or "not verified").rstrip(".")
        if exc.verify_code == 62 or "mismatch" in message.lower():  # X509_V_ERR_HOSTNAME_MISMATCH
            return (f"failed the TLS handshake: its certificate is not valid for the host name {host} ({message}); "
                    "write the destination with a host name its certificate names, or have it reissued")
        if exc.verify_code == 10:  # X509_V_ERR_CERT_HAS_EXPIRED
            return f"failed the TLS handshake: its certificate has expired ({message}); have it renewed"
        return (f"failed the TLS handshake: its certificate is not trusted ({message}); set pacs.tls_ca to the PEM "
                "file of the CA that signed it")
    reason = getattr(exc, "reason", None) or ""
    if reason in _NOT_TLS or isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError,
                                              BrokenPipeError)):
        closed = reason not in _NOT_TLS or reason == "UNEXPECTED_EOF_WHILE_READING"  # not a plain answer: ambiguous
        hint = "" if client_cert or not closed else (", or the PACS demands a client certificate (set "
                                                     "pacs.tls_cert and pacs.tls_key)")
        return (f"broke off the TLS handshake ({_alert(reason) if reason else 'connection closed'}): port {port} is "
                f"probably not a TLS port (write the destination as {plain_form} for a plain port, or use the "
                f"PACS's TLS port){hint}")
    if reason in _CLIENT_CERT:
        if not client_cert:
            return (f"failed the TLS handshake: the PACS demands a client certificate ({_alert(reason)}); set "
                    "pacs.tls_cert and pacs.tls_key to a certificate it trusts")
        return (f"failed the TLS handshake: the PACS refused our client certificate ({_alert(reason)}); set "
                "pacs.tls_cert and pacs.tls_key to a certificate signed by a CA the PACS trusts")
    if reason in _OLD_PROTOCOL:
        return (f"failed the TLS handshake: the PACS does not speak TLS 1.2 or later ({_alert(reason)}); enable "
                "TLS 1.2+ at the PACS")
    return (f"failed the TLS handshake ({_alert(reason) if reason else type(exc).__name__}); check pacs.tls_ca, "
            "pacs.tls_cert / pacs.tls_key and that the port speaks TLS")


def _alert(reason: str) -> str:
    for prefix in ("TLSV13_ALERT_", "TLSV1_ALERT_", "SSLV3_ALERT_"):
        if reason.startswith(prefix):
            return "alert: " + reason[len(prefix):].replace("_", " ").lower()
    return reason.replace("_", " ").lower()


def find_ssl_error(exc: BaseException | None) -> BaseException | None:
    """The ``ssl`` error inside an exception chain (requests and urllib3 wrap it several times), or None."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen or not isinstance(e, BaseException):
            continue
        seen.add(id(e))
        if isinstance(e, ssl.SSLError):
            return e
        todo += [e.__cause__, e.__context__, getattr(e, "reason", None), *[a for a in e.args
                                                                          if isinstance(a, BaseException)]]
    return None
