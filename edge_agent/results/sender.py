"""Delivery of queued results to one PACS destination: the thread, the queue and the back-off, once.

Each destination (``str(destination)``: ``AET@host:port``, ``tls:AET@host:port``
or a DICOMweb service root) is its own queue with its own thread
(``pacs-<AET or host>``): a destination that is down never holds up another.
A thread takes what is due (oldest first) and hands it to its destination's
:class:`Transport`, which tells per object what became of it:

* ``done``: C-STORE Success (0000), a Warning (B000, B006, B007) or Duplicate
  SOP Instance (0111: the peer already has it) — PS3.4 B.2.3; or STOW-RS
  stored it, or answered that it already has it (PS3.18 10.5,
  edge_agent/results/stow.py);
* ``retry``: a Failure status, a refused or aborted association, a TLS
  handshake that failed, an HTTP error, a time-out, a network error → tried
  again after an exponential back-off (``retry_min`` doubling up to
  ``retry_max``, ×1–1.25 jitter), until it has failed for longer than
  ``dead_after`` since it was queued: then ``dead`` (an ERROR line; retried
  only by hand, docs/RESULTS.md);
* ``stopped``: not tried (the agent is stopping, the association ended):
  pending again at once.

Transports: :class:`DimseTransport` (C-STORE, plain or over DICOM TLS, here)
and ``StowTransport`` (edge_agent/results/stow.py, the only user of the HTTP
library). Log lines name the destination, the SOP Instance UID, the kind and
the status — never a patient attribute, never a credential. pynetdicom is used
here, in ``ingest/receiver.py`` and in the checks (``run --check``,
``doctor``) only.
"""

from __future__ import annotations

import io
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Protocol

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from edge_agent.results import tls
from edge_agent.results.destination import Destination
from edge_agent.results.queue import Due, PacsQueue

log = logging.getLogger(__name__)

BATCH = 20
DONE_STATUSES = {0x0000, 0x0111, 0xB000, 0xB006, 0xB007}


@dataclass(frozen=True)
class SenderSettings:
    calling_ae_title: str = "EDGE_AGENT"
    dead_after: float = 24 * 3600.0
    retry_min: float = 5.0
    retry_max: float = 300.0
    timeout: float = 30.0  # association, DIMSE and network time-outs; STOW connect and read time-outs (s)
    # TLS (tls: and https:// destinations): edge_agent/results/tls.py
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    # STOW-RS credentials: a Bearer token, or HTTP basic; never in a repr, a log line or an error sentence
    stow_token: str = field(default="", repr=False)
    stow_user: str = ""
    stow_password: str = field(default="", repr=False)

    @classmethod
    def from_config(cls, pacs) -> "SenderSettings":
        """From the ``[pacs]`` section (edge_agent.config.PacsSection)."""
        return cls(calling_ae_title=pacs.ae_title, dead_after=pacs.dead_after, retry_max=pacs.retry_max,
                   tls_ca=pacs.tls_ca, tls_cert=pacs.tls_cert, tls_key=pacs.tls_key, stow_token=pacs.stow_token,
                   stow_user=pacs.stow_user, stow_password=pacs.stow_password)

    def tls_context(self):
        """The client TLS context of tls: and https:// destinations (a ConfigError sentence for bad material)."""
        return tls.client_context(self.tls_ca, self.tls_cert, self.tls_key)


def backoff(attempts: int, settings: SenderSettings, rng: random.Random = random.Random()) -> float:
    """Seconds before the next try after ``attempts`` failures (exponential, capped, 0-25 % jitter)."""
    base = min(settings.retry_max, settings.retry_min * 2 ** max(0, attempts - 1))
    return base * (1.0 + 0.25 * rng.random())


@dataclass(frozen=True)
class Outcome:
    """What became of one object: ``done`` (``note``: a warning status worth a line, e.g. "status 0x0111
    (already there)"), ``retry`` (``why``: a phrase for the WARNING line and the queue's last_error) or
    ``stopped`` (not tried: pending again at once)."""

    state: str
    why: str = ""
    note: str = ""


DONE = Outcome("done")
STOPPED = Outcome("stopped")


def retry(why: str) -> Outcome:
    return Outcome("retry", why)


class Transport(Protocol):
    """The per-transport part of a destination's delivery."""

    #: The last connection: True established, False failed, None not tried yet.
    connected: bool | None

    def send(self, rows: list[Due], stopping: Callable[[], bool]) -> Iterator[tuple[Due, Outcome]]:
        """Deliver ``rows``; yield each row with its outcome as soon as it is known (every row exactly once)."""
        ...


def make_transport(destination: Destination, settings: SenderSettings) -> Transport:
    """The transport of ``destination``'s kind (TLS material is loaded here: a bad file fails at start)."""
    if destination.kind == "stow":
        from edge_agent.results.stow import StowTransport  # noqa: PLC0415 - the HTTP library only when used

        return StowTransport(destination, settings)
    return DimseTransport(destination, settings)


class DimseTransport:
    """C-STORE (pynetdicom Storage SCU): one association per batch; over DICOM TLS for ``tls:`` destinations
    (TLS 1.2+, the PACS certificate verified against pacs.tls_ca, its host name checked, our certificate for
    mutual TLS)."""

    def __init__(self, destination: Destination, settings: SenderSettings) -> None:
        self.destination = destination
        self.settings = settings
        self.connected: bool | None = None
        self.context = settings.tls_context() if destination.kind == "dimse-tls" else None
        self.recorder = tls.FailureRecorder(self.context) if self.context is not None else None

    def _tls_failure(self) -> str | None:
        if self.recorder is None or self.recorder.error is None:
            return None
        d = self.destination
        return tls.explain(self.recorder.error, d.host, d.port, client_cert=bool(self.settings.tls_cert),
                           plain_form=d.plain_form)

    def send(self, rows: list[Due], stopping: Callable[[], bool]) -> Iterator[tuple[Due, Outcome]]:
        d = self.destination
        ae = AE(ae_title=self.settings.calling_ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.settings.timeout
        for sop_class in sorted({row.sop_class_uid for row in rows}):
            ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        if self.recorder is not None:
            self.recorder.clear()
        tls_args = (self.context, d.host) if self.context is not None else None
        try:
            assoc = ae.associate(d.host, d.port, ae_title=d.ae_title, tls_args=tls_args)
        except Exception as exc:  # noqa: BLE001 - a host name that does not resolve, a socket error
            self.connected = False
            why = self._tls_failure() or f"cannot connect ({type(exc).__name__}: {exc})"
            yield from ((row, retry(why)) for row in rows)
            return
        if not assoc.is_established:
            why = self._tls_failure() or (
                f"rejected the association (does it know the calling AE title {self.settings.calling_ae_title} "
                "and accept SR and KO storage?)" if assoc.is_rejected else
                "did not answer (connection refused, aborted or timed out)")
            self.connected = False
            yield from ((row, retry(why)) for row in rows)
            return
        self.connected = True
        try:
            for row in rows:
                if stopping() or not assoc.is_established:
                    yield row, STOPPED
                    continue
                yield row, self._store(assoc, row)
        finally:
            if assoc.is_established:
                assoc.release()

    def _store(self, assoc, row: Due) -> Outcome:
        try:
            status = assoc.send_c_store(dcmread(io.BytesIO(row.dataset)))
        except Exception as exc:  # noqa: BLE001 - pynetdicom raises for contexts the peer did not accept
            return retry(f"could not be sent ({type(exc).__name__}: {exc})")
        code = getattr(status, "Status", None)
        if code in DONE_STATUSES:
            if not code:
                return DONE
            return Outcome("done", note=f"status 0x{code:04X} ({'already there' if code == 0x0111 else 'warning'})")
        if code is not None:
            return retry(f"answered status 0x{code:04X}")
        return retry(self._tls_failure() or "sent no answer (time-out or aborted association)")


class DestinationSender:
    """The thread that delivers one destination's queue; it opens its own queue connection."""

    def __init__(self, queue_path: Path, destination: Destination, settings: SenderSettings, *,
                 on_event: Callable[[str, str], None] | None = None, transport: Transport | None = None) -> None:
        self.queue_path = Path(queue_path)
        self.destination = destination
        self.settings = settings
        self.transport = transport or make_transport(destination, settings)
        self._on_event = on_event or (lambda _dest, _what: None)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def connected(self) -> bool | None:
        """The last connection: True established, False failed, None not yet."""
        return self.transport.connected

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"pacs-{self.destination.label}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def wake(self) -> None:
        """Something new is queued: look now instead of at the next poll."""
        self._wake.set()

    def threads(self) -> list[threading.Thread]:
        return [self._thread] if self._thread is not None else []

    def _run(self) -> None:
        queue = PacsQueue(self.queue_path)
        try:
            again = queue.reset_sending(str(self.destination))
            if again:
                log.info("PACS %s: %d object(s) were being sent when the agent stopped; sending them again",
                         self.destination, again)
            while not self._stop.is_set():
                try:
                    due = queue.due(str(self.destination), BATCH)
                    if due:
                        self._deliver(queue, due)
                        continue
                    wait = 1.0
                    next_at = queue.next_due_at(str(self.destination))
                    if next_at is not None:
                        wait = min(wait, max(0.05, next_at - time.time()))
                except Exception as exc:  # noqa: BLE001 - the thread's boundary: log, breathe, go on
                    log.error("PACS %s: the sender failed (%s: %s); trying again in 5 s", self.destination,
                              type(exc).__name__, exc)
                    wait = 5.0
                self._wake.wait(wait)
                self._wake.clear()
        finally:
            queue.close()

    def _deliver(self, queue: PacsQueue, due: list[Due]) -> None:
        """Hand the batch to the transport; done rows are marked as they come, the rows to try again once at
        the end, one WARNING line per distinct reason."""
        d = str(self.destination)
        failed: dict[str, list[Due]] = {}
        seen: set[str] = set()
        try:
            for row, outcome in self.transport.send(due, self._stop.is_set):
                seen.add(row.sop_instance_uid)
                if outcome.state == "done":
                    queue.mark_done(d, row.sop_instance_uid)
                    self._on_event(d, "done")
                    if outcome.note:
                        log.warning("PACS %s stored %s %s with %s", d, row.kind, row.sop_instance_uid, outcome.note)
                    else:
                        log.info("PACS %s stored %s %s", d, row.kind, row.sop_instance_uid)
                elif outcome.state == "stopped":
                    queue.mark_retry(d, row.sop_instance_uid, time.time(), "stopped before sending")
                else:
                    failed.setdefault(outcome.why, []).append(row)
        finally:
            for why, rows in failed.items():
                self._failed(queue, rows, why)
            for row in due:  # a transport that stopped early (an exception): these go back, tried again at once
                if row.sop_instance_uid not in seen:
                    queue.mark_retry(d, row.sop_instance_uid, time.time(), "not sent (the sender failed)")

    def _failed(self, queue: PacsQueue, rows: list[Due], why: str) -> None:
        """Each row back to pending after its back-off, or dead once it has failed for ``dead_after``; one
        WARNING line for the rows tried again, one ERROR line per dead letter."""
        d = str(self.destination)
        now = time.time()
        retried: list[float] = []
        for row in rows:
            if now - row.created_at >= self.settings.dead_after:
                queue.mark_dead(d, row.sop_instance_uid, why)
                self._on_event(d, "dead")
                log.error("PACS %s: %s %s is a dead letter after %d attempts over %.0f s (last: %s); see "
                          "docs/RESULTS.md to retry it", d, row.kind, row.sop_instance_uid, row.attempts,
                          now - row.created_at, why)
                continue
            delay = backoff(row.attempts, self.settings)
            queue.mark_retry(d, row.sop_instance_uid, now + delay, why)
            self._on_event(d, "retry")
            retried.append(delay)
        if retried:
            what = rows[0].sop_instance_uid if len(rows) == 1 else f"{len(retried)} objects"
            log.warning("PACS %s %s; %s tried again in %.0f s (attempt %d)", d, why, what, min(retried),
                        max(r.attempts for r in rows))
