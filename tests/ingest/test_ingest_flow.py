"""The pipeline side of the contract: one calling thread, bounded work in flight, latency stamps."""

from __future__ import annotations

import threading
import time

from ingest_helpers import Collector, settle
from edge_agent.testing.volumes import dicom_bytes


def test_slow_pipeline_bounds_decoded_files_in_flight(make_ingest, dirs, tmp_path):
    watch, _ = dirs
    gate = threading.Event()
    threads: set[str] = set()

    class Slow(Collector):
        def on_file(self, item):
            threads.add(threading.current_thread().name)
            gate.wait(10)
            super().on_file(item)

    c = Slow()
    ing = make_ingest(c, workers=2)
    for k, data in enumerate(dicom_bytes(30, tmp=tmp_path)):
        (watch / f"IM{k:03d}").write_bytes(data)
    peak = 0
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        peak = max(peak, ing.stats()["decoding"])
        time.sleep(0.02)
    assert 0 < peak <= 2 * 4  # workers x 4, whatever the backlog
    assert ing.stats()["pending"] + ing.stats()["decoding"] >= 20  # the rest waits on disk, not in memory
    gate.set()
    assert c.wait(files=30, timeout=10)
    settle(ing)
    assert threads == {"ingest-main"}
    assert all(f.received_at <= f.complete_at for f in c.files)
