"""The seeded fuzz harness: hostile files through the reader, the batch scan and the ingest's decode step.

Used by ``tests/ingest/test_fuzz.py`` (a short run in CI) and
``scripts/fuzz_ingest.py`` (≥ 10,000 inputs, figures in docs/RELIABILITY.md).
Each input is a mutation of a real seed file (:mod:`edge_agent.dicom.mutate`)
or, now and then, a hostile file-system entry (a FIFO, a folder named like
a file, a mode-000 file, a 255-byte name, a name that is not UTF-8). Every
input goes through

1. :func:`edge_agent.dicom.read_file` — slices, or a ``DicomError`` with a sentence;
2. the ingest's decode step (``Ingest._decode``, the error boundary the
   decode threads run) — ``ok``, ``excluded`` or ``bad`` with a sentence;
3. in batches, :func:`edge_agent.dicom.scan` of the batch folder — every
   entry in a series or in ``rejected``.

Anything else — an exception escaping, a file in neither list, a reason
that is internal error text, a file taking longer than ``max_seconds`` —
is a *violation*, listed in the report.
"""

from __future__ import annotations

import os
import random
import re
import resource
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from edge_agent.dicom import DicomError, read_file, scan
from edge_agent.dicom.mutate import mutate, seed_files
from edge_agent.ingest.core import Ingest
from edge_agent.ingest.settings import IngestSettings

# Text that must never be a reason: tracebacks, internal exception names and messages.
_INTERNAL = re.compile(r"Traceback|PicklingError|pyo3_runtime|PanicException|maximum recursion depth|"
                       r"^\w+(Error|Exception)\b|\n")
# Reason classes for the report, first match wins.
CLASSES = (
    ("not a regular file", "not a regular file"), ("disappeared", "vanished"),
    ("could not be opened", "unreadable"), ("could not be examined", "unreadable"),
    ("Instance UID", "missing UID"), ("Number of Frames", "frame count"), ("frames", "size vs pixel data"),
    ("declares", "size vs pixel data"), ("nested too deeply", "deep sequences"),
    ("crashed the decoder", "decoder panic"), ("not a DICOM Part 10", "not DICOM"),
    ("truncated", "truncated"), ("no pixel data", "no pixel data"), ("empty pixel data", "no pixel data"),
    ("damaged", "damaged header"), ("could not be decoded", "undecodable pixels"),
    ("no installed decoder", "unsupported syntax"), ("does not match", "size vs pixel data"),
    ("Image Position", "geometry"), ("per-frame", "geometry"), ("colour", "excluded"), ("not CT", "excluded"),
    ("Modality", "excluded"), ("non-image", "excluded"), ("secondary", "excluded"), ("localizer", "excluded"),
    ("media index", "excluded"), ("DERIVED", "excluded"),
)


def reason_class(reason: str) -> str:
    return next((name for key, name in CLASSES if key in reason), "other")


def is_sentence(reason: str) -> bool:
    return bool(reason.strip()) and not _INTERNAL.search(reason)


@dataclass
class FuzzReport:
    seed: int
    inputs: int = 0
    accepted: int = 0
    rejected: Counter = field(default_factory=Counter)
    mutations: Counter = field(default_factory=Counter)
    batches: int = 0
    max_seconds: float = 0.0
    slowest: str = ""
    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    violations: list[str] = field(default_factory=list)

    def table(self) -> str:
        rows = [("seed", str(self.seed)), ("inputs", f"{self.inputs:,}"), ("accepted (slices)", f"{self.accepted:,}"),
                ("rejected", f"{sum(self.rejected.values()):,}")]
        rows += [(f"  {name}", f"{n:,}") for name, n in self.rejected.most_common()]
        rows += [("scan batches", f"{self.batches:,}"), ("max seconds per file", f"{self.max_seconds:.3f}"),
                 ("slowest", self.slowest), ("wall seconds", f"{self.seconds:.1f}"),
                 ("peak RSS (MB)", f"{self.peak_rss_mb:.0f}"), ("violations", str(len(self.violations)))]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"| {k.ljust(width)} | {v} |" for k, v in rows)


def _peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024.0


def _hostile_entry(folder: Path, k: int, data: bytes, rng: random.Random) -> tuple[str, Path]:
    """A file-system entry no scanner should write, holding ``data`` where it can."""
    kind = rng.choice(("fifo", "folder", "mode000", "long_name", "non_utf8"))
    if kind == "fifo":
        path = folder / f"IM{k:06d}.dcm"
        os.mkfifo(path)
    elif kind == "folder":
        path = folder / f"IM{k:06d}.dcm"
        path.mkdir()
    elif kind == "mode000":
        path = folder / f"IM{k:06d}.dcm"
        path.write_bytes(data)
        path.chmod(0)
    elif kind == "long_name":
        path = folder / (f"IM{k:06d}-" + "x" * 255)[:251]
        path = path.with_name(path.name + ".dcm")
        path.write_bytes(data)
    else:
        path = folder / os.fsdecode(b"IM\xff\xfe%06d.dcm" % k)
        path.write_bytes(data)
    return kind, path


class Harness:
    """Runs inputs and fills a :class:`FuzzReport` (see the module doc)."""

    def __init__(self, workdir: Path, seed: int, *, batch: int = 16, max_seconds: float = 10.0,
                 scan_executor: str = "thread", hostile_every: int = 25, process_every: int = 0) -> None:
        self.workdir = Path(workdir)
        self.rng = random.Random(seed)
        self.report = FuzzReport(seed)
        self.batch = batch
        self.max_seconds = max_seconds
        self.scan_executor = scan_executor
        self.hostile_every = hostile_every
        self.process_every = process_every  # every n-th batch is scanned with worker processes
        self.seeds = [p.read_bytes() for p in seed_files(self.workdir / "seeds", seed)]
        watch = self.workdir / "watch"
        watch.mkdir(parents=True, exist_ok=True)
        self._ingest = Ingest(IngestSettings(watch, self.workdir / "state", workers=1, decode_processes=False),
                              on_file=lambda item: None)

    def close(self) -> None:
        self._ingest.stop()

    def run(self, count: int) -> FuzzReport:
        started = time.monotonic()
        k = 0
        while k < count:
            folder = self.workdir / f"batch-{k // self.batch:06d}"
            folder.mkdir()
            paths = []
            for _ in range(min(self.batch, count - k)):
                paths.append(self._one(folder, k))
                k += 1
            self._scan(folder, paths)
            self._clean(folder)
        self.report.seconds = time.monotonic() - started
        self.report.peak_rss_mb = _peak_rss_mb()
        return self.report

    def _violation(self, text: str) -> None:
        if len(self.report.violations) < 200:
            self.report.violations.append(text)

    def _one(self, folder: Path, k: int) -> Path:
        report = self.report
        name, data = mutate(self.rng.choice(self.seeds), self.rng)
        if self.hostile_every and k % self.hostile_every == self.hostile_every - 1:
            kind, path = _hostile_entry(folder, k, data, self.rng)
            name = f"fs:{kind}"
        else:
            path = folder / f"IM{k:06d}.dcm"
            path.write_bytes(data)
        report.inputs += 1
        report.mutations[name.split("+")[0]] += 1
        t0 = time.monotonic()
        try:
            slices = read_file(path)
            if slices:
                report.accepted += 1
            else:
                self._violation(f"{path.name} ({name}): read_file returned no slices and no reason")
        except DicomError as exc:
            report.rejected[reason_class(exc.reason)] += 1
            if not is_sentence(exc.reason):
                self._violation(f"{path.name} ({name}): reason is not a sentence: {exc.reason[:200]!r}")
        except BaseException as exc:  # noqa: BLE001 - this is what the fuzzer looks for
            if isinstance(exc, KeyboardInterrupt):
                raise
            self._violation(f"{path.name} ({name}): {type(exc).__name__} escaped read_file: {str(exc)[:200]}")
        self._decode_step(path, name)
        elapsed = time.monotonic() - t0
        if elapsed > report.max_seconds:
            report.max_seconds, report.slowest = elapsed, f"{path.name}: {name} ({len(data):,} B)"
            if path.is_file() and os.access(path, os.R_OK):
                shutil.copyfile(path, self.workdir / "slowest.dcm")  # kept with --keep, to reproduce
        if elapsed > self.max_seconds:
            self._violation(f"{path.name} ({name}): took {elapsed:.1f} s")
        return path

    def _decode_step(self, path: Path, name: str) -> None:
        """The ingest decode threads' boundary: ok, excluded or bad with a sentence; never an exception."""
        try:
            self._ingest._decode(path, None)
            item = self._ingest._results.get_nowait()
        except BaseException as exc:  # noqa: BLE001
            if isinstance(exc, KeyboardInterrupt):
                raise
            self._violation(f"{path.name} ({name}): {type(exc).__name__} escaped the ingest decode step")
            return
        if item.kind == "ok" and not item.slices:
            self._violation(f"{path.name} ({name}): ingest decoded no slices without a reason")
        if item.kind in ("bad", "excluded") and not is_sentence(item.message):
            self._violation(f"{path.name} ({name}): ingest reason is not a sentence: {item.message[:200]!r}")

    def _scan(self, folder: Path, paths: list[Path]) -> None:
        self.report.batches += 1
        executor = self.scan_executor
        if self.process_every and self.report.batches % self.process_every == 0:
            executor = "process"
        try:
            result = scan([folder], workers=2, executor=executor)
        except BaseException as exc:  # noqa: BLE001
            if isinstance(exc, KeyboardInterrupt):
                raise
            self._violation(f"{folder.name}: {type(exc).__name__} escaped scan: {str(exc)[:200]}")
            return
        seen = {p for s in result.series for p in s.paths} | {r.path for r in result.rejected}
        for series in result.series:
            seen |= {r.path for r in series.rejected}
        for r in result.rejected:
            if not is_sentence(r.reason):
                self._violation(f"{Path(r.path).name}: scan reason is not a sentence: {r.reason[:200]!r}")
        for path in paths:
            if path.is_dir() and not path.is_symlink():
                continue  # a folder named like a file: scanned as a folder (it is empty)
            if str(path) not in seen:
                self._violation(f"{path.name}: in no series and not rejected by scan")

    @staticmethod
    def _clean(folder: Path) -> None:
        for entry in folder.iterdir():
            if entry.is_file() and not entry.is_symlink():
                entry.chmod(0o600)
        shutil.rmtree(folder, ignore_errors=True)


def run(workdir: Path, seed: int, count: int, **kwargs) -> FuzzReport:
    """``count`` inputs from ``seed`` under ``workdir`` (see :class:`Harness`)."""
    harness = Harness(workdir, seed, **kwargs)
    try:
        return harness.run(count)
    finally:
        harness.close()
