"""STOW-RS (DICOMweb, PS3.18 10.5) of queued results: the HTTP transport of a ``http(s)://`` destination.

A batch of due objects is POSTed to ``{root}/studies`` as one
``multipart/related; type="application/dicom"`` request (dicomweb-client),
each object the Part 10 bytes kept in the queue. The answer, per object:

* 200 (and other 2xx but 202): stored → ``done``;
* 202 Accepted / 409 Conflict: each object is looked up in the answer's
  Failed SOP Sequence and Referenced SOP Sequence: referenced → ``done``;
  failed with reason 0x0111 (duplicate), or a reason whose text says it is
  already there → ``done``; failed otherwise, or not named at all → ``retry``;
* any other 4xx (401/403 wrong credentials, 404 wrong service root, 413, …),
  408, 429, 5xx, a time-out, a refused connection or a failed TLS handshake
  → ``retry`` with the back-off, the WARNING naming the HTTP status and its
  standard reason phrase (never the body, which could echo patient data).

Authentication: ``pacs.stow_token`` (``Authorization: Bearer``) or
``pacs.stow_user`` + ``pacs.stow_password`` (HTTP basic), set on the session
only: never logged, never in an error sentence. https uses the TLS context of
edge_agent/results/tls.py (pacs.tls_ca / tls_cert / tls_key). Proxy variables,
``~/.netrc`` and ``REQUESTS_CA_BUNDLE`` are not used (``trust_env`` off): what
reaches the PACS is what the configuration says.

This module is the only user of the HTTP library (requests, through
dicomweb-client).
"""

from __future__ import annotations

import io
import logging
import socket
import ssl
from http import HTTPStatus
from typing import Callable, Iterator

import requests
from dicomweb_client import DICOMwebClient
from pydicom import Dataset, dcmread
from requests.adapters import HTTPAdapter

from edge_agent.errors import ConfigError
from edge_agent.results import tls
from edge_agent.results.destination import Destination
from edge_agent.results.sender import DONE, STOPPED, Outcome, SenderSettings, retry
from edge_agent.results.queue import Due

log = logging.getLogger(__name__)

DUPLICATE = 0x0111
#: PS3.18 Table 10.5.3-4 / PS3.4 B.2.3 failure reasons, in words for the WARNING line.
FAILURE_REASONS = {0x0110: "processing failure", 0x0122: "SOP class not supported", 0x0124: "not authorized",
                   0xA700: "out of resources", 0xA900: "data set does not match its SOP class",
                   0xC000: "cannot understand", 0xC122: "transfer syntax not supported"}
_DUPLICATE_WORDS = ("already exist", "already stored", "already there", "duplicate")


class _TlsAdapter(HTTPAdapter):
    """requests with our own SSL context: TLS 1.2+, pacs.tls_ca (not certifi's bundle), our client certificate."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self._context = context
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args, **kwargs):
        kwargs["ssl_context"] = self._context
        return super().init_poolmanager(*args, **kwargs)

    def build_connection_pool_key_attributes(self, request, verify, cert=None):
        host_params, _ = super().build_connection_pool_key_attributes(request, verify, cert)
        return host_params, {"ssl_context": self._context}

    def cert_verify(self, conn, url, verify, cert):
        # The context verifies (CERT_REQUIRED, host name checked); keep requests from adding certifi's bundle
        # to it or loading certificate files of its own.
        conn.cert_reqs = "CERT_REQUIRED"
        conn.ca_certs = conn.ca_cert_dir = None
        conn.cert_file = conn.key_file = None


def session_for(destination: Destination, settings: SenderSettings) -> requests.Session:
    """A requests session with the destination's TLS and credentials (a ConfigError sentence for bad TLS files)."""
    session = requests.Session()
    session.trust_env = False
    session.headers["Accept"] = "application/dicom+json"
    if destination.url.startswith("https://"):
        session.mount("https://", _TlsAdapter(settings.tls_context()))
    else:
        session.mount("http://", HTTPAdapter(max_retries=0))
    if settings.stow_token:
        session.headers["Authorization"] = f"Bearer {settings.stow_token}"
    elif settings.stow_user:
        session.auth = (settings.stow_user, settings.stow_password)
    return session


def client_for(destination: Destination, settings: SenderSettings, timeout: float,
               callback: Callable | None = None) -> DICOMwebClient:
    try:
        client = DICOMwebClient(destination.url, session=session_for(destination, settings),
                                timeout=(timeout, timeout), callback=callback)
    except ValueError:
        raise ConfigError(f"pacs destination {destination} is not a URL dicomweb-client accepts; give the "
                          "service root as http(s)://host[:port]/path.") from None
    client.set_http_retry_params(retry=False)  # the sender's back-off does the retrying
    return client


def status_phrase(code: int) -> str:
    """``HTTP 401 Unauthorized``: the standard phrase, never what the server wrote after the code."""
    try:
        return f"HTTP {code} {HTTPStatus(code).phrase}"
    except ValueError:
        return f"HTTP {code}"


def http_failure(code: int) -> str:
    """A retry reason for an HTTP error answer, with what to check."""
    what = f"answered {status_phrase(code)}"
    if code in (401, 403):
        return f"{what}: check pacs.stow_token, or pacs.stow_user and pacs.stow_password"
    if code in (404, 405):
        return f"{what}: check that the destination is the DICOMweb service root (objects go to <root>/studies)"
    if code in (408, 429) or code >= 500:
        return what
    return f"{what}: the PACS refused the request (tried again, but it needs fixing at the PACS)"


def network_failure(exc: BaseException, destination: Destination, settings: SenderSettings, timeout: float) -> str:
    """A retry reason for a request that got no HTTP answer: TLS, time-out, refused, unknown host."""
    found = tls.find_ssl_error(exc)
    if found is not None or isinstance(exc, requests.exceptions.SSLError):
        return tls.explain(found or exc, destination.host, destination.port, client_cert=bool(settings.tls_cert),
                           plain_form=destination.plain_form)
    if isinstance(exc, requests.exceptions.Timeout):
        return f"did not answer within {timeout:.0f} s"
    root = _root_os_error(exc)
    if destination.tls and isinstance(root, (ConnectionResetError, BrokenPipeError)):
        # urllib3 does not say whether the reset came in the handshake; on https it almost always does (a plain
        # port, or a PACS that drops a client without the certificate it wants)
        return tls.explain(root, destination.host, destination.port, client_cert=bool(settings.tls_cert),
                           plain_form=destination.plain_form)
    if isinstance(root, socket.gaierror):
        return f"cannot connect: the host name {destination.host} does not resolve"
    if isinstance(root, ConnectionRefusedError):
        return "did not answer (connection refused)"
    if root is not None:
        return f"cannot connect ({root.strerror or type(root).__name__})"
    return f"cannot connect ({type(exc).__name__})"


def _root_os_error(exc: BaseException) -> OSError | None:
    seen: set[int] = set()
    todo: list = [exc]
    found = None
    while todo:
        e = todo.pop()
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and not isinstance(e, requests.exceptions.RequestException):
            found = e if found is None or e.strerror else found
        todo += [e.__cause__, e.__context__, getattr(e, "reason", None), *e.args]
    return found


def _failure_text(item: Dataset) -> str:
    """The text values of one Failed SOP Sequence item (a server may say 'already exists' in words)."""
    texts = []
    for element in item:
        if element.VR in ("LO", "LT", "ST", "UT", "SH", "CS") and element.value:
            texts.append(str(element.value))
    return " ".join(texts).lower()


def instance_outcomes(answer: Dataset | None, status: int, rows: list[Due]) -> list[Outcome]:
    """Per row, what a STOW-RS answer (status, Store Instances Response Module) says became of it (PS3.18 10.5)."""
    failed: dict[str, Dataset] = {}
    referenced: dict[str, Dataset] = {}
    if answer is not None:
        for item in answer.get("FailedSOPSequence", None) or []:
            failed[str(item.get("ReferencedSOPInstanceUID", ""))] = item
        for item in answer.get("ReferencedSOPSequence", None) or []:
            referenced[str(item.get("ReferencedSOPInstanceUID", ""))] = item
    out = []
    for row in rows:
        uid = row.sop_instance_uid
        if uid in failed:
            reason = failed[uid].get("FailureReason", None)
            code = int(reason) if reason is not None and str(reason).strip() != "" else None
            if code == DUPLICATE or any(w in _failure_text(failed[uid]) for w in _DUPLICATE_WORDS):
                out.append(Outcome("done", note="failure reason 0x0111 (already there)" if code == DUPLICATE
                                   else f"failure reason {_code(code)} saying it is already there"))
                continue
            words = FAILURE_REASONS.get(code) if code is not None else None
            out.append(retry(f"answered {status_phrase(status)}, failure reason {_code(code)}"
                             + (f" ({words})" if words else "")))
        elif uid in referenced:
            warning = referenced[uid].get("WarningReason", None)
            out.append(Outcome("done", note=f"warning reason 0x{int(warning):04X}") if warning is not None
                       and str(warning).strip() != "" else DONE)
        elif 200 <= status < 300 and status != 202:
            out.append(DONE)
        else:
            out.append(retry(f"answered {status_phrase(status)} without naming this object"))
    return out


def _code(code: int | None) -> str:
    return "(none)" if code is None else f"0x{code:04X}"


def _answer_of(response: requests.Response) -> Dataset | None:
    """The Store Instances Response of an error answer (409), or None when it has none we can read."""
    if not response.content or response.headers.get("Content-Type", "").split(";")[0].strip() not in (
            "application/dicom+json", "application/json"):
        return None
    try:
        return Dataset.from_json(response.json())
    except Exception:  # noqa: BLE001 - an unreadable answer: each object is tried again
        return None


class StowTransport:
    """STOW-RS to a DICOMweb service root; one POST per batch."""

    def __init__(self, destination: Destination, settings: SenderSettings) -> None:
        self.destination = destination
        self.settings = settings
        self.connected: bool | None = None
        self._status: int | None = None
        self.client = client_for(destination, settings, settings.timeout, callback=self._remember)

    def _remember(self, response, *args, **kwargs):
        self._status = response.status_code
        return response

    def send(self, rows: list[Due], stopping: Callable[[], bool]) -> Iterator[tuple[Due, Outcome]]:
        if stopping():
            yield from ((row, STOPPED) for row in rows)
            return
        try:
            datasets = [dcmread(io.BytesIO(row.dataset)) for row in rows]
        except Exception as exc:  # noqa: BLE001 - never expected: the queue holds what the agent wrote
            why = f"could not be read from the queue ({type(exc).__name__})"
            yield from ((row, retry(why)) for row in rows)
            return
        self._status = None
        try:
            answer = self.client.store_instances(datasets)
            status = self._status or 200
        except requests.HTTPError as exc:
            self.connected = True
            status = exc.response.status_code if exc.response is not None else 0
            answer = _answer_of(exc.response) if status == 409 else None
            if status != 409 or answer is None:
                why = http_failure(status)
                yield from ((row, retry(why)) for row in rows)
                return
        except requests.RequestException as exc:
            self.connected = False
            why = network_failure(exc, self.destination, self.settings, self.settings.timeout)
            yield from ((row, retry(why)) for row in rows)
            return
        except Exception as exc:  # noqa: BLE001 - an answer dicomweb-client cannot read (type only: no body text)
            self.connected = True
            why = f"sent an answer that cannot be read ({type(exc).__name__})"
            yield from ((row, retry(why)) for row in rows)
            return
        self.connected = True
        yield from zip(rows, instance_outcomes(answer, status, rows))


def check(destination: Destination, settings: SenderSettings, timeout: float) -> tuple[bool, str]:
    """``run --check``: a QIDO-RS ``GET {root}/studies?limit=1`` with the destination's TLS and credentials —
    reachable, TLS trusted, credentials accepted; (ok, detail)."""
    try:
        client = client_for(destination, settings, timeout)
    except ConfigError as exc:
        return False, str(exc).rstrip(".")
    auth = ("a Bearer token" if settings.stow_token else f"user {settings.stow_user}" if settings.stow_user
            else "no credentials")
    over = "over TLS (certificate verified), " if destination.tls else ""
    try:
        client.search_for_studies(limit=1, fields=["StudyInstanceUID"])
    except requests.HTTPError as exc:
        code = exc.response.status_code if exc.response is not None else 0
        if code == 405:  # a STOW-only endpoint: reachable, and the credentials got past authentication
            return True, (f"answers {over}with {auth} (QIDO-RS not offered: {status_phrase(code)}); STOW-RS to "
                          f"{destination.url}/studies")
        return False, http_failure(code)
    except requests.RequestException as exc:
        return False, network_failure(exc, destination, settings, timeout)
    except Exception as exc:  # noqa: BLE001 - an answer that is not DICOM JSON
        return False, (f"answered the QIDO-RS search with something that is not DICOM JSON ({type(exc).__name__}); "
                       "check that the destination is the DICOMweb service root")
    return True, f"QIDO-RS answered {over}with {auth}; results go by STOW-RS to {destination.url}/studies"
