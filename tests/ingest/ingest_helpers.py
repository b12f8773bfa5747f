"""Helpers for ingest tests: a collecting pipeline stand-in, waiting for ingest to settle.

Volumes and DICOM bytes: edge_agent.testing.volumes; waiting in general: edge_agent.testing.wait.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable

from edge_agent.ingest import Ingest, IngestedFile


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
