"""Helpers for ingest tests: phantom DICOM bytes, a collecting pipeline, waiting."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from edge_agent.dicom.synth import SeriesHeaders, save, slice_datasets
from edge_agent.ingest import Ingest, IngestedFile


def phantom(n: int = 3, size: int = 32, seed: int = 0) -> np.ndarray:
    """A small CT-like volume in HU (air around a water disc with some noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    disc = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (size / 3) ** 2
    vol = np.where(disc, 40.0, -1000.0)[None].repeat(n, 0)
    return (vol + rng.normal(0, 5, vol.shape)).astype(np.float32)


def dicom_bytes(n: int = 3, *, seed: int = 0, headers: SeriesHeaders | None = None,
                tmp: Path, sop_instance_uids: list[str] | None = None) -> list[bytes]:
    """Encode a phantom series and return each file's bytes (written through synth.save)."""
    headers = headers or SeriesHeaders()
    out = []
    for k, ds in enumerate(slice_datasets(phantom(n, seed=seed), (5.0, 0.5, 0.5), headers,
                                          sop_instance_uids=sop_instance_uids)):
        p = save(ds, tmp / f"enc-{seed}-{k}.dcm")
        out.append(p.read_bytes())
        p.unlink()
    return out


class Collector:
    """The pipeline side: records every IngestedFile and every rejection."""

    def __init__(self, fail_on: Callable[[IngestedFile], bool] | None = None) -> None:
        self.files: list[IngestedFile] = []
        self.rejected: list[tuple[Path, str]] = []
        self._cond = threading.Condition()
        self._fail_on = fail_on

    def on_file(self, item: IngestedFile) -> None:
        if self._fail_on is not None and self._fail_on(item):
            raise RuntimeError("pipeline stand-in failure")
        with self._cond:
            self.files.append(item)
            self._cond.notify_all()

    def on_rejected(self, path: Path, reason: str) -> None:
        with self._cond:
            self.rejected.append((path, reason))
            self._cond.notify_all()

    def wait(self, files: int = 0, rejected: int = 0, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.files) < files or len(self.rejected) < rejected:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    @property
    def sop_uids(self) -> list[str]:
        return [u for f in self.files for u in f.sop_instance_uids]


def settle(ingest: Ingest, timeout: float = 5.0) -> None:
    """Wait until nothing is pending or decoding."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = ingest.stats()
        if s["pending"] == 0 and s["decoding"] == 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"ingest did not settle: {ingest.stats()}")


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0, period: float = 0.05) -> bool:
    """Poll ``predicate`` until it holds (True) or ``timeout`` s pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(period)
    return False
