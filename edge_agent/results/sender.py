"""C-STORE of queued results to one PACS destination (pynetdicom Storage SCU).

Each destination (``AET@host:port``) is its own queue with its own thread
(``pacs-<AET>``): a destination that is down never holds up another. A
thread takes what is due (oldest first), opens one association for it and
stores each object (PS3.4 B.2.3 statuses):

* Success (0000), a Warning (B000, B006, B007) or Duplicate SOP Instance
  (0111: the peer already has it) → ``done``;
* a Failure status, a refused or aborted association, a time-out, a network
  error → tried again after an exponential back-off (``retry_min`` doubling
  up to ``retry_max``, ×1–1.25 jitter), until it has failed for longer than
  ``dead_after`` since it was queued: then ``dead`` (an ERROR line; retried
  only by hand, docs/RESULTS.md).

Log lines name the destination, the SOP Instance UID, the kind and the
status — never a patient attribute. pynetdicom is used here and in
``ingest/receiver.py`` only.
"""

from __future__ import annotations

import io
import logging
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

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
    timeout: float = 30.0  # association, DIMSE and network time-outs (s)


def backoff(attempts: int, settings: SenderSettings, rng: random.Random = random.Random()) -> float:
    """Seconds before the next try after ``attempts`` failures (exponential, capped, 0-25 % jitter)."""
    base = min(settings.retry_max, settings.retry_min * 2 ** max(0, attempts - 1))
    return base * (1.0 + 0.25 * rng.random())


class DestinationSender:
    """The thread that delivers one destination's queue; it opens its own queue connection."""

    def __init__(self, queue_path: Path, destination: Destination, settings: SenderSettings, *,
                 on_event: Callable[[str, str], None] | None = None) -> None:
        self.queue_path = Path(queue_path)
        self.destination = destination
        self.settings = settings
        self._on_event = on_event or (lambda _dest, _what: None)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.connected: bool | None = None  # the last association: True established, False failed, None not yet

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"pacs-{self.destination.ae_title}", daemon=True)
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
        d = self.destination
        ae = AE(ae_title=self.settings.calling_ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.settings.timeout
        for sop_class in sorted({row.sop_class_uid for row in due}):
            ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        try:
            assoc = ae.associate(d.host, d.port, ae_title=d.ae_title)
        except Exception as exc:  # noqa: BLE001 - a host name that does not resolve, a socket error
            self._failed(queue, due, f"cannot connect ({type(exc).__name__}: {exc})")
            return
        if not assoc.is_established:
            why = (f"rejected the association (does it know the calling AE title {self.settings.calling_ae_title} "
                   "and accept SR and KO storage?)" if assoc.is_rejected else
                   "did not answer (connection refused, aborted or timed out)")
            self.connected = False
            self._failed(queue, due, why)
            return
        self.connected = True
        try:
            for i, row in enumerate(due):
                if self._stop.is_set() or not assoc.is_established:
                    for rest in due[i:]:
                        queue.mark_retry(str(d), rest.sop_instance_uid, time.time(), "stopped before sending")
                    return
                self._store(queue, assoc, row)
        finally:
            if assoc.is_established:
                assoc.release()

    def _store(self, queue: PacsQueue, assoc, row: Due) -> None:
        d = str(self.destination)
        try:
            status = assoc.send_c_store(dcmread(io.BytesIO(row.dataset)))
        except Exception as exc:  # noqa: BLE001 - pynetdicom raises for contexts the peer did not accept
            self._failed(queue, [row], f"could not be sent ({type(exc).__name__}: {exc})")
            return
        code = getattr(status, "Status", None)
        if code in DONE_STATUSES:
            queue.mark_done(d, row.sop_instance_uid)
            self._on_event(d, "done")
            if code:
                log.warning("PACS %s stored %s %s with status 0x%04X (%s)", d, row.kind, row.sop_instance_uid, code,
                            "already there" if code == 0x0111 else "warning")
            else:
                log.info("PACS %s stored %s %s", d, row.kind, row.sop_instance_uid)
            return
        why = (f"answered status 0x{code:04X}" if code is not None
               else "sent no answer (time-out or aborted association)")
        self._failed(queue, [row], why)

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
