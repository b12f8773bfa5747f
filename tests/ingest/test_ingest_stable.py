"""The stable-file check on its own, on real files."""

from __future__ import annotations

import time

from edge_agent.ingest import is_ignored_name
from edge_agent.ingest.stable import StableTracker
from edge_agent.ingest.watcher import PathFilter


def test_due_only_after_size_and_mtime_settle(tmp_path):
    f = tmp_path / "IM1"
    f.write_bytes(b"a" * 10)
    tracker = StableTracker(stable_seconds=0.2, retry_timeout=1.0)
    tracker.touch(f)
    assert tracker.due(10) == []
    time.sleep(0.12)
    with open(f, "ab") as fh:
        fh.write(b"b")  # still growing: the clock restarts
    assert tracker.due(10) == []
    time.sleep(0.12)
    assert tracker.due(10) == []
    time.sleep(0.12)
    ready = tracker.due(10)
    assert [c.path for c in ready] == [f] and ready[0].size == 11
    assert tracker.due(10) == []  # in flight: not handed out twice
    assert tracker.counts() == (0, 1)


def test_closed_by_writer_is_due_at_once(tmp_path):
    f = tmp_path / "IM1"
    f.write_bytes(b"x")
    tracker = StableTracker(stable_seconds=30, retry_timeout=1.0)
    tracker.touch(f, closed=True)
    assert [c.path for c in tracker.due(10)] == [f]


def test_failures_back_off_then_give_up(tmp_path):
    f = tmp_path / "IM1"
    f.write_bytes(b"x")
    tracker = StableTracker(stable_seconds=0.0, retry_timeout=0.3)
    tracker.touch(f)
    (cand,) = tracker.due(10)
    assert tracker.failed(cand, "truncated") is False
    assert tracker.due(10) == []  # backing off
    give_up = False
    deadline = time.monotonic() + 2
    while not give_up and time.monotonic() < deadline:
        for cand in tracker.due(10):
            give_up = tracker.failed(cand, "truncated")
        time.sleep(0.02)
    assert give_up and cand.failures >= 2


def test_change_resets_the_failure_clock(tmp_path):
    f = tmp_path / "IM1"
    f.write_bytes(b"x")
    tracker = StableTracker(stable_seconds=0.0, retry_timeout=0.2)
    tracker.touch(f)
    (cand,) = tracker.due(10)
    tracker.failed(cand, "truncated")
    time.sleep(0.25)
    f.write_bytes(b"xy")  # the writer came back
    tracker.touch(f)
    (cand,) = tracker.due(10)
    assert cand.failures == 0 and tracker.failed(cand, "truncated") is False


def test_vanished_files_are_forgotten(tmp_path):
    f = tmp_path / "IM1"
    f.write_bytes(b"x")
    tracker = StableTracker(stable_seconds=0.0, retry_timeout=1)
    tracker.touch(f)
    f.unlink()
    assert tracker.due(10) == [] and len(tracker) == 0


def test_ignored_names_and_filter(tmp_path):
    for name in (".x.dcm", "a.tmp", "a.PART", "a.dcm~", "~a.dcm", "a.partial"):
        assert is_ignored_name(name), name
    for name in ("IM00001", "a.dcm", "DICOMDIR", "1.2.840.113619.2.55.3"):
        assert not is_ignored_name(name), name
    state = tmp_path / "state"
    flt = PathFilter(tmp_path, [state])
    assert flt.accepts(tmp_path / "s" / "IM1")
    assert not flt.accepts(state / "quarantine" / "IM1")
    assert not flt.accepts(tmp_path / ".incoming" / "IM1")
    assert not flt.accepts(tmp_path.parent / "IM1")
