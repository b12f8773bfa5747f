"""Watching comes back by itself after the watch folder was removed and recreated."""

from __future__ import annotations

import shutil
import time

from ingest_helpers import Collector, settle
from edge_agent.testing.volumes import dicom_bytes


def _wait_rescans(ing, n: int, timeout: float = 10.0) -> None:
    target = ing.stats()["rescans"] + n
    deadline = time.monotonic() + timeout
    while ing.stats()["rescans"] < target and time.monotonic() < deadline:
        time.sleep(0.05)


def test_watch_folder_removed_and_recreated(make_ingest, dirs, tmp_path, observer_kind):
    watch, _ = dirs
    c = Collector()
    ing = make_ingest(c, poll=observer_kind == "polling", rescan_interval=0.3)
    shutil.rmtree(watch)
    _wait_rescans(ing, 2)  # a rescan sees it gone
    watch.mkdir()
    _wait_rescans(ing, 2)  # a whole rescan-and-supervise round after it is back re-arms watching
    events_before = ing.stats()["events"]
    (watch / "IM1.dcm").write_bytes(dicom_bytes(1, tmp=tmp_path)[0])
    assert c.wait(files=1, timeout=5)
    settle(ing)
    assert ing.stats()["events"] > events_before  # seen by the new observer, not only by a rescan
