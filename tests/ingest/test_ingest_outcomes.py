"""What becomes of each kind of file: accepted, duplicate, conflict, excluded, quarantined, deleted."""

from __future__ import annotations

import json
import logging
import shutil
import time

import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from ingest_helpers import Collector, settle
from edge_agent.testing.volumes import dicom_bytes, water_disc as phantom
from edge_agent.dicom.synth import SeriesHeaders, save, slice_datasets
from edge_agent.ingest import SIDECAR_SUFFIX
from edge_agent.ingest import decode as ingest_decode

PHI = ("PHANTOM^HEAD", "PH0001", "19700101")


def _sidecar(quarantine_dir, name):
    matches = list(quarantine_dir.rglob(name + SIDECAR_SUFFIX))
    assert len(matches) == 1, matches
    return json.loads(matches[0].read_text()), matches[0]


def test_truncated_file_is_quarantined_after_retry_timeout(make_ingest, dirs, tmp_path, caplog):
    watch, state = dirs
    caplog.set_level(logging.INFO, logger="edge_agent")
    c = Collector()
    ing = make_ingest(c, retry_timeout=1.0)
    data = dicom_bytes(1, tmp=tmp_path)[0]
    truncated = data[: len(data) - 700]  # header complete, pixel data short
    started = time.monotonic()
    (watch / "IM1.dcm").write_bytes(truncated)
    assert c.wait(rejected=1, timeout=6)
    waited = time.monotonic() - started
    settle(ing)
    assert waited >= 1.0  # not before retry_timeout
    path, reason = c.rejected[0]
    assert path == watch / "IM1.dcm" and "1 s" in reason
    entry, sidecar = _sidecar(state / "quarantine", "IM1.dcm")
    assert entry["category"] == "undecodable" and entry["original_path"] == str(watch / "IM1.dcm")
    assert entry["size"] == len(truncated) and entry["reason"] == reason
    copy = sidecar.with_name("IM1.dcm")
    assert copy.read_bytes() == truncated
    assert (watch / "IM1.dcm").read_bytes() == truncated  # the original is never modified
    assert c.files == [] and ing.stats()["quarantined"] == 1 and ing.stats()["retries"] >= 1
    # A rescan does not judge it again, and nothing anywhere carries patient data.
    ing.rescan_now()
    time.sleep(0.4)
    assert ing.stats()["quarantined"] == 1 and len(c.rejected) == 1
    text = caplog.text + sidecar.read_text()
    assert not any(p in text for p in PHI)


def test_not_dicom_is_quarantined_and_the_agent_goes_on(make_ingest, dirs, tmp_path):
    watch, state = dirs
    c = Collector()
    make_ingest(c, retry_timeout=0.5)
    (watch / "notes.txt").write_text("this is not DICOM\n")
    (watch / "IM1.dcm").write_bytes(dicom_bytes(1, tmp=tmp_path)[0])
    assert c.wait(files=1, rejected=1, timeout=6)
    assert c.rejected[0][0].name == "notes.txt"
    entry, _ = _sidecar(state / "quarantine", "notes.txt")
    assert entry["category"] == "undecodable"


def test_dicomdir_and_localizer_are_excluded_once_not_quarantined(make_ingest, dirs, monkeypatch):
    watch, state = dirs
    reads = []
    real_read_file = ingest_decode.read_file

    def spy(path, **kw):  # the real reader, counted
        reads.append(path)
        return real_read_file(path, **kw)

    monkeypatch.setattr(ingest_decode, "read_file", spy)  # decode_processes=False: in-thread
    c = Collector()
    ing = make_ingest(c)
    shutil.copy(get_testdata_file("DICOMDIR", download=False), watch / "DICOMDIR")
    localizer = next(slice_datasets(phantom(1), (5.0, 0.5, 0.5)))
    localizer.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    save(localizer, watch / "SCOUT.dcm")
    deadline = time.monotonic() + 5
    while ing.stats()["excluded"] < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    settle(ing)
    ing.rescan_now()
    ing.rescan_now()
    time.sleep(0.4)
    settle(ing)
    stats = ing.stats()
    assert stats["excluded"] == 2 and stats["quarantined"] == 0
    assert sorted(reads) == [watch / "DICOMDIR", watch / "SCOUT.dcm"]  # read once, not on every rescan
    assert c.files == [] and c.rejected == []
    assert not (state / "quarantine").exists() or not any((state / "quarantine").iterdir())


def test_duplicates_are_recorded_not_handed_over(make_ingest, dirs, tmp_path):
    watch, _ = dirs
    c = Collector()
    ing = make_ingest(c)
    data = dicom_bytes(2, tmp=tmp_path)
    (watch / "IM1.dcm").write_bytes(data[0])
    (watch / "IM2.dcm").write_bytes(data[1])
    assert c.wait(files=2, timeout=5)
    settle(ing)
    (watch / "copy").mkdir()
    (watch / "copy" / "IM1.dcm").write_bytes(data[0])  # same instance, another path
    (watch / "IM2.dcm").write_bytes(data[1])  # a resend that overwrites the same file
    time.sleep(0.6)
    settle(ing)
    stats = ing.stats()
    assert stats["duplicates"] == 2 and stats["accepted"] == 2 and len(c.files) == 2


def test_same_uid_with_different_content_is_a_quarantined_conflict(make_ingest, dirs, tmp_path):
    watch, state = dirs
    c = Collector()
    ing = make_ingest(c)
    uid = generate_uid()
    headers = SeriesHeaders()
    first = dicom_bytes(1, seed=1, headers=headers, tmp=tmp_path, sop_instance_uids=[uid])[0]
    second = dicom_bytes(1, seed=2, headers=headers, tmp=tmp_path, sop_instance_uids=[uid])[0]
    (watch / "a.dcm").write_bytes(first)
    assert c.wait(files=1, timeout=5)
    (watch / "b.dcm").write_bytes(second)
    assert c.wait(rejected=1, timeout=5)
    settle(ing)
    assert len(c.files) == 1 and c.files[0].path.name == "a.dcm"
    assert uid in c.rejected[0][1] and "new SOP Instance UID" in c.rejected[0][1]
    entry, _ = _sidecar(state / "quarantine", "b.dcm")
    assert entry["category"] == "conflict"
    assert ing.stats()["conflicts"] == 1


def test_pipeline_failure_quarantines_the_file_and_ingest_goes_on(make_ingest, dirs, tmp_path):
    watch, state = dirs
    c = Collector(fail_on=lambda item: item.path.name == "bad.dcm")
    ing = make_ingest(c)
    data = dicom_bytes(2, tmp=tmp_path)
    (watch / "bad.dcm").write_bytes(data[0])
    assert c.wait(rejected=1, timeout=5)
    (watch / "good.dcm").write_bytes(data[1])
    assert c.wait(files=1, timeout=5)
    settle(ing)
    assert [f.path.name for f in c.files] == ["good.dcm"]
    entry, _ = _sidecar(state / "quarantine", "bad.dcm")
    assert entry["category"] == "pipeline_error" and "RuntimeError" in entry["reason"]
    assert ing.stats()["pipeline_errors"] == 1


@pytest.mark.parametrize("delete", [False, True])
def test_retention_option(make_ingest, dirs, tmp_path, delete):
    watch, _ = dirs
    c = Collector()
    ing = make_ingest(c, delete_after_processing=delete, retry_timeout=0.3)
    data = dicom_bytes(2, tmp=tmp_path)
    (watch / "IM1.dcm").write_bytes(data[0])
    (watch / "IM2.dcm").write_bytes(data[1])
    (watch / "junk.bin").write_bytes(b"\0" * 50)
    assert c.wait(files=2, rejected=1, timeout=5)
    settle(ing)
    assert (watch / "IM1.dcm").exists()  # never deleted before the series is done
    ing.mark_series_done(c.files[0].series_instance_uid)
    remaining = sorted(p.name for p in watch.iterdir())
    if delete:
        assert remaining == [] and ing.stats()["deleted"] == 3
    else:
        assert remaining == ["IM1.dcm", "IM2.dcm", "junk.bin"] and ing.stats()["deleted"] == 0


def test_multiframe_enhanced_ct_is_one_file_one_instance(make_ingest, dirs):
    watch, _ = dirs
    c = Collector()
    ing = make_ingest(c)
    shutil.copy(get_testdata_file("eCT_Supplemental.dcm", download=False), watch / "ect.dcm")
    assert c.wait(files=1, timeout=10)
    settle(ing)
    item = c.files[0]
    # One key per frame (edge_agent.dicom keys frames as "<SOP Instance UID>.<frame>").
    assert len(item.slices) >= 2 and len(set(item.sop_instance_uids)) == len(item.slices)
    assert ing.stats()["accepted"] == 1


def test_files_removed_by_others_leave_the_ledgers_working_set(make_ingest, dirs, tmp_path):
    """A forwarder deletes finished files: the next rescan stops listing them; a resend is still a duplicate."""
    from edge_agent.ingest import ledger as L

    watch, _ = dirs
    c = Collector()
    ing = make_ingest(c)
    data = dicom_bytes(3, tmp=tmp_path)
    (watch / "series").mkdir()
    for k, d in enumerate(data):
        (watch / "series" / f"IM{k}.dcm").write_bytes(d)
    assert c.wait(files=3, timeout=5)
    settle(ing)
    ledger = ing._require_ledger()
    assert len(ledger.identities()) == 3
    ing.mark_series_done(c.files[0].series_instance_uid)
    shutil.rmtree(watch / "series")                          # not retention: somebody else's clean-up
    (tmp_path / "other").mkdir()
    (watch / "kept.dcm").write_bytes(dicom_bytes(1, tmp=tmp_path / "other", seed=9)[0])
    assert c.wait(files=4, timeout=5)
    settle(ing)
    ing.rescan_now()
    assert list(ledger.identities()) == [str(watch / "kept.dcm")]
    assert ledger.counts()[L.DELETED] == 3
    (watch / "again.dcm").write_bytes(data[0])               # resent under another name: still known
    time.sleep(0.6)
    settle(ing)
    assert ing.stats()["duplicates"] == 1 and len(c.files) == 4
    assert ledger.prune(before=time.time() + 1) == 3          # forgotten a week later (LEDGER_MEMORY_S)
