"""The part of the agent that turns final results into DICOM objects and delivers them to PACS.

:meth:`PacsDelivery.submit` runs on the pipeline thread once a series' result
is final (and again after a reopen): for each model that analysed it live it
compares the content with the latest revision queued; when it changed (or
there is none) it builds the SR and, for a positive result, the KOS — with
UIDs derived from series, model, version and revision — and, when the
revision it supersedes had a KOS, the IOCM rejection note that withdraws that
KOS (the alert was retracted, or its key images changed: at most one KOS per
series and model is ever in force in the PACS, the latest revision's). All of
a revision's objects are committed to ``pacs.sqlite3`` for every destination
in one transaction before it returns. One
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
from edge_agent.results.capture import SECONDARY_CAPTURE, build_capture
from edge_agent.results.content import Algorithm, ModelResult, algorithm_of_entry, model_results
from edge_agent.results.kos import KEY_OBJECT_SELECTION, build_kos, build_rejection_note
from edge_agent.results.queue import DONE_MEMORY_S, PacsQueue, QueuedObject, Revision, read_stats
from edge_agent.results.destination import Destination
from edge_agent.results.sender import DestinationSender, SenderSettings
from edge_agent.results.sr import COMPREHENSIVE_3D_SR, build_sr, reported_findings
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
                 site: str, device: str, on_event=None, provenance: dict | None = None,
                 secondary_capture: bool = False) -> None:
        self.queue_path = Path(queue_path)
        self.provenance = provenance  # {agent_version, config_hash}: named in every SR's algorithm parameters
        self.destinations = list(destinations)
        self.settings = settings
        self.site, self.device = site, device
        self.secondary_capture = secondary_capture  # pacs.secondary_capture: a key image with each positive result
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
               decided_at: float | None = None, key_images: dict | None = None) -> list[str]:
        """Queue the SR (and KOS) of every changed model result of a final series; returns the new SOP Instance
        UIDs (empty when nothing changed). Called from one thread (the pipeline's)."""
        decided_at = time.time() if decided_at is None else decided_at
        new: list[str] = []
        queue = PacsQueue(self.queue_path)
        try:
            for model_result in model_results(result, algorithms, body_part) + \
                    self._no_longer_assessed(queue, result, algorithms, body_part):
                new += self._submit_one(queue, model_result, header, decided_at,
                                        (key_images or {}).get(model_result.algorithm.name))
            if time.monotonic() >= self._next_prune:
                self._next_prune = time.monotonic() + 3600.0
                queue.prune(time.time() - DONE_MEMORY_S)
        finally:
            queue.close()
        if new:
            for sender in self.senders:
                sender.wake()
        return new

    def _submit_one(self, queue: PacsQueue, result: ModelResult, header: StudyHeader, decided_at: float,
                    key_image: dict | None = None) -> list[str]:
        a = result.algorithm
        digest = result.digest()
        latest = queue.latest_revision(result.series_instance_uid, a.name, a.version)
        if latest is not None and latest.digest == digest:
            return []  # the same answer as the revision already queued: nothing new to send
        revision = 1 if latest is None else latest.revision + 1
        withdrawn = self._superseded_kos(result, latest)
        common = dict(revision=revision, site=self.site, device=self.device, decided_at=decided_at)
        try:
            objects = [queued(build_sr(result, header, provenance=self.provenance, withdrawn_kos=withdrawn,
                                       **common), "sr", COMPREHENSIVE_3D_SR)]
            kos = build_kos(result, header, **common)
            if kos is not None:
                objects.append(queued(kos, "kos", KEY_OBJECT_SELECTION))
        except EdgeAgentError:
            raise
        except Exception as exc:  # noqa: BLE001 - highdicom's messages may quote header values: type only
            raise EdgeAgentError(f"The DICOM result of model {a.name} on series {result.series_instance_uid} "
                                 f"could not be built ({type(exc).__name__}); nothing was queued for it.") from None
        new_kos = None if kos is None else objects[-1]
        if kos is not None and self.secondary_capture:
            objects += self._capture(result, header, key_image, common)
        if withdrawn:
            captured = result.uid("sc", latest.revision)  # the superseded revision's key image, if it had one
            objects += self._rejection(result, header, withdrawn, new_kos, common,
                                       (captured,) if queue.holds(captured) else ())
        queue.add(series_instance_uid=result.series_instance_uid, model=a.name, model_version=a.version,
                  revision=revision, digest=digest, objects=objects,
                  destinations=[str(d) for d in self.destinations])
        log.info("series %s: DICOM results of %s %s revision %d queued for %d destination(s): %s",
                 result.series_instance_uid, a.name, a.version, revision, len(self.destinations),
                 ", ".join(f"{o.kind} {o.sop_instance_uid}" for o in objects))
        return [o.sop_instance_uid for o in objects]

    @staticmethod
    def _no_longer_assessed(queue: PacsQueue, result: dict, algorithms: dict[str, Algorithm],
                            body_part: str) -> list[ModelResult]:
        """A live model that flagged key images on this series before and now cannot decide it (a reopen made
        the series not assessable, rejected, skipped or failed): a revision that withdraws them — an SR whose
        findings (those of the revision it replaces) are Indeterminate, saying why, and the rejection note.
        Its source images are the earlier SR's. Nothing when its last revision flagged nothing (a negative SR
        is no alarm) or the SR it would replace is no longer held (its findings unknown: one WARNING names the
        KOS left flagged)."""
        out = []
        for entry in result.get("models", []):
            status = entry.get("status")
            if status == "analysed" or entry.get("mode", "live") != "live" or not entry.get("name"):
                continue
            name, version = entry["name"], entry.get("version", "")
            latest = queue.latest_revision(result["series_instance_uid"], name, version)
            if latest is None or not latest.kos_sop_instance_uid:
                continue
            previous = queue.dataset_of("sr", result["series_instance_uid"], name, version, latest.revision)
            found, images = reported_findings(previous) if previous else ([], [])
            if not found or not images:
                log.warning("series %s: %s %s can no longer decide it (%s), but the findings of its revision %d are "
                            "no longer held: KOS %s stays flagged in the PACS until rejected there by hand",
                            result["series_instance_uid"], name, version, status, latest.revision,
                            latest.kos_sop_instance_uid)
                continue
            algorithm = algorithm_of_entry(entry, algorithms)
            # the images the withdrawn finding was about (the SR must reference some; no KOS flags them now)
            keys = [{"sop_instance_uid": uid, "probability": None} for uid in images]
            findings = [{"code": code, "label": label, "probability": None, "positive": False, "threshold": None,
                         "key_slices": keys, "volume_ml": None, "diameter_mm": None, "assessed": False,
                         "status": status} for code, label in found]
            out.append(ModelResult(result["series_instance_uid"], result["study_instance_uid"], algorithm, findings,
                                   body_part))
        return out

    @staticmethod
    def _superseded_kos(result: ModelResult, latest: Revision | None) -> str | None:
        """The KOS of the revision a new one supersedes (flagged in the PACS until withdrawn), or None."""
        if latest is None:
            return None
        if not latest.kos_known:
            log.warning("series %s: whether revision %d of %s %s had key images (a KOS) is no longer known (queued "
                        "by an older agent, its objects since forgotten); no rejection note is sent for it",
                        result.series_instance_uid, latest.revision, result.algorithm.name,
                        result.algorithm.version)
            return None
        return latest.kos_sop_instance_uid

    @staticmethod
    def _capture(result: ModelResult, header: StudyHeader, key_image: dict | None, common: dict) -> list[QueuedObject]:
        """The secondary-capture key image of a positive revision, or none (no thumbnail kept; it cannot be built:
        the SR and KOS go regardless, it is the optional third object)."""
        if key_image is None:
            log.info("series %s: no secondary-capture key image for %s revision %d (no thumbnail of its key slices "
                     "was kept)", result.series_instance_uid, result.algorithm.name, common["revision"])
            return []
        try:
            sc = build_capture(result, header, key_sop_instance_uid=key_image["sop_instance_uid"],
                               image=key_image["image"], orientation=key_image.get("orientation") or (),
                               boxes=key_image.get("boxes") or (), **common)
            return [queued(sc, "sc", SECONDARY_CAPTURE)]
        except Exception as exc:  # noqa: BLE001 - highdicom's messages may quote header values: type only
            log.error("series %s: the secondary-capture key image of %s revision %d could not be built (%s); the SR "
                      "and KOS are queued without it", result.series_instance_uid, result.algorithm.name,
                      common["revision"], type(exc).__name__)
            return []

    def _rejection(self, result: ModelResult, header: StudyHeader, withdrawn: str, new_kos: QueuedObject | None,
                   common: dict, captures: tuple[str, ...] = ()) -> list[QueuedObject]:
        """The rejection note withdrawing ``withdrawn``, or none when it cannot be built.

        A failure here does not fail the revision: its SR (which says in words that the earlier finding is
        withdrawn) and KOS are what the PACS most needs — failing them too would leave the superseded positive
        SR as the latest word there, and nothing would try again before the next reopen. So the revision is
        queued without the note and one ERROR line names the KOS left flagged, for a person to reject by hand.
        """
        try:
            note = build_rejection_note(result, header, rejected_kos=withdrawn, rejected_captures=captures,
                                        replaced_by=None if new_kos is None else new_kos.sop_instance_uid, **common)
            return [queued(note, "rejection", KEY_OBJECT_SELECTION)]
        except Exception as exc:  # noqa: BLE001 - highdicom's messages may quote header values: type only
            log.error("series %s: the rejection note withdrawing KOS %s of %s %s could not be built (%s); revision "
                      "%d is queued without it and that KOS stays flagged in the PACS until rejected there by hand",
                      result.series_instance_uid, withdrawn, result.algorithm.name, result.algorithm.version,
                      type(exc).__name__, common["revision"])
            return []
