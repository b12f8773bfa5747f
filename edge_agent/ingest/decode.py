"""Decoding files on every core.

The compressed-pixel decoders hold the GIL (pylibjpeg-openjpeg calls OpenJPEG
without ``nogil``; python-gdcm's SWIG wrappers do not release it either), so
decode threads alone use one core. :class:`Decoder` runs
:func:`edge_agent.dicom.read_file` for compressed files in a pool of worker processes
(``spawn``: the workers inherit none of the agent's threads and locks, and
nothing outlives :meth:`Decoder.close`)
and falls back to the calling thread when processes are off. A worker that
dies (out of memory) breaks the pool; the pool is rebuilt and the file is
reported as failed, so the caller retries it.

Spawned workers import the program's ``__main__`` module (Python's
multiprocessing rule): ``edge-agent`` and ``python -m edge_agent`` are safe;
a script that starts an :class:`~edge_agent.ingest.Ingest` must do so under
``if __name__ == "__main__":`` or set ``decode_processes=False``.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from edge_agent.boundary import describe, failure_reason, is_fatal
from edge_agent.dicom import BadFile, DicomError, Slice, read_file
from edge_agent.dicom.reader import read_header, transfer_syntax
from edge_agent.dicom.uids import NATIVE_SYNTAXES

log = logging.getLogger(__name__)

def _worker_init(parent: int) -> None:
    """Worker initializer: exit with the agent, and import the DICOM stack before the first file.

    A worker holds both ends of its task queue, so it never sees EOF when the
    agent is killed (``kill -9``); it watches its parent instead. The agent's
    pid is passed in, not read here: an agent killed while the worker was
    still starting would otherwise leave it watching init.
    """
    if os.getppid() != parent:
        os._exit(0)
    # Ctrl-C reaches the whole process group: the agent stops its workers itself (no tracebacks from them)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import edge_agent.dicom  # noqa: F401

    def watch_parent() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch_parent, name="decode-parent-watch", daemon=True).start()


def _read_in_worker(path: Path, stored_only: bool) -> list[Slice]:
    """Worker process: read one file; whatever fails crosses back as a picklable BadFile with a sentence.

    A decoder panic (pyo3 ``PanicException``) cannot be pickled; sent back as
    it is it would break the result and lose the file's reason.
    """
    try:
        return read_file(path, stored_only=stored_only)
    except DicomError:
        raise
    except BaseException as exc:  # noqa: BLE001 - panics derive from BaseException
        if is_fatal(exc):
            raise
        log.warning("decoding %s failed in a worker: %s", path, describe(exc))
        raise BadFile(str(path), failure_reason(exc)) from None


def _ready() -> bool:
    """A no-op run in each worker by :meth:`Decoder.warm` (the import of this module is the work)."""
    return True


class Decoder:
    """``read(path)`` → slices, in worker processes (``processes`` > 0) or in the caller's thread."""

    def __init__(self, processes: int, *, stored_only: bool = False) -> None:
        self._processes = processes
        self._stored_only = stored_only
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None

    def _get_pool(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                context = multiprocessing.get_context("spawn")
                self._pool = ProcessPoolExecutor(self._processes, mp_context=context, initializer=_worker_init,
                                                 initargs=(os.getpid(),))
            return self._pool

    def warm(self) -> None:
        """Start the worker processes now, in the background: the first compressed file of the day must not
        wait for a spawn and its imports (seconds on a small board)."""
        if self._processes <= 0:
            return
        pool = self._get_pool()
        for _ in range(self._processes):
            pool.submit(_ready)

    def read(self, path: Path) -> list[Slice]:
        """Read and decode one file; raises what ``read_file`` raises.

        Native (uncompressed) pixel data is decoded here: it is a copy and a
        multiply, cheaper than sending the result between processes. Only
        compressed files go to the worker processes. The header is parsed
        here once (:func:`~edge_agent.dicom.reader.read_header`) to tell them
        apart: a native file is read from that parse, a compressed one is
        checked on it (``decode=False``: bad files rejected early, without a
        worker) and parsed again only by the worker, across the process boundary.
        """
        if self._processes <= 0:
            return read_file(path, stored_only=self._stored_only)
        header = read_header(path)
        if transfer_syntax(header) in NATIVE_SYNTAXES:
            return read_file(path, stored_only=self._stored_only, header=header)
        read_file(path, decode=False, header=header)
        pool = self._get_pool()
        try:
            return pool.submit(_read_in_worker, path, self._stored_only).result()
        except BrokenProcessPool as err:
            with self._lock:
                if self._pool is pool:
                    self._pool = None
            pool.shutdown(wait=False, cancel_futures=True)
            log.error("a decode worker process died while reading %s; restarting the decode pool", path)
            raise BadFile(str(path), "a decode worker process died while reading it (out of memory?)") from err

    def close(self) -> None:
        """Stop the worker processes (waits for running decodes)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
