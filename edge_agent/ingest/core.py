"""Folder ingest: watch, wait until complete, decode, deduplicate, hand over.

Threads (all named): watchdog's observer feeds candidate paths to the
:class:`~edge_agent.ingest.stable.StableTracker`; ``ingest-rescan`` walks the
folder at start and every ``rescan_interval`` (events can be lost);
``ingest-decode-*`` (a pool, one per core by default) decode stable files;
``ingest-main`` hands stable files to the pool and judges every decoded
file against the ledger, then calls ``on_file`` — always from this one
thread, so the pipeline sees files one at a time.

Every file goes through an error boundary: whatever fails is logged,
recorded in the ledger, the file quarantined with a reason, and ingest goes
on.

What each decoded file becomes is decided in :mod:`edge_agent.ingest.verdict`.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, TypeVar

from edge_agent.boundary import DISK_FULL_RETRY_S, describe, disk_full, failure_reason, is_fatal
from edge_agent.dicom import BadFile, NotAnImage
from edge_agent.errors import EdgeAgentError
from edge_agent.ingest import ledger as L
from edge_agent.ingest import quarantine as Q
from edge_agent.ingest.decode import Decoder
from edge_agent.ingest.settings import IngestedFile, IngestSettings
from edge_agent.ingest.stable import Candidate, StableTracker
from edge_agent.ingest.verdict import Counters, Decoded, Verdicts, reason_of
from edge_agent.ingest.watcher import BaseObserver, PathFilter, WatchFolderError, check_watch_dir, start_observer

log = logging.getLogger(__name__)
_T = TypeVar("_T")

# Files deleted by retention or gone from the folder (and their instances) are remembered this long:
# a resend within a week is still a duplicate; the ledger stays bounded.
LEDGER_MEMORY_S = 7 * 24 * 3600.0
#: A file that this many runs of the agent began to read and never finished (each ended by a crash or
#: a kill) is quarantined at the next start instead of being read a third time.
CRASH_LOOP_RUNS = 2


class Ingest:
    """Watches ``settings.watch_dir`` and calls ``on_file`` once per new instance (see module doc)."""

    def __init__(
        self,
        settings: IngestSettings,
        on_file: Callable[[IngestedFile], None],
        on_rejected: Callable[[Path, str], None] | None = None,
    ) -> None:
        self.settings = settings
        self._on_file = on_file
        self._on_rejected = on_rejected
        self._tracker = StableTracker(settings.stable_seconds, settings.retry_timeout)
        self._results: queue.Queue[Decoded | None] = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._counters = Counters()
        self._verdicts: Verdicts | None = None
        self._workers = settings.workers or os.cpu_count() or 1
        # Worker processes even with one worker: a decoder that aborts (gdcm's uncaught C++ exceptions) or
        # runs out of memory then costs one file, not the agent.
        self._decoder = Decoder(self._workers if settings.decode_processes else 0,
                                stored_only=settings.keep_stored)
        self._tick = max(0.01, min(0.05, settings.stable_seconds / 4))
        self._ledger: L.Ledger | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._observer: BaseObserver | None = None
        self._observer_lock = threading.Lock()
        self._filter: PathFilter | None = None
        self._in_flight = 0  # decodes submitted and not yet judged; owned by ingest-main
        self._resume: deque[Path] = deque()  # filled by start(), drained by ingest-main
        self._resume_left = 0  # resumed files not yet judged (written by ingest-main, read by oldest_pending)
        self._started_at = 0.0  # time.monotonic() of start()
        self._run_id = ""
        self._judged: list[Path] = []  # judged since the last end_reading commit; owned by ingest-main
        # A full state disk: decoded files wait here (in order) and nothing new is read until a write works.
        self._held: deque[Decoded] = deque()
        self._paused_since: float | None = None
        self._next_try = 0.0
        self._watch_dir_ok = True

    # --- lifecycle -----------------------------------------------------
    def start(self) -> None:
        """Check the folder, open the ledger, resume unfinished series, then rescan and watch.

        The observer starts before the first rescan so that no file falls
        between the two. Raises :class:`EdgeAgentError` with one sentence.
        """
        s = self.settings
        check_watch_dir(s.watch_dir)
        # Fresh per-run state, so a stopped Ingest can be started again.
        self._stop.clear()
        self._tracker = StableTracker(s.stable_seconds, s.retry_timeout)
        self._results = queue.Queue()
        self._in_flight = 0
        self._resume.clear()
        self._judged, self._held, self._paused_since = [], deque(), None
        self._run_id = uuid.uuid4().hex
        watch_dir = Path(os.path.realpath(s.watch_dir))
        for folder, what in ((s.state_dir, "state"), (s.quarantine, "quarantine")):
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise EdgeAgentError(
                    f"The {what} folder {folder} cannot be created ({err.strerror}); choose a writable folder."
                ) from err
        try:
            self._ledger = L.Ledger(s.ledger_path)
        except Exception as err:  # sqlite3.Error, OSError
            raise EdgeAgentError(
                f"The ingest ledger {s.ledger_path} cannot be opened ({err}); check the state folder "
                "or move the damaged file aside."
            ) from err
        self._filter = PathFilter(watch_dir, [s.state_dir, s.quarantine])
        self._verdicts = Verdicts(s, self._ledger, self._tracker, watch_dir, self._counters,
                                  self._on_file, self._on_rejected)
        self._quarantine_crash_loops()
        self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="ingest-decode")
        self._decoder.warm()
        try:
            self._observer = self._start_observer()
        except BaseException:
            self._pool.shutdown(wait=True)
            self._ledger.close()
            self._ledger = self._pool = self._verdicts = None
            raise
        self._resume.extend(self._ledger.resume_paths())  # handed out by ingest-main, bounded like the rest
        self._resume_left, self._started_at = len(self._resume), time.monotonic()
        if self._resume:
            log.info("resuming %d files of series that were not finished", len(self._resume))
        for name, target in (("ingest-main", self._run), ("ingest-rescan", self._rescan_loop)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def threads(self) -> list[threading.Thread]:
        """The long-lived threads this part runs (the agent supervises them)."""
        return list(self._threads)

    def stop(self, timeout: float = 10) -> None:
        """Stop watching and decoding; files not yet judged are picked up at the next start."""
        self._stop.set()
        self._results.put(None)
        with self._observer_lock:
            self._stop_observer(timeout)
        for thread in self._threads:
            thread.join(timeout)
        self._threads.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._decoder.close()
        if self._ledger is not None:
            try:  # what this run was still reading when told to stop did not crash it
                self._ledger.end_reading(self._judged)
                self._ledger.interrupted(self._run_id)
            except Exception as err:  # noqa: BLE001 - a full disk: those files count one run more, no harm
                log.warning("could not note the files being read at stop (%s)", err)
            self._ledger.close()
            self._ledger = None
        self._verdicts = None

    def __enter__(self) -> "Ingest":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- API for the pipeline ------------------------------------------
    def mark_series_done(self, series_instance_uid: str) -> None:
        """The pipeline made its final decision: don't re-emit on restart; apply retention."""
        self._require(self._verdicts).series_done(series_instance_uid)

    def rescan_now(self) -> None:
        """Walk the watch folder now and queue every file the ledger does not know."""
        ledger = self._require_ledger()
        path_filter = self._require(self._filter)
        watch_dir = path_filter.watch_dir
        self._count("rescans")
        if not os.access(watch_dir, os.R_OK | os.X_OK):
            if self._watch_dir_ok:
                log.error("the watch folder %s is missing or unreadable; rescanning until it is back", watch_dir)
            self._watch_dir_ok = False
            return
        self._watch_dir_ok = True
        known = ledger.identities()
        found = 0
        for path, st in path_filter.walk():
            if self._stop.is_set():
                return
            if known.pop(str(path), None) == (st.st_size, st.st_mtime_ns) or path in self._tracker:
                continue
            self._tracker.touch(path, st=st)
            found += 1
        self._count("rescan_found", found)
        if found:
            log.info("rescan queued %d files", found)
        # What the walk did not see is gone (a PACS forwarder, a clean-up job): stop listing it, so the
        # ledger's working set follows the folder instead of growing with every file ever seen.
        gone = [p for p in known if not os.path.lexists(p)]
        if gone:
            ledger.mark_gone(gone)

    def oldest_pending(self) -> float | None:
        """``time.monotonic()`` when the oldest file this ingest has seen but not yet handed over last changed
        (resumed files: when the ingest started), or None when every file seen is handed over.

        The pipeline does not decide a series that went quiet after that moment: the file may be one of its
        slices, still waiting to be stable, decoded or judged behind a burst (see SeriesPipeline). Files
        retried after a failed read are left out. Safe from any thread.
        """
        oldest = self._tracker.oldest_change()
        if self._resume_left > 0:
            oldest = self._started_at if oldest is None else min(oldest, self._started_at)
        return oldest

    def stats(self) -> dict[str, int]:
        """Counters since this object was created, and the current backlog.

        ``files_seen`` (files judged: accepted + duplicates + excluded +
        quarantined), ``accepted``, ``duplicates``, ``conflicts`` (also
        counted in ``quarantined``: a conflicting copy is quarantined),
        ``excluded``, ``quarantined``;
        ``resumed`` (re-emitted after a restart), ``pipeline_errors``,
        ``retries`` (failed reads retried), ``deleted`` (retention),
        ``events``, ``rescans``, ``rescan_found`` (files no event announced);
        ``pending`` (waiting to be stable or to retry) and ``decoding`` (read
        or waiting for the pipeline); ``disk_full_pauses`` and ``paused`` (1
        while a full state disk holds the intake).
        """
        out = self._counters.snapshot()
        out["pending"], out["decoding"] = self._tracker.counts()
        out["paused"] = int(self._paused_since is not None)
        out["files_seen"] = sum(out[k] for k in ("accepted", "duplicates", "excluded", "quarantined"))
        return out

    # --- threads -------------------------------------------------------
    def _on_event(self, path: Path, finished: bool) -> None:
        self._count("events")
        self._tracker.touch(path, closed=finished)
        if finished:
            self._results.put(None)  # wake ingest-main: a closed or renamed file may be read at once

    def _on_dir_event(self, path: Path) -> None:
        for file_path, st in self._require(self._filter).walk(path):
            self._tracker.touch(file_path, st=st)

    def _rescan_loop(self) -> None:
        self._guarded(self.rescan_now)
        while not self._stop.wait(self.settings.rescan_interval):
            self._guarded(self.rescan_now)
            self._guarded(self._supervise_observer)
            self._guarded(self._require_ledger().prune, time.time() - LEDGER_MEMORY_S)

    def _start_observer(self) -> BaseObserver:
        return start_observer(self._require(self._filter), self._on_event, self._on_dir_event,
                              poll=self.settings.poll, poll_interval=self.settings.poll_interval)

    def _stop_observer(self, timeout: float = 10) -> None:
        if self._observer is not None:
            self._observer.stop()
            if self._observer.is_alive():
                self._observer.join(timeout)
            self._observer = None

    def _supervise_observer(self) -> None:
        """Re-arm watching when it died: the folder was removed and is back, or an emitter failed.

        watchdog stops an emitter whose root folder is deleted, and an emitter
        thread that hits an inotify limit on a new sub-folder dies; rescans
        cover the gap until watching works again.
        """
        with self._observer_lock:
            observer = self._observer
            if self._stop.is_set() or not self._watch_dir_ok:
                return
            if observer is not None and observer.is_alive() and observer.emitters and all(
                    e.is_alive() for e in observer.emitters):
                return
            log.warning("file watching stopped (folder removed or watch error); restarting it")
            self._stop_observer()
            try:
                self._observer = self._start_observer()
            except WatchFolderError as err:
                log.error("%s", err)  # the sentence names the fix; rescans go on meanwhile

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                item = self._results.get(timeout=self._tick)
            except queue.Empty:
                item = None
            while item is not None or not self._results.empty():
                if item is not None and not self._stop.is_set():
                    self._in_flight -= 1
                    if item.cand is None:
                        self._resume_left -= 1
                    if self._paused_since is None:
                        self._judge(item)
                    else:
                        self._held.append(item)
                try:
                    item = self._results.get_nowait()
                except queue.Empty:
                    item = None
            if self._stop.is_set():
                break
            if self._paused_since is not None:
                if time.monotonic() >= self._next_try:
                    self._try_resume()
                continue
            self._guarded(self._flush_judged)
            self._guarded(self._submit_due)

    def _judge(self, item: Decoded) -> bool:
        """Judge one decoded file; on a full state disk hold it and pause the intake (False)."""
        try:
            self._require(self._verdicts).judge(item)  # never raises but for a full disk
        except BaseException as err:  # noqa: BLE001 - judge lets only fatal errors and a full disk through
            if is_fatal(err) or not disk_full(err):
                raise
            self._held.appendleft(item)
            self._pause()
            return False
        self._judged.append(item.path)
        return True

    def _pause(self) -> None:
        self._next_try = time.monotonic() + DISK_FULL_RETRY_S
        if self._paused_since is None:
            self._paused_since = time.monotonic()
            self._count("disk_full_pauses")
            log.error("the state disk is full (%s): file intake paused; new files wait in the watch folder and "
                      "nothing is lost; free space there and the intake resumes by itself",
                      self.settings.state_dir)

    def _try_resume(self) -> None:
        """Judge the held files in order, then read new files again; stays paused while writes fail."""
        while self._held:
            if not self._judge(self._held.popleft()):
                return
        try:
            self._flush_judged()
            self._submit_due()
        except BaseException as err:  # noqa: BLE001 - as _guarded, but a full disk keeps the pause
            if is_fatal(err):
                raise
            if disk_full(err):
                self._pause()
                return
            log.exception("ingest error while resuming (continuing)")
        paused_for = time.monotonic() - (self._paused_since or time.monotonic())
        self._paused_since = None
        log.warning("the state disk has space again: file intake resumed after %.0f s", paused_for)

    def _flush_judged(self) -> None:
        """One commit for the files judged since the last one: reading them did not stop the agent."""
        if self._judged:
            self._require_ledger().end_reading(self._judged)
            self._judged = []

    def _quarantine_crash_loops(self) -> None:
        """At start: quarantine each file that earlier runs began reading twice and never finished.

        A file that makes the process die while it is read (an out-of-memory kill, a decoder that takes
        the interpreter down) would otherwise be read again after every restart: a crash loop.
        """
        ledger, verdicts = self._require_ledger(), self._require(self._verdicts)
        for path, runs in ledger.crashed_while_reading(CRASH_LOOP_RUNS):
            try:
                st = path.stat()
            except OSError:
                ledger.end_reading([path])
                continue
            verdicts.quarantine(path, (st.st_size, st.st_mtime_ns), Q.UNDECODABLE,
                                f"the agent stopped {runs} times while reading this file (a crash or an "
                                "out-of-memory kill), so it is not read again; check the file, and the agent's "
                                "log around those stops")
            ledger.end_reading([path])
            self._tracker.forget(path)

    def _submit_due(self) -> None:
        ledger, pool = self._require_ledger(), self._require(self._pool)
        # At most a few decoded files per worker wait for the pipeline: memory stays bounded
        # however slow on_file is.
        room = self._workers * 4 - self._in_flight
        batch: list[tuple[Path, Candidate | None]] = []
        while room > len(batch) and self._resume:
            batch.append((self._resume[0], None))
            self._resume.popleft()
        if room > len(batch):
            for cand in self._tracker.due(room - len(batch)):
                if ledger.is_known(cand.path, cand.size, cand.mtime_ns):
                    self._tracker.forget(cand.path)  # an event for a file already handled
                    continue
                batch.append((cand.path, cand))
        if not batch:
            return
        try:  # one commit: a run that dies while reading these leaves them marked (crash-loop guard)
            ledger.begin_reading([path for path, _ in batch], self._run_id)
        except BaseException:  # nothing was read: the same files come back at the next call
            self._resume.extendleft(path for path, cand in reversed(batch) if cand is None)
            self._tracker.release([cand for _, cand in batch if cand is not None])
            raise
        for path, cand in batch:
            self._in_flight += 1
            pool.submit(self._decode, path, cand)

    def _decode(self, path: Path, cand: Candidate | None) -> None:
        """Runs on a decode thread: read and decode one file, report to ingest-main."""
        item = Decoded(path, "ok", cand, received_at=cand.received_at if cand else time.time())
        try:
            st = path.stat()
            item.identity = (st.st_size, st.st_mtime_ns)
            item.slices = self._decoder.read(path)
            if not item.slices:  # read_file refuses such files; never let one vanish
                item.kind, item.message = "bad", "holds no image frames"
        except NotAnImage as err:
            item.kind, item.message = "excluded", reason_of(err)
        except FileNotFoundError:
            item.kind = "missing"
        except BadFile as err:
            item.kind, item.message = "bad", reason_of(err)
        except BaseException as err:  # noqa: BLE001 - error boundary; decoder panics derive from BaseException
            if is_fatal(err):
                raise
            log.warning("decoding %s failed: %s", path, describe(err))
            item.kind, item.message = "bad", failure_reason(err)
        self._results.put(item)

    # --- helpers -------------------------------------------------------
    def _count(self, name: str, n: int = 1) -> None:
        self._counters.add(name, n)

    def _guarded(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except BaseException as err:  # noqa: BLE001 - a panic must not end an ingest thread either
            if is_fatal(err):
                raise
            if disk_full(err):
                if threading.current_thread().name == "ingest-main":
                    self._pause()
                else:  # rescans and prunes: said once by the pause; they simply try again later
                    log.debug("ingest %s: the state disk is full", getattr(fn, "__name__", fn))
                return
            log.exception("ingest error in %s (continuing)", getattr(fn, "__name__", fn))

    def _require_ledger(self) -> L.Ledger:
        return self._require(self._ledger)

    @staticmethod
    def _require(part: _T | None) -> _T:
        if part is None:
            raise RuntimeError("Ingest is not running: call start() first.")
        return part
