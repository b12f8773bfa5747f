"""Reading many files on every core.

The compressed-pixel decoders (gdcm, pylibjpeg-openjpeg, pyjpegls) hold the
GIL, so threads use one core for them; worker processes do not — but
sending each decoded slice back through a pipe costs more than decoding
native or RLE data (measured in docs/perf/ingest.md). So:

- native / RLE / deflated files: a thread pool (numpy and file reads release
  the GIL; the fast header path keeps the GIL-bound part small);
- JPEG-family files: a header pass in threads plans each series, then
  worker processes (forkserver: safe from the threaded daemon) decode and
  write HU straight into the series volume, a shared memory mapping — no
  pixels travel through pipes.
"""

from __future__ import annotations

import functools
import logging
import mmap
import multiprocessing
import os
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Iterator

import numpy as np

from edge_agent.boundary import describe, failure_reason, is_fatal
from edge_agent.dicom import fastpath
from edge_agent.dicom.assembly import finish, plan
from edge_agent.dicom.model import DicomError, Rejected, Series, Slice
from edge_agent.dicom.reader import read_file
from edge_agent.dicom.uids import ABORT_PRONE, JPEG_FAMILY_PREFIX
from edge_agent.hu import to_hu

SERIAL_BELOW = 16  # fewer files than this are read in-process: a pool costs more than it saves
CRASHED = ("made the decoder process crash (its compressed pixel data are damaged, or it needs more memory "
           "than there is); resend it or ask for another transfer syntax")
log = logging.getLogger(__name__)


def _read_one(path: str, decode: bool = True) -> tuple[list[Slice], Rejected | None]:
    """Error boundary around :func:`read_file`: never raises (but for interrupt/exit); every file accounted for."""
    try:
        slices = read_file(path, decode=decode, defer_hu=True)
    except DicomError as exc:
        return [], exc.to_rejected()
    except BaseException as exc:  # noqa: BLE001 - a reader bug or decoder panic must not stop the scan
        if is_fatal(exc):
            raise
        log.warning("reading %s failed: %s", path, describe(exc))
        return [], Rejected(path, failure_reason(exc), "bad")
    if not slices:
        return [], Rejected(path, "holds no image frames", "bad")
    return slices, None


def _process_pool(workers: int) -> ProcessPoolExecutor:
    # forkserver: safe from a multi-threaded daemon; the server starts once per process.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["edge_agent.dicom.parallel"])
    return ProcessPoolExecutor(max_workers=workers, mp_context=context)


def choose_mode(files: list[str], workers: int, executor: str = "auto") -> str:
    """``"serial"``, ``"thread"`` or ``"process"`` for reading ``files``.

    ``auto`` picks processes when sampled files use a JPEG-family syntax
    (decoders that hold the GIL), threads otherwise. Files only gdcm decodes
    (:data:`ABORT_PRONE`) are read in worker processes whatever their number,
    unless threads are asked for.
    """
    if executor not in ("auto", "thread", "process"):
        raise ValueError(f"executor must be 'auto', 'thread' or 'process', not {executor!r}")
    small = workers <= 1 or len(files) < SERIAL_BELOW
    if not small and executor != "auto":
        return executor if executor != "process" or processes_possible() else "thread"
    if not small and processes_possible() and any(
            fastpath.transfer_syntax(p).startswith(JPEG_FAMILY_PREFIX) for p in files[:: max(1, len(files) // 3)][:3]):
        return "process"
    if executor != "thread" and processes_possible() and any(
            fastpath.transfer_syntax(p) in ABORT_PRONE for p in files):
        return "process"  # a gdcm crash then costs one file, not this process
    return "serial" if small else "thread"


def processes_possible() -> bool:
    """False when forkserver workers could not re-import ``__main__`` (a script piped on stdin)."""
    main_path = getattr(sys.modules.get("__main__"), "__file__", None)
    return main_path is None or os.path.exists(main_path)


def read_files(files: list[str], *, workers: int = 1, mode: str = "thread",
               decode: bool = True) -> Iterator[tuple[list[Slice], Rejected | None]]:
    """``(slices, rejected)`` per file in input order, read in this process (serial or threads).

    Slices keep their stored values (``defer_hu``) for the assembler.
    """
    read = functools.partial(_read_one, decode=decode)
    if mode == "serial" or workers <= 1:
        yield from map(read, files)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dicom-read") as pool:
        yield from pool.map(read, files)


VOLUME_PREFIX = "edge-agent-volume-"


def remove_orphan_volumes(folder: str) -> list[str]:
    """Unlink shared volumes whose creating process no longer exists; returns what was removed."""
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(VOLUME_PREFIX):
            continue
        pid = name[len(VOLUME_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        try:
            os.unlink(os.path.join(folder, name))
            removed.append(name)
        except OSError:
            pass
    if removed:
        log.warning("removed %d shared volume(s) left in %s by a process that was killed mid-scan",
                    len(removed), folder)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: not ours to judge
    return True


def shared_volume(shape: tuple[int, int, int]) -> tuple[str, np.ndarray]:
    """A float32 volume in a shared file mapping (``/dev/shm`` when there is one): (path, array).

    The caller unlinks ``path`` when the workers are done; the array stays
    valid (the mapping outlives the name) and is freed with it. The name
    carries our PID: volumes left by a process that was killed mid-scan are
    removed here, the next time any scan starts (RAM in ``/dev/shm`` is not
    returned until they are).
    """
    folder = "/dev/shm" if os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
    remove_orphan_volumes(folder)
    fd, path = tempfile.mkstemp(prefix=f"{VOLUME_PREFIX}{os.getpid()}-", dir=folder)
    try:
        nbytes = int(np.prod(shape)) * 4
        os.ftruncate(fd, nbytes)
        mapping = mmap.mmap(fd, nbytes)
    except BaseException:
        os.unlink(path)
        raise
    finally:
        os.close(fd)
    return path, np.frombuffer(mapping, dtype=np.float32).reshape(shape)


def _decode_into(task: tuple[str, str, tuple[int, int, int], dict[int, int]]) -> Rejected | None:
    """Worker: decode one file and write its frames' HU into their slots of the shared volume."""
    path, volume_path, shape, slots = task
    slices, rejected = _read_one(path)  # a plain, picklable verdict crosses back, never the exception
    if rejected is not None:
        return rejected
    volume = np.memmap(volume_path, dtype=np.float32, mode="r+", shape=shape)
    written = 0
    for s in slices:
        slot = slots.get(s.frame)
        if slot is not None and s.stored is not None and s.stored.shape == shape[1:]:
            to_hu(s.stored, *s.rescale, out=volume[slot])
            written += 1
    del volume
    if written != len(slots):
        return Rejected(path, "changed between the header pass and decoding; it will be read again on the next "
                              "scan", "bad", slices[0].series_instance_uid if slices else "")
    return None


def scan_in_processes(files: list[str], workers: int, resample_tilt: bool) -> tuple[list, list[Rejected]] | None:
    """Header pass in threads, then worker processes decode straight into each series' volume.

    Returns ``(series, rejected)``, or ``None`` when worker processes cannot
    run here (the caller then reads with threads).
    """
    from_headers = list(read_files(files, workers=workers, mode="thread", decode=False))
    rejected = [verdict for _, verdict in from_headers if verdict is not None]
    groups: dict[str, list[Slice]] = {}
    for slices, _ in from_headers:
        for s in slices:
            groups.setdefault(s.series_instance_uid, []).append(s)
    series = []
    pools = _Pools(workers)
    try:
        pools.get()
    except OSError as exc:
        log.warning("decode worker processes cannot start (%s); reading with threads instead", describe(exc))
        return None
    try:
        for series_uid in sorted(groups):
            own = [r for r in rejected if r.series_instance_uid == series_uid]
            item, series_rejected = _decode_series(pools, workers, groups.pop(series_uid), own, resample_tilt)
            rejected.extend(r for r in series_rejected if r not in own)
            if item is not None:
                series.append(item)
    finally:
        pools.close()
    return series, rejected


class _Pools:
    """The worker processes of one scan, rebuilt after a worker died (a decoder crash)."""

    def __init__(self, workers: int) -> None:
        self.workers, self._pool = workers, None

    def get(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = _process_pool(self.workers)
        return self._pool

    def broken(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def _decode_isolated(pools: _Pools, tasks: list, series_uid: str) -> list[Rejected | None]:
    """After a worker died: each file alone, so the one that kills its worker is the one rejected."""
    out: list[Rejected | None] = []
    for task in tasks:
        try:
            out.append(pools.get().submit(_decode_into, task).result())
        except BrokenProcessPool:
            pools.broken()
            log.error("a decode worker process died while reading %s; it is left out", task[0])
            out.append(Rejected(task[0], CRASHED, "bad", series_uid))
    return out


def _decode_series(pools: _Pools, workers: int, slices: list[Slice], rejected: list[Rejected],
                   resample_tilt: bool) -> tuple[Series | None, list[Rejected]]:
    """Plan one series from headers, decode it in the pool into a shared volume, finish it.

    Returns the series (``None`` if no file of it could be decoded) and all its rejections.
    """
    own = list(rejected)
    warnings: list[str] = []
    ordered = plan(slices, own, warnings)
    shape = (len(ordered), ordered[0].rows, ordered[0].columns)
    volume_path, volume = shared_volume(shape)
    try:
        slots: dict[str, dict[int, int]] = {}
        for k, s in enumerate(ordered):
            slots.setdefault(s.path, {})[s.frame] = k
        tasks = [(path, volume_path, shape, frames) for path, frames in slots.items()]
        chunk = max(1, min(4, len(tasks) // (8 * workers)))
        try:
            results = list(pools.get().map(_decode_into, tasks, chunksize=chunk))
        except BrokenProcessPool:
            pools.broken()
            results = _decode_isolated(pools, tasks, ordered[0].series_instance_uid)
        failures = [r for r in results if r is not None]
    finally:
        os.unlink(volume_path)
    if failures:
        own.extend(failures)
        failed = {r.path for r in failures}
        keep = [k for k, s in enumerate(ordered) if s.path not in failed]
        if not keep:
            return None, own
        ordered = [ordered[k] for k in keep]
        volume = volume[keep]  # a private copy without the failed slots (rare path)
    return finish(ordered, volume, own, warnings, resample_tilt=resample_tilt), own
