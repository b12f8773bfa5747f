"""A PACS destination, as configured (no pynetdicom and no HTTP library here: config checks it).

Three forms, one per transport (docs/RESULTS.md, Transports):

* ``AET@host:port`` — C-STORE (``kind`` ``dimse``);
* ``tls:AET@host:port`` — C-STORE over DICOM TLS (``dimse-tls``);
* ``http://…`` or ``https://…`` — the service root of a DICOMweb server, objects go to ``{root}/studies`` by
  STOW-RS (``stow``).

``str(destination)`` is the destination's queue key (pacs.sqlite3, metrics, doctor): for plain C-STORE exactly
``AET@host:port`` as it always was, so queues made before TLS and STOW existed keep working.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from edge_agent.errors import ConfigError

_DESTINATION = re.compile(r"^(?P<aet>[^@]{1,16})@(?P<host>\[[0-9A-Fa-f:.]+\]|[^:@\s]+):(?P<port>\d{1,5})$")
_TLS = "tls:"
KINDS = ("dimse", "dimse-tls", "stow")


@dataclass(frozen=True)
class Destination:
    """Where results go: a called AE title, host and port (C-STORE, plain or TLS), or a DICOMweb service root."""

    ae_title: str
    host: str
    port: int
    kind: str = "dimse"
    url: str = ""  # stow: the service root, normalised (no trailing /)

    def __str__(self) -> str:
        if self.kind == "stow":
            return self.url
        plain = f"{self.ae_title}@{self.host}:{self.port}"
        return _TLS + plain if self.kind == "dimse-tls" else plain

    @property
    def tls(self) -> bool:
        """Whether this destination is reached over TLS (``tls:`` or ``https://``)."""
        return self.kind == "dimse-tls" or self.url.startswith("https://")

    @property
    def label(self) -> str:
        """A short name (the sender thread is ``pacs-<label>``): the AE title, or the STOW server's host."""
        return self.host if self.kind == "stow" else self.ae_title

    @property
    def plain_form(self) -> str:
        """How this destination is written without TLS (for a sentence about a TLS destination on a plain port)."""
        if self.kind == "stow":
            return "http://" + self.url.split("://", 1)[1]
        return f"{self.ae_title}@{self.host}:{self.port}"

    @property
    def transport(self) -> str:
        return {"dimse": "C-STORE", "dimse-tls": "C-STORE over DICOM TLS", "stow": "STOW-RS"}[self.kind]


def _redacted(text: str) -> str:
    """``text`` with any ``user:password@`` after a ``scheme://`` hidden: an error sentence never shows it."""
    return re.sub(r"(?i)^([a-z][a-z0-9+.-]*://)[^/?#]*@", r"\1…@", text)


def _bad(text: str) -> ConfigError:
    return ConfigError(f"pacs destination {_redacted(text)!r} is not AET@host:port (C-STORE: an AE title of 1-16 "
                       "characters, a host and a TCP port), tls:AET@host:port (C-STORE over DICOM TLS) or the "
                       "http:// or https:// service root of a DICOMweb server (STOW-RS); e.g. PACS@10.0.0.5:104, "
                       "tls:PACS@pacs.example:2762 or https://pacs.example/dicom-web.")


def parse_destination(text: str) -> Destination:
    """One of the three forms → :class:`Destination`; anything else is a :class:`ConfigError` sentence."""
    text = str(text).strip()
    if re.match(r"(?i)^https?://", text):
        return _parse_url(text)
    kind, rest = "dimse", text
    if text[:len(_TLS)].lower() == _TLS:
        kind, rest = "dimse-tls", text[len(_TLS):]
    if "://" in rest or rest.startswith("/"):  # dicom://…, tls://…: not an AE title
        raise _bad(text)
    match = _DESTINATION.match(rest)
    if not match or not match["aet"].strip() or not 0 < int(match["port"]) <= 65535:
        raise _bad(text)
    return Destination(match["aet"].strip(), match["host"].strip("[]"), int(match["port"]), kind)


def _parse_url(text: str) -> Destination:
    parts = urlsplit(text)
    if "@" in parts.netloc:
        raise ConfigError(f"pacs destination {_redacted(text)!r} carries credentials in its URL; give them as "
                          "pacs.stow_user and pacs.stow_password (or pacs.stow_token) instead, never in the "
                          "destination (it is logged and shown).")
    if parts.query or parts.fragment or text.endswith(("?", "#")):
        raise ConfigError(f"pacs destination {text!r} has a query or fragment; give the DICOMweb service root "
                          "only, e.g. https://pacs.example/dicom-web (objects are posted to <root>/studies).")
    try:
        port = parts.port
    except ValueError:
        port = -1
    host = parts.hostname or ""
    if not host or port == -1 or port == 0 or any(c.isspace() for c in text):
        raise _bad(text)
    scheme = parts.scheme.lower()
    netloc = parts.netloc.lower()
    url = f"{scheme}://{netloc}{parts.path.rstrip('/')}"
    return Destination("", host, port or (443 if scheme == "https" else 80), "stow", url)
