"""A simulated scanner: writes phantom series into a folder the way scanners do.

Slices are rendered first into a private staging folder, then delivered into
the target folder at a cadence (slices per second), in shuffled order, either
**in place** (the file is opened under its final name and written in two
chunks with a pause — what a storage SCP writing straight to disk looks like
to a watcher) or by **rename** (written under a dot-temp name, then renamed).
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

KINDS = ("ich", "normal", "chest", "nodule")
#: A routine head protocol (5 mm, standard kernel, no motion or metal): the series the ICH model is made
#: for, as the demo, the tests and the harnesses send them (``render(kind, seed, dir, **ROUTINE_HEAD)``).
ROUTINE_HEAD = {"thickness_mm": 5.0, "force": {"kernel": "standard", "motion": False, "metal": False}}
MAX_SLICES = 1000  # a series is rendered in memory first (512 x 512 float32: about 1 MB a slice)
MIN_RATE = 0.001   # slices per second: one slice every ~17 minutes (slower ones overflow a timed wait)


@dataclass
class Delivered:
    path: Path
    sop_index: int          # index along the series (0 = lowest position)
    completed_at: float     # time.time() when the file was complete on disk
    positive_slice: bool    # the phantom's label for this slice


@dataclass
class SimulatedSeries:
    kind: str
    seed: int
    series_instance_uid: str
    folder: Path
    delivered: list[Delivered] = field(default_factory=list)
    details: dict = field(default_factory=dict)


def render(kind: str, seed: int, staging: Path, *, transfer_syntax: str = "explicit", slices: int | None = None,
           **phantom_kwargs):
    """Render one phantom series into ``staging``; returns (phantom, paths in slice order)."""
    from edge_agent.phantoms import make_phantom, write_phantom

    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}")
    kwargs = dict(phantom_kwargs)
    if slices is not None:
        _check_slices(slices)
        kwargs["slices"] = slices
    phantom = make_phantom(kind, seed, **kwargs)
    paths = write_phantom(phantom, staging, transfer_syntax=transfer_syntax)
    return phantom, paths


def _check_slices(slices: int) -> None:
    if not 1 <= slices <= MAX_SLICES:
        raise ValueError(f"slices must be 1 to {MAX_SLICES} per series, got {slices}")


def write_bytes(data: bytes, dst: Path, style: str, pause: float, staging: Path | None = None) -> float:
    """Write one file into the watched folder like a scanner; returns when it was complete.

    ``inplace``: under the final name, in two chunks ``pause`` apart. ``rename``: a dot-temp name in
    the same folder, fsync, rename. ``movein``: written in ``staging`` (outside the watched tree), then
    moved in — inotify then reports only ``created``, as for a copy from another folder.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    if style in ("rename", "movein"):
        if style == "movein":
            if staging is None:
                raise ValueError("the movein style needs a staging folder outside the watch folder")
            staging.mkdir(parents=True, exist_ok=True)
            tmp = staging / dst.name
        else:
            tmp = dst.parent / f".{dst.name}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dst)
    else:
        half = len(data) // 2
        with open(dst, "wb") as fh:
            fh.write(data[:half])
            fh.flush()
            if pause > 0:
                time.sleep(pause)
            fh.write(data[half:])
    return time.time()


def deliver(src: Path, dst: Path, style: str, pause: float) -> float:
    """Copy one rendered file into the watched folder like a scanner (see :func:`write_bytes`)."""
    return write_bytes(src.read_bytes(), dst, style, pause, staging=src.parent)


class Scanner:
    """Writes series one after another into ``target``; runs in the caller or a named thread."""

    def __init__(self, target: Path, kinds: list[str], *, rate: float = 4.0, style: str = "inplace",
                 shuffle: bool = True, seed: int = 0, transfer_syntax: str = "explicit",
                 slices: int | None = None, stop_event: threading.Event | None = None, on_slice=None,
                 phantom_kwargs: dict[str, dict] | None = None):
        if slices is not None:
            _check_slices(slices)
        if not (rate == 0 or MIN_RATE <= rate < float("inf")):  # also refuses nan
            raise ValueError(f"rate must be 0 (as fast as possible) or {MIN_RATE:g} slices per second or more, "
                             f"got {rate}")
        if seed < 0:
            raise ValueError(f"seed must be 0 or more, got {seed}")
        self.target = Path(target)
        self.kinds = kinds
        self.rate, self.style, self.shuffle, self.seed = rate, style, shuffle, seed
        self.transfer_syntax, self.slices = transfer_syntax, slices
        self.stop_event = stop_event or threading.Event()
        self.on_slice = on_slice
        self.phantom_kwargs = phantom_kwargs or {}  # per kind, e.g. {"ich": {"volume_ml": 12}}
        self.series: list[SimulatedSeries] = []

    def run(self) -> list[SimulatedSeries]:
        staging_root = Path(tempfile.mkdtemp(prefix="edge-agent-scanner-"))
        try:
            for n, kind in enumerate(self.kinds):
                if self.stop_event.is_set():
                    break
                self.series.append(self._one(kind, self.seed + n, staging_root / f"{n}"))
        finally:
            shutil.rmtree(staging_root, ignore_errors=True)
        return self.series

    def _one(self, kind: str, seed: int, staging: Path) -> SimulatedSeries:
        phantom, paths = render(kind, seed, staging, transfer_syntax=self.transfer_syntax, slices=self.slices,
                                **self.phantom_kwargs.get(kind, {}))
        uid = phantom.headers.series_instance_uid
        folder = self.target / f"{kind}-{seed}-{uid[-8:]}"
        sim = SimulatedSeries(kind, seed, uid, folder, details=dict(phantom.details))
        order = list(range(len(paths)))
        if self.shuffle:
            random.Random(seed).shuffle(order)
        interval = 1.0 / self.rate if self.rate > 0 else 0.0
        next_at = time.monotonic()
        for index in order:
            if self.stop_event.is_set():
                break
            delay = next_at - time.monotonic()
            if delay > 0 and self.stop_event.wait(delay):
                break
            next_at += interval
            dst = folder / paths[index].name
            done = deliver(paths[index], dst, self.style, pause=min(0.05, interval / 4))
            item = Delivered(dst, index, done, bool(phantom.slice_labels[index]))
            sim.delivered.append(item)
            if self.on_slice:
                self.on_slice(sim, item)
        return sim
