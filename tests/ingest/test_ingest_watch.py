"""How files arrive, with both observers (inotify and polling): each counts once, and only when complete."""

from __future__ import annotations

import os
import shutil
import time

import numpy as np

from ingest_helpers import Collector, settle
from edge_agent.testing.volumes import dicom_bytes, water_disc as phantom
from edge_agent.ingest import watcher


def _write_slowly(path, data: bytes, chunks: int, gap: float) -> float:
    """Write in place through one open handle, flushing each chunk; return when the last byte was written."""
    step = -(-len(data) // chunks)
    with open(path, "wb") as fh:
        for i in range(0, len(data), step):
            if i:
                time.sleep(gap)
            fh.write(data[i:i + step])
            fh.flush()
            os.fsync(fh.fileno())
            last_write = time.time()
    return last_write


def test_growing_file_is_not_read_early(make_ingest, dirs, tmp_path, observer_kind):
    watch, _ = dirs
    c = Collector()
    ing = make_ingest(c, poll=observer_kind == "polling", stable_seconds=0.6)
    data = dicom_bytes(1, tmp=tmp_path)[0]
    finished = _write_slowly(watch / "IM00001", data, chunks=5, gap=0.05)  # gaps << stable_seconds
    assert c.wait(files=1, timeout=5)
    settle(ing)
    item = c.files[0]
    assert item.complete_at >= finished
    assert item.path == watch / "IM00001"
    np.testing.assert_allclose(item.slices[0].hu, phantom(1)[0], atol=1.0)
    stats = ing.stats()
    # Never handed to the decoder before it was complete, so no failed read either.
    assert stats["retries"] == 0 and stats["quarantined"] == 0 and stats["accepted"] == 1
    assert len(c.files) == 1 and not c.rejected


def test_writer_pausing_longer_than_stable_is_retried_not_lost(make_ingest, dirs, tmp_path, observer_kind):
    watch, _ = dirs
    c = Collector()
    ing = make_ingest(c, poll=observer_kind == "polling", stable_seconds=0.1, retry_timeout=3.0)
    data = dicom_bytes(1, tmp=tmp_path)[0]
    _write_slowly(watch / "IM00001", data, chunks=3, gap=0.4)  # pauses > stable_seconds
    assert c.wait(files=1, timeout=8)
    settle(ing)
    stats = ing.stats()
    # Read while incomplete (undecodable → retried, or pixel data not there yet → excluded),
    # then read again once it changed: accepted, never quarantined.
    assert stats["retries"] + stats["excluded"] >= 1
    assert stats["accepted"] == 1 and stats["quarantined"] == 0 and not c.rejected
    np.testing.assert_allclose(c.files[0].slices[0].hu, phantom(1)[0], atol=1.0)


def test_temp_then_rename_counts_once_under_final_name(make_ingest, dirs, tmp_path, observer_kind):
    watch, _ = dirs
    c = Collector()
    ing = make_ingest(c, poll=observer_kind == "polling")
    files = dicom_bytes(3, tmp=tmp_path)
    temps = [watch / ".IM1.dcm", watch / "IM2.dcm.part", watch / "IM3.tmp"]
    for temp, data in zip(temps, files):
        temp.write_bytes(data)
    time.sleep(0.5)  # longer than stable_seconds: temp names must still be ignored
    assert c.files == []
    finals = [watch / "IM1.dcm", watch / "IM2.dcm", watch / "IM3.dcm"]
    for temp, final in zip(temps, finals):
        os.rename(temp, final)
    assert c.wait(files=3, timeout=5)
    settle(ing)
    assert sorted(f.path for f in c.files) == sorted(finals)
    assert len(set(c.sop_uids)) == 3 and ing.stats()["accepted"] == 3


def test_renamed_into_place_is_read_without_waiting_for_the_quiet_period(make_ingest, dirs, tmp_path):
    """inotify only: a poller sees a file created and renamed within one interval as just created."""
    watch, _ = dirs
    c = Collector()
    make_ingest(c, stable_seconds=5.0)
    (watch / "IM1.dcm.part").write_bytes(dicom_bytes(1, tmp=tmp_path)[0])
    started = time.monotonic()
    os.rename(watch / "IM1.dcm.part", watch / "IM1.dcm")
    assert c.wait(files=1, timeout=3)
    assert time.monotonic() - started < 2.0  # well under stable_seconds


def test_files_in_new_subfolders(make_ingest, dirs, tmp_path, observer_kind):
    watch, _ = dirs
    c = Collector()
    ing = make_ingest(c, poll=observer_kind == "polling")
    deep = watch / "STUDY1" / "SERIES2"
    deep.mkdir(parents=True)
    for k, data in enumerate(dicom_bytes(4, tmp=tmp_path)):
        (deep / f"IM{k}").write_bytes(data)
    assert c.wait(files=4, timeout=5)
    settle(ing)
    assert {f.path.parent for f in c.files} == {deep}
    assert len(c.files) == 4


def test_file_and_folder_moved_in_from_outside(make_ingest, dirs, tmp_path, observer_kind):
    watch, _ = dirs
    outside = tmp_path / "outside"
    (outside / "series").mkdir(parents=True)
    files = dicom_bytes(3, tmp=tmp_path)
    (outside / "single.dcm").write_bytes(files[0])
    (outside / "series" / "a.dcm").write_bytes(files[1])
    (outside / "series" / "b.dcm").write_bytes(files[2])
    c = Collector()
    ing = make_ingest(c, poll=observer_kind == "polling")
    shutil.move(outside / "single.dcm", watch / "single.dcm")
    shutil.move(outside / "series", watch / "series")  # a whole folder: its files give no events
    assert c.wait(files=3, timeout=5)
    settle(ing)
    assert sorted(f.path.name for f in c.files) == ["a.dcm", "b.dcm", "single.dcm"]


def test_file_moved_in_from_outside_is_read_without_the_quiet_period(make_ingest, dirs, tmp_path):
    """inotify: a rename into the folder is a finished file (full events), like a rename inside it."""
    watch, _ = dirs
    outside = tmp_path / "outside"
    outside.mkdir()
    data = dicom_bytes(2, tmp=tmp_path)
    (outside / "a.dcm").write_bytes(data[0])
    c = Collector()
    ing = make_ingest(c, stable_seconds=60.0)           # a bare "created" would wait a minute
    os.rename(outside / "a.dcm", watch / "a.dcm")
    assert c.wait(files=1, timeout=10), "a moved-in file must not wait out stable_seconds"
    (watch / "b.dcm").write_bytes(data[1])              # written in place: closed by its writer, also at once
    assert c.wait(files=2, timeout=10)
    os.rename(watch / "a.dcm", outside / "a-again.dcm")  # moved out: no destination, nothing happens
    time.sleep(0.3)
    settle(ing)
    assert sorted(f.path.name for f in c.files) == ["a.dcm", "b.dcm"] and not c.rejected


def test_ignored_names_and_own_folders_inside_watch_dir(make_ingest, dirs, tmp_path, observer_kind):
    watch, _ = dirs
    c = Collector()
    # State (and so quarantine) inside the watch folder, as a careless install would have it.
    ing = make_ingest(c, poll=observer_kind == "polling", state_dir=watch / "state")
    data = dicom_bytes(6, tmp=tmp_path)
    (watch / ".hidden.dcm").write_bytes(data[0])
    (watch / "IM1.dcm~").write_bytes(data[1])
    (watch / "~IM2.dcm").write_bytes(data[2])
    (watch / ".incoming").mkdir()
    (watch / ".incoming" / "IM3.dcm").write_bytes(data[3])
    (watch / "state" / "quarantine" / "IM4.dcm").write_bytes(data[4])
    (watch / "real.dcm").write_bytes(data[5])
    assert c.wait(files=1, timeout=5)
    ing.rescan_now()
    time.sleep(0.5)
    settle(ing)
    assert [f.path.name for f in c.files] == ["real.dcm"]


def test_missed_events_are_found_by_periodic_rescan(make_ingest, dirs, tmp_path, monkeypatch, observer_kind):
    """An inotify queue overflow loses events; simulated by a handler that drops every event."""
    watch, _ = dirs
    monkeypatch.setattr(watcher._Handler, "dispatch", lambda self, event: None)  # events lost
    c = Collector()
    ing = make_ingest(c, poll=observer_kind == "polling", rescan_interval=0.4)
    for k, data in enumerate(dicom_bytes(2, tmp=tmp_path)):
        (watch / f"IM{k}").write_bytes(data)
    assert c.wait(files=2, timeout=5)
    settle(ing)
    stats = ing.stats()
    assert stats["events"] == 0 and stats["rescan_found"] >= 2 and stats["accepted"] == 2
