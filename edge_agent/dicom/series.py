"""Many files and folders → CT series grouped by SeriesInstanceUID.

:func:`scan` reads every file in parallel (:mod:`edge_agent.dicom.parallel`),
groups the CT slices by Series Instance UID and assembles each group
(:mod:`edge_agent.dicom.assembly`). One bad file never spoils a series: it is
listed in ``rejected`` with its reason and the rest goes on.
"""

from __future__ import annotations

import os
from typing import Iterable

from edge_agent.dicom import parallel
from edge_agent.dicom.assembly import _assemble
from edge_agent.dicom.limits import special_kind
from edge_agent.dicom.model import Rejected, ScanReport, Series, Slice

PathLike = str | os.PathLike


def iter_files(paths_or_dirs: PathLike | Iterable[PathLike]) -> tuple[list[str], list[Rejected]]:
    """Every file under the given files/folders (recursive, sorted, hidden names skipped)."""
    if isinstance(paths_or_dirs, (str, os.PathLike)):
        paths_or_dirs = [paths_or_dirs]
    files: list[str] = []
    missing: list[Rejected] = []
    seen: set[str] = set()

    def add(path: str) -> None:
        real = os.path.realpath(path)
        if real not in seen:
            seen.add(real)
            files.append(path)

    for item in paths_or_dirs:
        item = os.fspath(item)
        if os.path.isdir(item):
            for root, dirs, names in os.walk(item):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(names):
                    if not name.startswith("."):
                        path = os.path.join(root, name)
                        kind = _special(path)
                        if kind:  # a FIFO would block open() forever: refused without opening it
                            missing.append(Rejected(path, f"is {kind}, not a regular file; only regular files "
                                                          "are read", "bad"))
                        else:
                            add(path)
        elif os.path.isfile(item):
            add(item)
        else:
            missing.append(Rejected(item, "does not exist or is not a regular file", "bad"))
    return files, missing


def _special(path: str) -> str:
    """What a listed entry is when it is not a regular file (``""`` for one, or if it vanished)."""
    try:
        return special_kind(os.stat(path).st_mode)
    except OSError:
        return ""  # vanished or dangling: read_file words it


def scan(paths_or_dirs: PathLike | Iterable[PathLike], *, workers: int | None = None,
         executor: str = "auto", resample_tilt: bool = True) -> ScanReport:
    """All CT series under the given files/folders, plus every file left out with its reason.

    ``workers``: parallel readers (default: every core; 1 reads in-process).
    ``executor``: ``"auto"`` (processes for JPEG-family syntaxes, whose
    decoders hold the GIL; threads otherwise — see
    :func:`edge_agent.dicom.parallel.choose_mode`), ``"thread"`` or
    ``"process"`` (forkserver, safe from a threaded daemon; falls back to
    threads if worker processes cannot start).
    """
    files, rejected = iter_files(paths_or_dirs)
    workers = workers or os.cpu_count() or 1
    mode = parallel.choose_mode(files, workers, executor)
    if mode == "process":
        result = parallel.scan_in_processes(files, workers, resample_tilt)
        if result is not None:
            return ScanReport(series=result[0], rejected=rejected + result[1])
        mode = "thread"
    groups: dict[str, list[Slice]] = {}
    for slices, verdict in parallel.read_files(files, workers=workers, mode=mode):
        if verdict is not None:
            rejected.append(verdict)
        for s in slices:
            groups.setdefault(s.series_instance_uid, []).append(s)
    series = []
    for series_uid in sorted(groups):
        own = [r for r in rejected if r.series_instance_uid == series_uid]
        item = _assemble(groups.pop(series_uid), resample_tilt=resample_tilt, consume=True, rejected=own,
                         workers=workers if mode == "thread" else 1)
        rejected.extend(r for r in item.rejected if r not in own)
        series.append(item)
    return ScanReport(series=series, rejected=rejected)


def read_series(paths_or_dirs: PathLike | Iterable[PathLike], *, workers: int | None = None) -> list[Series]:
    """The contract: every CT series under the given files/folders, as HU volumes ordered along the normal.

    Files left out are listed in each ``Series.rejected`` (and all of them
    by :func:`scan`).
    """
    return scan(paths_or_dirs, workers=workers).series
