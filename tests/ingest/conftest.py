"""Fixtures for ingest tests: real DICOM files on a real filesystem, a running Ingest."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest_helpers import Collector
from edge_agent.ingest import Ingest, IngestSettings


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    watch = tmp_path / "watch"
    state = tmp_path / "state"
    watch.mkdir()
    return watch.resolve(), state.resolve()


@pytest.fixture(params=["inotify", "polling"])
def observer_kind(request) -> str:
    return request.param


@pytest.fixture
def make_ingest(dirs):
    """Factory: start an Ingest on the test folders with short timeouts; all are stopped at teardown."""
    started: list[Ingest] = []
    watch, state = dirs

    def factory(collector: Collector, **overrides) -> Ingest:
        values = dict(watch_dir=watch, state_dir=state, stable_seconds=0.2, retry_timeout=1.0,
                      rescan_interval=30.0, poll_interval=0.1, workers=2,
                      decode_processes=False)
        values.update(overrides)
        ingest = Ingest(IngestSettings(**values), collector.on_file, collector.on_rejected)
        ingest.start()
        started.append(ingest)
        return ingest

    yield factory
    for ingest in started:
        ingest.stop()
