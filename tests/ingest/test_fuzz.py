"""Seeded fuzzing, the short CI part (issue 16 §2); ``scripts/fuzz_ingest.py`` runs ≥ 10,000 inputs.

Mutated real CT files (pydicom's test files and synthetic series) and hostile
file-system entries go through ``read_file``, the ingest's decode step and
``scan`` (edge_agent/ingest/fuzz.py), then through a running ``Ingest``:
every input is accounted for (slices, or a rejection with a sentence), no
exception escapes, each file takes bounded time.
"""

from __future__ import annotations

import random
import time

from ingest_helpers import Collector, settle
from edge_agent.dicom.mutate import mutate, seed_files
from edge_agent.ingest import fuzz

SEED = 20261201


def _check(report: fuzz.FuzzReport, inputs: int) -> None:
    assert report.violations == [], "\n".join(report.violations[:20])
    assert report.inputs == inputs
    assert report.accepted + sum(report.rejected.values()) == inputs
    assert report.accepted > 0 and len(report.rejected) >= 6  # the mutations reach many different checks
    assert report.max_seconds < 10, report.slowest


def test_seeded_fuzz_through_reader_decode_step_and_scan(tmp_path):
    report = fuzz.run(tmp_path / "fuzz", SEED, 600, batch=20, max_seconds=10)
    print(report.table())
    _check(report, 600)
    assert report.rejected["deep sequences"] and report.rejected["missing UID"]
    assert report.rejected["not a regular file"]


def test_seeded_fuzz_with_worker_processes(tmp_path):
    """Batches of 16+ JPEG-family files go to worker processes: a panic there loses one file, not the batch."""
    report = fuzz.run(tmp_path / "fuzz", SEED + 1, 48, batch=16, max_seconds=20, scan_executor="process")
    _check(report, 48)


def test_seeded_fuzz_through_a_running_ingest(make_ingest, dirs, tmp_path):
    """A live watch folder: every mutated file ends accepted, excluded or quarantined — none stays pending."""
    watch, state = dirs
    c = Collector()
    ing = make_ingest(c, retry_timeout=0.3, stable_seconds=0.05)
    rng = random.Random(SEED)
    seeds = [p.read_bytes() for p in seed_files(tmp_path / "seeds")]
    count = 60
    for k in range(count):
        _, data = mutate(rng.choice(seeds), rng)
        (watch / f"IM{k:04d}.dcm").write_bytes(data)
    deadline = time.monotonic() + 60
    while ing.stats()["files_seen"] < count and time.monotonic() < deadline:
        time.sleep(0.1)
    settle(ing)
    stats = ing.stats()
    assert stats["files_seen"] == count, stats
    assert all(t.is_alive() for t in ing._threads)
    for _, reason in c.rejected:
        assert fuzz.is_sentence(reason), reason


def test_bit_flips_on_a_file_cut_where_its_body_starts():
    """A truncation that leaves only preamble + DICM (or less) must still be mutable (it stopped a fuzz run)."""
    import random

    from edge_agent.dicom.mutate import bit_flips

    head = b"\0" * 128 + b"DICM"
    for seed in range(20):
        out = bit_flips(head, random.Random(seed))
        assert len(out) == len(head) and out != head
    assert bit_flips(b"", random.Random(0)) == b""
