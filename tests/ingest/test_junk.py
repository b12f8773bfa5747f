"""Junk in the watch folder: quarantined at once; only what may still be arriving is retried; one log line each.

Real Ingest on a real folder. ``retry_timeout`` is set far longer than any wait here (300 s), so a file
quarantined within the wait was quarantined without waiting out the retries — a functional check, not
a timing benchmark.
"""

from __future__ import annotations

import io
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom

from ingest_helpers import Collector, settle
from edge_agent.testing.volumes import dicom_bytes
from edge_agent.testing.wait import wait_until as wait_for
from edge_agent.ingest import SIDECAR_SUFFIX
from edge_agent.ingest.stable import cannot_become_dicom, ends_in_file_meta

LONG_RETRY = 300.0   # far beyond every bounded wait below
WAIT = 20.0          # bounded wait for something that happens without retries


def _records(caplog, level: int, *words: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == level and r.name.startswith("edge_agent") and all(w in r.getMessage() for w in words)]


def test_text_file_is_quarantined_at_once_and_logged_once(make_ingest, dirs, caplog):
    watch, state = dirs
    caplog.set_level(logging.INFO, logger="edge_agent")
    c = Collector()
    ing = make_ingest(c, retry_timeout=LONG_RETRY)
    text = "#!/bin/sh\n# a clean-up script somebody left in the export folder\nrm -f /tmp/x\n" * 5
    assert len(text) > 132
    (watch / "cleanup.sh").write_text(text)
    assert c.wait(rejected=1, timeout=WAIT), "junk waited for retry_timeout instead of being quarantined at once"
    settle(ing)
    path, reason = c.rejected[0]
    assert path == watch / "cleanup.sh"
    assert "not retried" in reason and "no 'DICM' marker" in reason
    stats = ing.stats()
    assert stats["quarantined"] == 1 and stats["retries"] == 0
    assert len(list((state / "quarantine").rglob("cleanup.sh" + SIDECAR_SUFFIX))) == 1
    assert len(_records(caplog, logging.WARNING, "quarantined", "cleanup.sh")) == 1


def test_random_bytes_past_the_preamble_are_quarantined_at_once(make_ingest, dirs):
    watch, _ = dirs
    c = Collector()
    ing = make_ingest(c, retry_timeout=LONG_RETRY)
    (watch / "blob.dcm").write_bytes(bytes(range(1, 256)) * 4)  # .dcm name, no DICM at byte 128
    assert c.wait(rejected=1, timeout=WAIT)
    assert ing.stats()["retries"] == 0 and c.files == []


def test_growing_dicom_file_is_retried_not_quarantined(make_ingest, dirs, tmp_path):
    """A DICOM file whose writer is still at it: failed reads are retried, then the finished file is accepted."""
    watch, _ = dirs
    c = Collector()
    ing = make_ingest(c, retry_timeout=LONG_RETRY, stable_seconds=0.1)
    data = dicom_bytes(1, tmp=tmp_path)[0]
    target = watch / "IM1.dcm"
    with open(target, "wb") as fh:          # kept open: no close event, the stable check decides
        fh.write(data[: len(data) - 700])   # header complete, pixel data short
        fh.flush()
        assert wait_for(lambda: ing.stats()["retries"] >= 2), ing.stats()
        assert c.rejected == [] and c.files == []
        fh.write(data[len(data) - 700:])
    assert c.wait(files=1, timeout=WAIT), ing.stats()
    settle(ing)
    assert c.rejected == [] and ing.stats()["quarantined"] == 0


def test_files_not_yet_past_the_marker_are_retried(make_ingest, dirs, tmp_path):
    """Shorter than preamble + DICM with a start of "DICM", or zeros where it goes: may still become DICOM."""
    watch, _ = dirs
    c = Collector()
    ing = make_ingest(c, retry_timeout=LONG_RETRY, stable_seconds=0.1)
    data = dicom_bytes(2, tmp=tmp_path)
    paused = watch / "IM1.dcm"
    paused.write_bytes(data[0][:130])                      # preamble + "DI"
    allocated = watch / "IM2.dcm"
    allocated.write_bytes(b"\0" * len(data[1]))            # space allocated, not yet written
    assert not cannot_become_dicom(paused) and not cannot_become_dicom(allocated)
    assert wait_for(lambda: ing.stats()["retries"] >= 4), ing.stats()
    assert c.rejected == [] and c.files == []
    with open(paused, "ab") as fh:
        fh.write(data[0][130:])
    with open(allocated, "r+b") as fh:
        fh.write(data[1])
    assert c.wait(files=2, timeout=WAIT), ing.stats()
    assert c.rejected == [] and ing.stats()["quarantined"] == 0


def test_file_cut_inside_its_meta_header_is_retried_not_excluded(make_ingest, dirs, tmp_path, caplog):
    """"DICM" and half a file meta header reads as "no SOP class": still arriving, not a non-image object."""
    watch, _ = dirs
    caplog.set_level(logging.INFO, logger="edge_agent")
    c = Collector()
    ing = make_ingest(c, retry_timeout=LONG_RETRY, stable_seconds=0.1)
    data = dicom_bytes(1, tmp=tmp_path)[0]
    target = watch / "IM1.dcm"
    with open(target, "wb") as fh:
        fh.write(data[:150])
        fh.flush()
        assert ends_in_file_meta(target)
        assert wait_for(lambda: ing.stats()["retries"] >= 2), ing.stats()
        assert ing.stats()["excluded"] == 0 and c.rejected == [] and c.files == []
        fh.write(data[150:])
    assert c.wait(files=1, timeout=WAIT), ing.stats()
    assert not ends_in_file_meta(target)
    assert ing.stats()["excluded"] == 0 and ing.stats()["quarantined"] == 0
    assert _records(caplog, logging.INFO, "excluded", "IM1.dcm") == []


def test_cannot_become_dicom_reads_only_the_marker(tmp_path):
    cases = {
        b"": False, b"x" * 100: False, b"\0" * 128 + b"DIC": False, b"\0" * 128 + b"DICM" + b"junk": False,
        b"\0" * 128 + b"DX": True, b"hello world\n" * 20: True, b"\0" * 128 + b"\0\0\0\0" + b"x" * 50: False,
    }
    for n, (data, expected) in enumerate(cases.items()):
        path = tmp_path / f"f{n}"
        path.write_bytes(data)
        assert cannot_become_dicom(path) is expected, data[:140]
    assert cannot_become_dicom(tmp_path / "gone") is False


def test_dicom_without_sop_class_is_excluded_and_logged_once_at_info(make_ingest, dirs, tmp_path, caplog):
    watch, _ = dirs
    caplog.set_level(logging.INFO, logger="edge_agent")
    c = Collector()
    ing = make_ingest(c, retry_timeout=LONG_RETRY)
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(1, tmp=tmp_path)[0]))
    del ds.SOPClassUID
    ds.file_meta.MediaStorageSOPClassUID = ""
    buf = io.BytesIO()
    ds.save_as(buf)
    (watch / "nosop.dcm").write_bytes(buf.getvalue())
    assert wait_for(lambda: ing.stats()["excluded"] == 1)
    ing.rescan_now()
    settle(ing)
    lines = _records(caplog, logging.INFO, "excluded", "nosop.dcm")
    assert len(lines) == 1 and "no SOP class" in lines[0], lines
    assert c.rejected == [] and c.files == [] and ing.stats()["quarantined"] == 0


def test_the_agent_logs_each_quarantine_once_at_default_verbosity(tmp_path):
    """`edge-agent run` (no -v): the junk file's quarantine is one log line, long before retry_timeout."""
    watch, state = tmp_path / "incoming", tmp_path / "state"
    watch.mkdir()
    log_path = tmp_path / "agent.log"
    env = dict(os.environ, EDGE_AGENT_INGEST_RETRY_TIMEOUT=str(LONG_RETRY), EDGE_AGENT_INGEST_STABLE_SECONDS="0.2",
               EDGE_AGENT_MQTT_EMBEDDED_PORT="0")
    with open(log_path, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "edge_agent", "run", "--watch", str(watch), "--state-dir",
                                 str(state), "--site", "junk", "--device", "ct1"], stdout=out, stderr=subprocess.STDOUT,
                                env=env)
    try:
        assert wait_for(lambda: "edge-agent running" in log_path.read_text() or proc.poll() is not None, 120)
        assert proc.poll() is None, log_path.read_text()
        (watch / "notes.txt").write_text("not a scan, just notes about the scanner's schedule\n" * 4)
        assert wait_for(lambda: "notes.txt" in log_path.read_text(), 60), log_path.read_text()
        assert wait_for(lambda: len(list((state / "quarantine").rglob("notes.txt" + SIDECAR_SUFFIX))) == 1, 10)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    lines = [line for line in log_path.read_text().splitlines() if "notes.txt" in line]
    assert len(lines) == 1 and "quarantined" in lines[0] and "not retried" in lines[0], lines
    assert "Traceback" not in log_path.read_text()
