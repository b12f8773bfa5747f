"""What becomes of a decoded file: handed over, resumed, duplicate, conflict, excluded, quarantined.

Same SOP Instance UID twice:

* identical decoded content → a duplicate: recorded, counted, not handed
  over again (a resend; receivers and exporters do this);
* different content → a *conflict*: the first one stands and the later file
  is quarantined with the reason, and ``on_rejected`` is called. A corrected
  image must carry a new SOP Instance UID (PS3.3 C.12.1.1.1: the UID
  identifies one instance), so a silent re-analysis would hide a standards
  violation from the people who must look at it.

Every verdict runs inside an error boundary (:meth:`Verdicts.judge`): a
failure is logged and the file forgotten by the tracker, so the next rescan
judges it again; a failing ``on_file`` quarantines the file.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from edge_agent.boundary import disk_full, is_fatal
from edge_agent.dicom import Slice
from edge_agent.errors import EdgeAgentError
from edge_agent.ingest import ledger as L
from edge_agent.ingest import quarantine as Q
from edge_agent.ingest.settings import IngestedFile, IngestSettings
from edge_agent.ingest.stable import Candidate, StableTracker, cannot_become_dicom, ends_in_file_meta
from edge_agent.logs import SERIES_LOG

log = logging.getLogger(__name__)
story = logging.getLogger(SERIES_LOG)

COUNTERS = ("events", "accepted", "resumed", "duplicates", "conflicts", "excluded", "quarantined",
            "pipeline_errors", "retries", "deleted", "rescans", "rescan_found", "disk_full_pauses")


@dataclass
class Decoded:
    """The outcome of reading one file on a decode thread."""

    path: Path
    kind: str  # ok | excluded | bad | missing
    cand: Candidate | None = None  # None for files re-emitted on resume
    slices: list[Any] = field(default_factory=list)
    message: str = ""
    identity: tuple[int, int] = (0, 0)  # (size, mtime_ns) when it was read
    received_at: float = 0.0


class Counters:
    """Thread-safe event counters for ``Ingest.stats()``."""

    def __init__(self) -> None:
        self._values = dict.fromkeys(COUNTERS, 0)
        self._lock = threading.Lock()

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] += n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)


class Verdicts:
    """Judges decoded files against the ledger (called from ingest-main only)."""

    def __init__(self, settings: IngestSettings, ledger: L.Ledger, tracker: StableTracker, watch_dir: Path,
                 counters: Counters, on_file: Callable[[IngestedFile], None],
                 on_rejected: Callable[[Path, str], None] | None) -> None:
        self.settings = settings
        self._ledger = ledger
        self._tracker = tracker
        self._watch_dir = watch_dir
        self._counters = counters
        self._on_file = on_file
        self._on_rejected = on_rejected

    def judge(self, item: Decoded) -> None:
        """Decide what ``item`` is, record it, hand it over or quarantine it; never raises."""
        try:
            self._judge(item)
        except BaseException as err:  # noqa: BLE001 - a panic must not end ingest-main
            if is_fatal(err) or disk_full(err):  # a full state disk pauses the intake (Ingest holds the item)
                raise
            log.exception("ingest failed on %s; it will be retried at the next rescan", item.path)
            self._tracker.forget(item.path)

    def _judge(self, item: Decoded) -> None:
        cand = item.cand
        if cand is None:  # resume of a file accepted before a restart
            if item.kind == "missing":
                log.warning("file %s of an unfinished series is gone and cannot be handed over again", item.path)
            elif item.kind == "ok":
                self._accept(item, resume=True)
            elif self._ledger.is_known(item.path, *item.identity):
                # Decoded once, not any more, and unchanged: no point waiting for it.
                self.quarantine(item.path, item.identity, Q.UNDECODABLE,
                                f"the file decoded before a restart but not after it: {item.message}")
            else:
                self._tracker.touch(item.path)  # replaced since: judge it like any new file
            return
        try:
            st = item.path.stat()
        except FileNotFoundError:
            self._tracker.forget(item.path)
            return
        if (st.st_size, st.st_mtime_ns) != item.identity or item.identity != cand.identity:
            self._tracker.changed(cand)  # written to while we read it
            return
        if item.kind == "excluded" and ends_in_file_meta(item.path):  # cut short, not a non-image object
            item.kind, item.message = "bad", "ends inside its file meta header, so it is not complete yet"
        if item.kind == "excluded":
            self._ledger.record(item.path, *item.identity, L.EXCLUDED, item.message)
            self._counters.add("excluded")
            # the series story (shown at the default verbosity): a file that arrived and is not analysed
            story.info("excluded %s: it %s; recorded in the ledger, not analysed", item.path, item.message)
        elif item.kind == "bad":
            if cannot_become_dicom(item.path):  # junk: waiting retry_timeout cannot make it DICOM
                reason = f"not retried, as no further bytes can make it DICOM: {item.message}"
            elif not self._tracker.failed(cand, item.message):
                self._counters.add("retries")
                return
            else:
                reason = (f"the file was still not a complete, decodable DICOM image after "
                          f"{self.settings.retry_timeout:g} s: {item.message}")
            self.quarantine(item.path, item.identity, Q.UNDECODABLE, reason)
        elif item.kind == "ok":
            self._accept(item, resume=False)
        self._tracker.forget(item.path)

    def _accept(self, item: Decoded, *, resume: bool) -> None:
        slices = item.slices
        sop_uids = list(dict.fromkeys(str(s.sop_instance_uid) for s in slices))
        series_uid = str(slices[0].series_instance_uid)
        outcome = self._ledger.claim(item.path, *item.identity, sop_uids, series_uid,
                                     content_hash(slices), resume=resume)
        if outcome == L.CONFLICT:
            self._counters.add("conflicts")
            reason = (f"SOP Instance UID {sop_uids[0]} was already received with different content; a corrected "
                      "image must carry a new SOP Instance UID (DICOM PS3.3 C.12.1.1.1), so this copy was not "
                      "analysed")
            self.quarantine(item.path, item.identity, Q.CONFLICT, reason)
            return
        if outcome == L.DUPLICATE:
            self._counters.add("duplicates")
            log.info("duplicate of an instance already received, skipped: %s", item.path)
            if self.settings.delete_after_processing and self._ledger.series_done(series_uid):
                self.delete(item.path, item.identity, series_uid)
            return
        now = time.time()
        cand = item.cand
        written_at = now - (time.monotonic() - cand.changed_at) if cand is not None else now
        ingested = IngestedFile(
            path=item.path, slices=slices, sop_instance_uids=sop_uids, series_instance_uid=series_uid,
            received_at=item.received_at, complete_at=now, written_at=min(written_at, now),
            study_instance_uid=str(getattr(slices[0], "study_instance_uid", "") or ""),
            resumed=outcome == L.RESUMED,
        )
        try:
            self._on_file(ingested)
        except BaseException as err:  # noqa: BLE001 - error boundary around the pipeline
            if is_fatal(err):
                raise
            log.exception("the pipeline failed on %s", item.path)
            self._counters.add("pipeline_errors")
            self._ledger.release(item.path, sop_uids)
            why = str(err) if isinstance(err, EdgeAgentError) else (
                f"the analysis failed on this file because of an internal error ({type(err).__name__}, logged)")
            self.quarantine(item.path, item.identity, Q.PIPELINE_ERROR, f"processing failed: {why}")
            return
        self._counters.add("resumed" if outcome == L.RESUMED else "accepted")

    def quarantine(self, path: Path, identity: tuple[int, int], category: str, reason: str) -> None:
        """Copy into the quarantine with a sidecar, record, apply retention, tell ``on_rejected``."""
        try:
            dest: Path | str = Q.quarantine_file(path, quarantine_dir=self.settings.quarantine,
                                                 watch_dir=self._watch_dir, reason=reason, category=category)
        except OSError as err:  # no copy and no sidecar: the ledger still says why, so it is not retried forever
            if disk_full(err):  # the quarantine is full: try again when there is space, as for the ledger
                raise
            dest = "the ledger only"
            log.error("cannot write the quarantine copy or sidecar of %s (%s); recorded in the ledger only",
                      path, err.strerror or err)
        delete = self.settings.delete_after_processing
        self._ledger.record(path, *identity, L.QUARANTINED, reason, durable=delete)
        self._counters.add("quarantined")
        log.warning("quarantined %s as %s: %s", path, dest, reason)
        if delete:
            self.delete(path, identity, None, record=False)
        if self._on_rejected is not None:
            try:
                self._on_rejected(path, reason)
            except Exception:
                log.exception("on_rejected failed for %s (continuing)", path)

    def delete(self, path: Path, identity: tuple[int, int], series_uid: str | None, *, record: bool = True) -> None:
        """Retention: delete an input file unless it changed since it was judged."""
        try:
            st = path.stat()
            if (st.st_size, st.st_mtime_ns) != identity:
                return  # replaced since; the new content is judged on its own
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as err:
            log.warning("cannot delete %s: %s", path, err.strerror)
            return
        if record:
            self._ledger.record(path, *identity, L.DELETED, None, series_uid)
        self._counters.add("deleted")

    def series_done(self, series_instance_uid: str) -> None:
        """Mark a series done in the ledger and apply retention to its files."""
        delete = self.settings.delete_after_processing
        files = self._ledger.mark_series_done(series_instance_uid, durable=delete)
        if delete:
            for path, size, mtime_ns in files:
                self.delete(path, (size, mtime_ns), series_instance_uid)


def content_hash(slices: list[Slice]) -> str:
    """One hash for a file's content (its slices' ``content_hash`` values, in order)."""
    if len(slices) == 1:
        return str(slices[0].content_hash)
    digest = hashlib.sha256()
    for s in slices:
        digest.update(str(s.content_hash).encode())
        digest.update(b"\0")
    return digest.hexdigest()


def reason_of(err: Exception) -> str:
    """The decoder's one-sentence reason, without the path it prefixes (``DicomError.reason``)."""
    return str(getattr(err, "reason", "") or err)
