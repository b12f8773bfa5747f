"""Restarts: nothing lost, nothing twice — including a SIGKILL in the middle of a series."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import psutil
from pydicom.uid import generate_uid

from ingest_helpers import Collector, settle
from edge_agent.testing.volumes import dicom_bytes

from edge_agent.dicom.synth import SeriesHeaders


def _write(folder: Path, files: list[bytes], prefix: str) -> None:
    for k, data in enumerate(files):
        (folder / f"{prefix}{k:03d}.dcm").write_bytes(data)


def test_restart_hands_over_nothing_twice_and_resumes_unfinished_series(make_ingest, dirs, tmp_path):
    watch, _ = dirs
    done_series = SeriesHeaders()
    open_series = SeriesHeaders()
    _write(watch, dicom_bytes(3, headers=done_series, tmp=tmp_path), "A")
    _write(watch, dicom_bytes(2, headers=open_series, tmp=tmp_path, seed=1), "B")
    first = Collector()
    ing = make_ingest(first)
    assert first.wait(files=5, timeout=5)
    settle(ing)
    ing.mark_series_done(done_series.series_instance_uid)
    ing.stop()

    # While stopped: one more slice of the open series and a new series arrive.
    new_series = SeriesHeaders()
    (watch / "B999.dcm").write_bytes(dicom_bytes(3, headers=open_series, tmp=tmp_path, seed=1)[2])
    _write(watch, dicom_bytes(2, headers=new_series, tmp=tmp_path, seed=2), "C")

    second = Collector()
    ing = make_ingest(second)
    assert second.wait(files=5, timeout=5)
    settle(ing)
    time.sleep(0.3)
    by_series = Counter((f.series_instance_uid, f.resumed) for f in second.files)
    assert by_series == {
        (open_series.series_instance_uid, True): 2,   # resumed: its series was never marked done
        (open_series.series_instance_uid, False): 1,  # arrived while stopped, found at start
        (new_series.series_instance_uid, False): 2,
    }
    assert len(set(second.sop_uids)) == len(second.sop_uids) == 5
    assert not set(second.sop_uids) & set(first.sop_uids) - {
        u for f in second.files if f.resumed for u in f.sop_instance_uids}


CHILD = textwrap.dedent("""
    import os, sys, time
    from edge_agent.ingest import Ingest, IngestSettings


    def main():
        watch, state, log_path, per_series = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
        log = open(log_path, "a")
        counts = {}

        def on_file(item):
            for uid in item.sop_instance_uids:
                log.write(f"{uid} {item.series_instance_uid} {int(item.resumed)}\\n")
            log.flush()
            os.fsync(log.fileno())
            counts[item.series_instance_uid] = counts.get(item.series_instance_uid, 0) + 1
            if counts[item.series_instance_uid] == per_series:
                ing.mark_series_done(item.series_instance_uid)
            time.sleep(0.05)  # a slow pipeline, so the kill lands mid-stream

        ing = Ingest(IngestSettings(watch, state, stable_seconds=0.1, retry_timeout=1.0, workers=2), on_file)
        ing.start()
        print("started", flush=True)
        while True:
            time.sleep(1)


    if __name__ == "__main__":  # decode workers are spawned and import this file (multiprocessing rule)
        main()
""")


def test_sigkill_mid_series_loses_nothing_and_repeats_only_resumes(dirs, tmp_path, make_ingest):
    watch, state = dirs
    series_a, series_b = SeriesHeaders(), SeriesHeaders()
    uids_a = [generate_uid() for _ in range(6)]
    files_a = dicom_bytes(6, headers=series_a, tmp=tmp_path, sop_instance_uids=uids_a)
    files_b = dicom_bytes(6, headers=series_b, tmp=tmp_path, seed=1)
    _write(watch, files_a, "A")
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    log_path = tmp_path / "child.log"
    child = subprocess.Popen([sys.executable, str(script), str(watch), str(state), str(log_path), "6"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "started"

        def logged() -> list[str]:
            return log_path.read_text().split() if log_path.exists() else []

        deadline = time.monotonic() + 15
        while not set(uids_a) <= set(logged()) and time.monotonic() < deadline:
            time.sleep(0.02)
        _write(watch, files_b, "B")
        while len(logged()) < 3 * 8 and time.monotonic() < deadline:  # A done and 2 of B
            time.sleep(0.01)
        helpers = psutil.Process(child.pid).children(recursive=True)  # decode workers
        os.kill(child.pid, signal.SIGKILL)
        _, alive = psutil.wait_procs(helpers, timeout=10)
        assert not alive, "decode worker processes outlived the killed agent"
    finally:
        child.kill()
        child.wait(timeout=10)
        child.stdout.close()
    logged = [line.split() for line in log_path.read_text().splitlines()]
    before = [uid for uid, _, _ in logged]
    assert 8 <= len(before) < 12, "the kill should land mid-series"
    assert len(set(before)) == len(before)

    after = Collector()
    ing = make_ingest(after, stable_seconds=0.1)
    assert after.wait(files=12 - len(before), timeout=10)
    settle(ing)
    time.sleep(0.3)
    settle(ing)
    all_uids = set(before) | set(after.sop_uids)
    assert len(all_uids) == 12  # nothing lost
    assert len(set(after.sop_uids)) == len(after.sop_uids)  # nothing twice after the restart
    # Series A was finished (marked done) before the kill: never handed over again.
    assert not [f for f in after.files if f.series_instance_uid == series_a.series_instance_uid]
    # What the killed process already handed over comes back only as a resume of series B.
    repeated = [f for f in after.files if set(f.sop_instance_uids) & set(before)]
    assert repeated and all(f.resumed and f.series_instance_uid == series_b.series_instance_uid
                            for f in repeated)
    assert {u for f in after.files if not f.resumed for u in f.sop_instance_uids}.isdisjoint(before)
