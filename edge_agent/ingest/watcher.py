"""Folder watching with watchdog: which paths count, and the observer.

This is the only module of the package that imports watchdog. The handler
knows nothing about threads or the ledger (watchdog's own habit): it turns
file-system events into calls to ``on_path(path, finished)``, where
``finished`` says the writer closed or renamed the file (a hint, not proof).

What the events mean on Linux (watchdog 4–7 API docs, inotify(7)):

* a file written in place gives ``created`` and, when the writer closes it,
  ``closed`` (inotify ``IN_CLOSE_WRITE``; only the inotify observer has it);
* a rename inside the folder gives only ``moved`` (we take the destination);
* a file moved in from another folder gives ``moved`` with no source — we ask
  inotify's observer for full events; watchdog's default makes it a bare
  ``created`` — so it counts as finished, like a rename inside the folder;
* files in a just-created (or moved-in) subfolder may give nothing at all if
  they were there before the new watch was added, so a directory event makes
  us walk that directory;
* the polling observer (network shares: inotify does not see writes made by
  other machines on NFS/CIFS) reports ``created`` while the file is still
  being written, then ``modified``.

None of these says the file is complete; :mod:`edge_agent.ingest.stable` decides
that. Events can also be lost (queue overflow), which the periodic rescan
covers.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from pathlib import Path
from typing import Callable, Iterator

from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from edge_agent.errors import EdgeAgentError

log = logging.getLogger(__name__)

# Names writers use while a file is incomplete (rsync, curl, browsers, editors, smbclient).
IGNORED_SUFFIXES = (".tmp", ".temp", ".part", ".partial", ".crdownload", ".swp", ".filepart")


class WatchFolderError(EdgeAgentError):
    """The watch folder cannot be watched (missing, unreadable, inotify limits)."""


def is_ignored_name(name: str) -> bool:
    """True for names that are never a finished DICOM file: dot-files, temp and ``~`` names."""
    lowered = name.lower()
    return (
        name.startswith(".")
        or name.startswith("~")
        or name.endswith("~")
        or lowered.endswith(IGNORED_SUFFIXES)
    )


class PathFilter:
    """Decides which paths under the watch folder are candidates.

    Dot-folders anywhere below the watch folder are skipped too (receivers
    often stage files in ``.incoming/``), and so are the quarantine and state
    folders when they lie inside the watch folder.
    """

    def __init__(self, watch_dir: Path, excluded_dirs: list[Path]) -> None:
        self.watch_dir = Path(os.path.realpath(watch_dir))
        self.excluded_dirs = [Path(os.path.realpath(d)) for d in excluded_dirs]

    def _relative_parts(self, path: Path) -> tuple[str, ...] | None:
        try:
            return path.relative_to(self.watch_dir).parts
        except ValueError:
            return None

    def accepts_dir(self, path: Path) -> bool:
        """True when files below this directory may be candidates."""
        parts = self._relative_parts(path)
        if parts is None or any(p.startswith(".") for p in parts):
            return False
        return not any(path == d or d in path.parents for d in self.excluded_dirs)

    def accepts(self, path: Path) -> bool:
        """True when this file path is a candidate (not ignored, not excluded)."""
        return not is_ignored_name(path.name) and self.accepts_dir(path.parent)

    def walk(self, top: Path | None = None) -> Iterator[tuple[Path, os.stat_result]]:
        """Yield (path, stat) for every candidate regular file below ``top``.

        Symbolic links are not followed (a loop would never end); unreadable
        sub-folders are logged and skipped.
        """
        top = Path(top) if top is not None else self.watch_dir
        if not self.accepts_dir(top):
            return

        def onerror(err: OSError) -> None:
            log.warning("cannot list %s during rescan: %s", err.filename, err.strerror)

        for dirpath, dirnames, filenames in os.walk(top, onerror=onerror):
            here = Path(dirpath)
            dirnames[:] = [d for d in dirnames if self.accepts_dir(here / d)]
            for name in filenames:
                if is_ignored_name(name):
                    continue
                path = here / name
                try:
                    st = path.stat(follow_symlinks=False)
                except OSError:
                    continue  # vanished between listing and stat
                if stat.S_ISREG(st.st_mode):
                    yield path, st


class _Handler(FileSystemEventHandler):
    """Turns watchdog events into candidate paths (runs on watchdog's dispatch thread)."""

    def __init__(
        self,
        path_filter: PathFilter,
        on_path: Callable[[Path, bool], None],
        on_dir: Callable[[Path], None],
        kinds: tuple[type[FileSystemEvent], ...],
    ) -> None:
        super().__init__()
        self._filter = path_filter
        self._on_path = on_path
        self._on_dir = on_dir
        self._kinds = kinds

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            self._dispatch(event)
        except Exception:  # an observer thread that dies stops all watching
            log.exception("error handling file event %s", event.event_type)

    def _dispatch(self, event: FileSystemEvent) -> None:
        if type(event) not in self._kinds:  # also filtered by watchdog ≥ 4; our own reads are not news
            return
        raw = event.dest_path if isinstance(event, (FileMovedEvent, DirMovedEvent)) else event.src_path
        if not raw:
            return  # moved out of the watched tree (full events: no destination)
        path = Path(os.fsdecode(raw))
        if event.is_directory:
            if isinstance(event, (DirCreatedEvent, DirMovedEvent)) and self._filter.accepts_dir(path):
                self._on_dir(path)
            return
        if self._filter.accepts(path):
            # Closed by its writer, or renamed into place (write-then-rename is how writers publish a
            # finished file): worth reading at once rather than after the quiet period.
            self._on_path(path, isinstance(event, (FileClosedEvent, FileMovedEvent)))


def inotify_error_sentence(err: OSError, watch_dir: Path) -> str:
    """One sentence for an OSError raised while starting the inotify observer."""
    if err.errno == errno.ENOSPC:
        current = _read_sysctl("max_user_watches")
        return (
            f"The inotify watch limit (fs.inotify.max_user_watches={current}) is too low to watch "
            f"{watch_dir} and its sub-folders; raise it with "
            "'sudo sysctl fs.inotify.max_user_watches=524288' (persist it in /etc/sysctl.d/) "
            "or run with --poll."
        )
    if err.errno == errno.EMFILE:
        current = _read_sysctl("max_user_instances")
        return (
            f"The inotify instance limit (fs.inotify.max_user_instances={current}) is reached, so "
            f"{watch_dir} cannot be watched; raise it with "
            "'sudo sysctl fs.inotify.max_user_instances=512' (persist it in /etc/sysctl.d/) "
            "or run with --poll."
        )
    if err.errno in (errno.EACCES, errno.EPERM):
        return (
            f"The watch folder {watch_dir} cannot be watched by this user ({err.strerror}); "
            "grant read and execute permission on it or run the agent as a user who can read it."
        )
    return f"Watching {watch_dir} failed ({err.strerror or err}); check the folder or run with --poll."


def _read_sysctl(name: str) -> str:
    try:
        return Path(f"/proc/sys/fs/inotify/{name}").read_text().strip()
    except OSError:
        return "unknown"


def make_observer(poll: bool, poll_interval: float) -> BaseObserver:
    """The native observer (inotify on Linux) or a polling one for network shares."""
    if poll:
        return PollingObserver(timeout=poll_interval)
    try:
        # Full events: a file renamed into the folder from outside it (inotify IN_MOVED_TO without its
        # IN_MOVED_FROM) is a "moved" event with no source, i.e. finished, instead of a bare "created"
        # that would wait out stable_seconds.
        return Observer(generate_full_events=True)
    except TypeError:  # an observer without that option (not inotify)
        return Observer()


def start_observer(
    path_filter: PathFilter,
    on_path: Callable[[Path, bool], None],
    on_dir: Callable[[Path], None],
    *,
    poll: bool,
    poll_interval: float,
) -> BaseObserver:
    """Start watching ``path_filter.watch_dir`` recursively; raise WatchFolderError with one sentence.

    Only the events that can mean "a file arrived" are subscribed
    (``event_filter``, watchdog ≥ 4): our own reads then cause no
    open/close-no-write events.
    """
    observer = make_observer(poll, poll_interval)
    observer.name = "ingest-observer"
    # inotify says when the writer closed the file; a poller only sees the size/mtime change.
    kinds = (FileCreatedEvent, FileMovedEvent, DirCreatedEvent, DirMovedEvent,
             FileModifiedEvent if poll else FileClosedEvent)
    handler = _Handler(path_filter, on_path, on_dir, kinds)
    try:
        try:
            observer.schedule(handler, str(path_filter.watch_dir), recursive=True, event_filter=list(kinds))
        except TypeError:  # watchdog without event_filter: the handler filters
            observer.schedule(handler, str(path_filter.watch_dir), recursive=True)
        observer.start()
    except OSError as err:
        _stop_quietly(observer)
        raise WatchFolderError(inotify_error_sentence(err, path_filter.watch_dir)) from err
    return observer


def _stop_quietly(observer: BaseObserver) -> None:
    try:
        observer.stop()
        if observer.is_alive():
            observer.join(timeout=5)
    except RuntimeError:
        pass


def check_watch_dir(watch_dir: Path) -> None:
    """Raise WatchFolderError (one sentence) when the folder is missing, not a folder or unreadable."""
    if not watch_dir.exists():
        raise WatchFolderError(f"The watch folder {watch_dir} does not exist; create it or pass the right "
                               "folder with --watch.")
    if not watch_dir.is_dir():
        raise WatchFolderError(f"The watch path {watch_dir} is not a folder; pass a folder with --watch.")
    if not os.access(watch_dir, os.R_OK | os.X_OK):
        raise WatchFolderError(f"The watch folder {watch_dir} is not readable by this user; grant read and "
                               "execute permission on it (chmod/chgrp) or run the agent as a user who can read it.")
