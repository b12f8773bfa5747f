"""The part of the agent that turns final results into DICOM objects and delivers them to PACS.

:meth:`PacsDelivery.submit` runs on the pipeline thread once a series' result
is final (and again after a reopen): for each model that analysed it live it
compares the content with the latest revision queued; when it changed (or
there is none) it builds the SR and, for a positive result, the KOS — with
UIDs derived from series, model, version and revision — and commits both to
``pacs.sqlite3`` for every destination before it returns. One
:class:`~edge_agent.results.sender.DestinationSender` thread per destination
delivers them.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from pathlib import Path
from typing import Any

from edge_agent.errors import EdgeAgentError
from edge_agent.results.content import Algorithm, ModelResult, model_results
from edge_agent.results.kos import KEY_OBJECT_SELECTION, build_kos
from edge_agent.results.queue import DONE_MEMORY_S, PacsQueue, QueuedObject, read_stats
from edge_agent.results.destination import Destination
from edge_agent.results.sender import DestinationSender, SenderSettings
from edge_agent.results.sr import COMPREHENSIVE_3D_SR, build_sr
from edge_agent.results.study import StudyHeader

log = logging.getLogger(__name__)


def encode(dataset: Any) -> bytes:
    """A dataset as a DICOM Part 10 file (preamble, File Meta Information), the bytes that are sent."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def queued(dataset: Any, kind: str, sop_class_uid: str) -> QueuedObject:
    data = encode(dataset)
    return QueuedObject(str(dataset.SOPInstanceUID), sop_class_uid, kind, data, hashlib.sha256(data).hexdigest())


class PacsDelivery:
    """Builds and queues the DICOM results; starts and stops one sender per destination."""

    def __init__(self, queue_path: Path, destinations: list[Destination], settings: SenderSettings, *,
                 site: str, device: str, on_event=None, provenance: dict | None = None) -> None:
        self.queue_path = Path(queue_path)
        self.provenance = provenance  # {agent_version, config_hash}: named in every SR's algorithm parameters
        self.destinations = list(destinations)
        self.settings = settings
        self.site, self.device = site, device
        PacsQueue(self.queue_path).close()  # created (or found unreadable) at start, not at the first result
        self.senders = [DestinationSender(self.queue_path, d, settings, on_event=on_event) for d in self.destinations]
        self._next_prune = 0.0

    def start(self) -> None:
        for sender in self.senders:
            sender.start()

    def stop(self) -> None:
        for sender in reversed(self.senders):
            sender.stop()

    def threads(self) -> list:
        return [t for s in self.senders for t in s.threads()]

    def stats(self) -> dict:
        """Per destination: counts by state, oldest pending age, last error (a read-only connection)."""
        stats = read_stats(self.queue_path)
        for d in self.destinations:
            stats.setdefault(str(d), {"pending": 0, "sending": 0, "done": 0, "dead": 0,
                                      "oldest_pending_age_s": None, "last_error": None})
        return stats

    def submit(self, result: dict, header: StudyHeader, algorithms: dict[str, Algorithm], body_part: str = "",
               decided_at: float | None = None) -> list[str]:
        """Queue the SR (and KOS) of every changed model result of a final series; returns the new SOP Instance
        UIDs (empty when nothing changed). Called from one thread (the pipeline's)."""
        decided_at = time.time() if decided_at is None else decided_at
        new: list[str] = []
        queue = PacsQueue(self.queue_path)
        try:
            for model_result in model_results(result, algorithms, body_part):
                new += self._submit_one(queue, model_result, header, decided_at)
            if time.monotonic() >= self._next_prune:
                self._next_prune = time.monotonic() + 3600.0
                queue.prune(time.time() - DONE_MEMORY_S)
        finally:
            queue.close()
        if new:
            for sender in self.senders:
                sender.wake()
        return new

    def _submit_one(self, queue: PacsQueue, result: ModelResult, header: StudyHeader, decided_at: float) -> list[str]:
        a = result.algorithm
        digest = result.digest()
        latest = queue.latest(result.series_instance_uid, a.name, a.version)
        if latest is not None and latest[1] == digest:
            return []  # the same answer as the revision already queued: nothing new to send
        revision = 1 if latest is None else latest[0] + 1
        common = dict(revision=revision, site=self.site, device=self.device, decided_at=decided_at)
        try:
            objects = [queued(build_sr(result, header, provenance=self.provenance, **common), "sr",
                              COMPREHENSIVE_3D_SR)]
            kos = build_kos(result, header, **common)
        except EdgeAgentError:
            raise
        except Exception as exc:  # noqa: BLE001 - highdicom's messages may quote header values: type only
            raise EdgeAgentError(f"The DICOM result of model {a.name} on series {result.series_instance_uid} "
                                 f"could not be built ({type(exc).__name__}); nothing was queued for it.") from None
        if kos is not None:
            objects.append(queued(kos, "kos", KEY_OBJECT_SELECTION))
        queue.add(series_instance_uid=result.series_instance_uid, model=a.name, model_version=a.version,
                  revision=revision, digest=digest, objects=objects,
                  destinations=[str(d) for d in self.destinations])
        log.info("series %s: DICOM results of %s %s revision %d queued for %d destination(s): %s",
                 result.series_instance_uid, a.name, a.version, revision, len(self.destinations),
                 ", ".join(f"{o.kind} {o.sop_instance_uid}" for o in objects))
        return [o.sop_instance_uid for o in objects]
