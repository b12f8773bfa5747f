"""When is a file complete? Size and mtime unchanged, then pixels must decode.

A file event is not a complete file: a truncated uncompressed DICOM file
still parses and only fails at pixel access, and a polling observer reports
``created`` while the file is still growing. :class:`StableTracker` holds every
candidate path until its size and mtime have not changed for
``stable_seconds`` (or the writer closed it — inotify ``IN_CLOSE_WRITE`` — or
renamed it into place, and it has not changed since), then
hands it out for decoding. A decoding failure is retried with back-off for
``retry_timeout`` seconds (the writer may pause mid-file) before the caller
quarantines the file — unless more bytes cannot help (:func:`cannot_become_dicom`:
the file is already past the 128-byte preamble and "DICM" is not there), which
is quarantined at once.

Thread-safe: watcher, rescan and ingest threads all call it.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from edge_agent.dicom.limits import open_regular, special_kind

log = logging.getLogger(__name__)
MAX_BACKOFF = 5.0
PREAMBLE = 128          # DICOM PS3.10 7.1: a 128-byte preamble, then the prefix "DICM"
MAGIC = b"DICM"


def cannot_become_dicom(path: Path) -> bool:
    """True when no further bytes can make ``path`` a DICOM file: retrying it only delays its quarantine.

    The reader takes DICOM Part 10 files only: 128 bytes of preamble (any content), then "DICM". A file
    that already reaches past the preamble without that prefix is final whatever is appended. Kept for
    retries: a file that does not reach past the preamble yet, one whose bytes there are a start of "DICM"
    (a writer that paused), and one whose bytes there are still zero (space allocated, not yet written).
    Any error reading it: False (the normal retries decide).
    """
    try:
        with open_regular(str(path)) as fh:
            head = fh.read(PREAMBLE + len(MAGIC))
    except OSError:
        return False
    tail = head[PREAMBLE:]
    if not tail or MAGIC.startswith(tail) or not tail.strip(b"\0"):
        return False
    return True


def ends_in_file_meta(path: Path) -> bool:
    """True when ``path`` has "DICM" but ends before its data set starts: nothing can be judged yet.

    Such a file reads as "no SOP class" (the File Meta Information that names it is cut short); it is
    still being written, not a non-image object. The meta header's group length (0002,0000), always
    Explicit VR Little Endian right after "DICM" (PS3.10 7.1), says where the data set starts.
    """
    start = PREAMBLE + len(MAGIC)
    try:
        with open_regular(str(path)) as fh:
            head = fh.read(start + 12)
            size = os.fstat(fh.fileno()).st_size
    except OSError:
        return False
    if head[PREAMBLE:start] != MAGIC:
        return False
    if len(head) < start + 12:
        return True  # not even the group length yet
    if head[start:start + 6] != b"\x02\x00\x00\x00UL":
        return False  # no group length: the reader's verdict stands
    return size <= start + 12 + int.from_bytes(head[start + 8:start + 12], "little")


@dataclass
class Candidate:
    """A file waiting to be judged complete (all clocks monotonic except ``received_at``)."""

    path: Path
    size: int
    mtime_ns: int
    changed_at: float
    received_at: float
    closed: bool = False
    in_flight: bool = False
    failures: int = 0
    first_failure: float | None = None
    next_try: float = 0.0
    last_error: str = ""

    @property
    def identity(self) -> tuple[int, int]:
        return self.size, self.mtime_ns


class StableTracker:
    """Pending files keyed by path, released once stable."""

    def __init__(self, stable_seconds: float, retry_timeout: float) -> None:
        self.stable_seconds = stable_seconds
        self.retry_timeout = retry_timeout
        self._pending: dict[Path, Candidate] = {}
        self._refused: set[Path] = set()  # non-regular paths already logged (bounded)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)

    def __contains__(self, path: Path) -> bool:
        with self._lock:
            return path in self._pending

    def counts(self) -> tuple[int, int]:
        """(waiting, decoding) file counts."""
        with self._lock:
            decoding = sum(1 for c in self._pending.values() if c.in_flight)
            return len(self._pending) - decoding, decoding

    def oldest_change(self) -> float | None:
        """``time.monotonic()`` of the oldest last change among the files not yet handed over — waiting to
        be stable, decoding, or decoded and waiting to be judged; files retried after a failed read are left
        out (they may never become images) — or None when there are none."""
        with self._lock:
            return min((c.changed_at for c in self._pending.values() if not c.failures), default=None)

    def touch(self, path: Path, *, closed: bool = False, st: os.stat_result | None = None) -> None:
        """Note that ``path`` appeared or changed (an event or a rescan)."""
        if st is None:
            try:
                st = os.stat(path)
            except OSError:
                return  # already renamed or deleted; a later event names the new path
        if not stat.S_ISREG(st.st_mode):
            self._refuse(path, st.st_mode)
            return
        now = time.monotonic()
        with self._lock:
            cand = self._pending.get(path)
            if cand is None:
                self._pending[path] = Candidate(
                    path, st.st_size, st.st_mtime_ns, changed_at=now, received_at=time.time(), closed=closed
                )
                return
            if (st.st_size, st.st_mtime_ns) != cand.identity:
                self._reset(cand, st, now)
                cand.closed = closed
            elif closed:
                cand.closed = True

    def due(self, limit: int) -> list[Candidate]:
        """Stat the waiting files; return up to ``limit`` that are stable, marked in flight.

        A file is stable when its size and mtime have not changed for
        ``stable_seconds``, or at once when the writer closed it and nothing
        changed since. Files that vanished are forgotten.
        """
        now = time.monotonic()
        with self._lock:
            waiting = [c for c in self._pending.values() if not c.in_flight and c.next_try <= now]
        ready: list[Candidate] = []
        for cand in sorted(waiting, key=lambda c: c.changed_at):
            try:
                st = os.stat(cand.path)
            except OSError:
                self.forget(cand.path)
                continue
            if not stat.S_ISREG(st.st_mode):  # replaced by a FIFO, socket, device or folder
                self.forget(cand.path)
                self._refuse(cand.path, st.st_mode)
                continue
            with self._lock:
                if self._pending.get(cand.path) is not cand or cand.in_flight:
                    continue
                if (st.st_size, st.st_mtime_ns) != cand.identity:
                    self._reset(cand, st, now)
                    continue
                if cand.closed or now - cand.changed_at >= self.stable_seconds:
                    cand.in_flight = True
                    ready.append(cand)
            if len(ready) >= limit:
                break
        return ready

    @staticmethod
    def _reset(cand: Candidate, st: os.stat_result, now: float) -> None:
        # A file that is still changing is still being written: its failures so far don't count.
        cand.size, cand.mtime_ns, cand.changed_at = st.st_size, st.st_mtime_ns, now
        cand.closed = False
        cand.failures, cand.first_failure, cand.next_try = 0, None, 0.0

    def changed(self, cand: Candidate) -> None:
        """The file changed while it was being decoded: wait for it to settle again."""
        with self._lock:
            cand.in_flight = False
            try:
                self._reset(cand, os.stat(cand.path), time.monotonic())
            except OSError:
                self._pending.pop(cand.path, None)

    def release(self, cands: list[Candidate]) -> None:
        """``due`` returned these but they were not read after all: due again at the next call."""
        with self._lock:
            for cand in cands:
                cand.in_flight = False

    def failed(self, cand: Candidate, error: str) -> bool:
        """Record a decoding failure; True when ``retry_timeout`` is spent (quarantine it).

        Otherwise the file is retried with exponential back-off (at most
        ``MAX_BACKOFF`` s), or sooner if it changes.
        """
        now = time.monotonic()
        with self._lock:
            cand.in_flight = False
            cand.failures += 1
            cand.last_error = error
            if cand.first_failure is None:
                cand.first_failure = now
            if now - cand.first_failure >= self.retry_timeout:
                return True
            backoff = min(max(self.stable_seconds, 0.05) * 2 ** (cand.failures - 1), MAX_BACKOFF)
            remaining = cand.first_failure + self.retry_timeout - now
            cand.next_try = now + min(backoff, max(remaining, 0.0))
            cand.closed = False
            return False

    def _refuse(self, path: Path, mode: int) -> None:
        """A FIFO, socket, device or folder is never opened (a FIFO would block ``open()`` forever)."""
        with self._lock:
            if path in self._refused:
                return
            if len(self._refused) >= 1024:
                self._refused.clear()
            self._refused.add(path)
        log.warning("ignoring %s: it is %s, not a regular file; only regular files are read", path,
                    special_kind(mode))

    def forget(self, path: Path) -> None:
        """Drop ``path`` (handled, or gone)."""
        with self._lock:
            self._pending.pop(path, None)
