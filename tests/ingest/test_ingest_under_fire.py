"""The ingest under fire (issue 16 §1): a full state disk, and a file that keeps killing the agent.

Real parts: a real 4 MiB tmpfs as the state disk, filled with a real file until ENOSPC; real agent
processes killed by a real SIGKILL while they read a file. What cannot happen here on purpose — a
file whose decoding takes the process down — is stood in for by a decoder that SIGKILLs its own
process when it reaches that file (named a fake below); the ledger, the restart and the quarantine
are the real ones.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ingest_helpers import Collector, settle
from edge_agent.testing.volumes import dicom_bytes
from edge_agent.testing.wait import wait_until as wait_for
from edge_agent.testing.disk import fill, mount_small_disk, unmount
from edge_agent.ingest import SIDECAR_SUFFIX, Ingest, IngestSettings
from edge_agent.ingest import ledger as L

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def small_state(tmp_path):
    mount = mount_small_disk(tmp_path / "state")
    yield mount
    unmount(mount)


def _start(watch: Path, state: Path, collector: Collector, **overrides) -> Ingest:
    values = dict(watch_dir=watch, state_dir=state, stable_seconds=0.2, retry_timeout=1.0, rescan_interval=1.0,
                  poll_interval=0.1, workers=2, decode_processes=False)
    values.update(overrides)
    ingest = Ingest(IngestSettings(**values), collector.on_file, collector.on_rejected)
    ingest.start()
    return ingest


def test_a_full_state_disk_pauses_the_intake_and_it_resumes_by_itself(tmp_path, small_state, caplog):
    caplog.set_level(logging.DEBUG, logger="edge_agent")
    watch = tmp_path / "watch"
    watch.mkdir()
    c = Collector()
    ingest = _start(watch, small_state, c)
    try:
        filler = fill(small_state)
        files = dicom_bytes(6, tmp=tmp_path)
        for k, data in enumerate(files):
            (watch / f"slice{k}.dcm").write_bytes(data)
        (watch / "notes.txt").write_bytes(b"not an image, never DICOM\n" * 20)  # its quarantine needs space too
        assert wait_for(lambda: ingest.stats()["paused"] == 1), ingest.stats()
        # Full: nothing can be recorded, so nothing may be handed over or quarantined (it would be
        # handed over again, or lost, after a restart).
        assert not c.wait(files=1, timeout=2.0) and c.rejected == []
        assert all(t.is_alive() for t in ingest.threads())
        full_lines = [r for r in caplog.records if "state disk is full" in r.getMessage()]
        assert len(full_lines) == 1 and full_lines[0].levelno == logging.ERROR
        assert not [r for r in caplog.records if r.exc_info], "a full disk is a sentence, not a traceback"

        os.unlink(filler)  # space returns
        assert c.wait(files=6, rejected=1, timeout=30), ingest.stats()
        settle(ingest)
        stats = ingest.stats()
        assert stats["paused"] == 0 and stats["accepted"] == 6 and stats["quarantined"] == 1
        assert sorted(c.sop_uids) == sorted(set(c.sop_uids)) and len(c.sop_uids) == 6  # each once
        assert c.rejected[0][0] == watch / "notes.txt"
        assert any("intake resumed" in r.getMessage() for r in caplog.records)
    finally:
        ingest.stop()
    with sqlite3.connect(small_state / "ledger.sqlite3") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        states = dict(db.execute("SELECT state, COUNT(*) FROM files GROUP BY state").fetchall())
    assert states == {L.ACCEPTED: 6, L.QUARANTINED: 1}


# A fake of a file that takes the process down while it is read (an OOM kill, a decoder's abort): the
# decoder SIGKILLs its own process when it reaches a file named poison*. Everything else is real.
_CHILD = textwrap.dedent("""
    import os, signal, sys, time
    from pathlib import Path
    sys.path[:0] = [{tests!r}]
    from edge_agent.ingest import Ingest, IngestSettings
    from edge_agent.ingest import decode

    real_read = decode.Decoder.read
    def read(self, path):
        if Path(path).name.startswith("poison"):
            os.kill(os.getpid(), signal.SIGKILL)
        return real_read(self, path)
    decode.Decoder.read = read
    settings = IngestSettings(watch_dir=Path({watch!r}), state_dir=Path({state!r}), stable_seconds=0.1,
                              rescan_interval=1.0, poll_interval=0.1, workers=1, decode_processes=False)
    Ingest(settings, lambda item: None).start()
    time.sleep(30)
    sys.exit(3)  # never reached the poison file
""")


def _run_child_until_killed(watch: Path, state: Path) -> int:
    code = _CHILD.format(tests=str(ROOT / "tests"), watch=str(watch), state=str(state))
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, timeout=60)
    return proc.returncode


def test_a_file_that_stopped_the_agent_twice_is_quarantined_at_the_next_start(tmp_path):
    watch, state = tmp_path / "watch", tmp_path / "state"
    watch.mkdir()
    poison = watch / "poison.dcm"
    poison.write_bytes(dicom_bytes(1, seed=7, tmp=tmp_path)[0])
    assert _run_child_until_killed(watch, state) == -9
    assert _run_child_until_killed(watch, state) == -9  # after a restart the same file kills it again

    good = dicom_bytes(2, seed=8, tmp=tmp_path)
    for k, data in enumerate(good):
        (watch / f"good{k}.dcm").write_bytes(data)
    c = Collector()
    ingest = _start(watch, state, c)
    try:
        assert c.wait(files=2, rejected=1, timeout=20), ingest.stats()
        settle(ingest)
    finally:
        ingest.stop()
    assert [p for p, _ in c.rejected] == [poison]
    assert "stopped 2 times while reading this file" in c.rejected[0][1]
    assert {f.path.name for f in c.files} == {"good0.dcm", "good1.dcm"}  # the poison file was not read again
    sidecar = next((state / "quarantine").rglob("poison.dcm" + SIDECAR_SUFFIX))
    assert "stopped 2 times" in json.loads(sidecar.read_text())["reason"]


def test_a_file_that_stopped_the_agent_once_is_read_again(tmp_path):
    """One stop while reading is not a pattern (a power cut, an operator's kill -9): the file gets its chance."""
    watch, state = tmp_path / "watch", tmp_path / "state"
    watch.mkdir()
    poison = watch / "poison.dcm"
    poison.write_bytes(dicom_bytes(1, seed=9, tmp=tmp_path)[0])
    assert _run_child_until_killed(watch, state) == -9
    c = Collector()
    ingest = _start(watch, state, c)  # the real decoder now: the file is fine
    try:
        assert c.wait(files=1, timeout=20), ingest.stats()
        settle(ingest)
    finally:
        ingest.stop()
    assert c.rejected == [] and [f.path for f in c.files] == [poison]
    with sqlite3.connect(state / "ledger.sqlite3") as db:
        assert db.execute("SELECT COUNT(*) FROM reading").fetchone()[0] == 0  # judged: no mark left


def test_reading_marks_count_runs_not_reads(tmp_path):
    ledger = L.Ledger(tmp_path / "ledger.sqlite3")
    try:
        a, b = tmp_path / "a.dcm", tmp_path / "b.dcm"
        ledger.begin_reading([a, b], "run1")
        ledger.begin_reading([a], "run1")  # retried within one run: still one run
        assert ledger.crashed_while_reading(2) == []
        ledger.begin_reading([a], "run2")  # run1 died while reading a; run2 reads it again
        assert ledger.crashed_while_reading(2) == [(a, 2)]
        ledger.interrupted("run2")  # run2 stopped cleanly while reading a: that stop does not count
        assert sorted(ledger.crashed_while_reading(1)) == [(a, 1), (b, 1)]
        ledger.record(b, 1, 1, L.ACCEPTED)  # judged after the mark: the crash fell after its verdict
        assert ledger.crashed_while_reading(1) == [(a, 1)]
        ledger.end_reading([a])
        assert ledger.crashed_while_reading(1) == []
    finally:
        ledger.close()
